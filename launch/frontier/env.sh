# Frontier (OLCF) environment for ORBIT: source it from a job script or an salloc shell.
#   source launch/frontier/env.sh
# Edit the three PLACEHOLDER values once for your project (or export them before sourcing).
# Settings follow the OLCF "PyTorch on Frontier" guide and the aws-ofi-rccl plugin's notes; the ones
# marked "tune" change speed, never results: remove them first if RCCL hangs.

# --- PLACEHOLDERS -----------------------------------------------------------------------------
# ROCm release that matches your torch wheel (pip index .../whl/rocm<version>).
ORBIT_ROCM_VERSION="${ORBIT_ROCM_VERSION:-6.2.4}"
# Python environment holding torch (ROCm wheel) and `pip install -e .[mpi]` of this repository:
# a venv (ORBIT_VENV) or a conda prefix (ORBIT_CONDA_ENV). Keep it on Lustre or sbcast it to the
# node NVMe: environments on NFS (/ccs/home, /ccs/proj) make Python start-up very slow at scale.
ORBIT_VENV="${ORBIT_VENV:-}"
ORBIT_CONDA_ENV="${ORBIT_CONDA_ENV:-}"
# Install prefix of the aws-ofi-rccl plugin (holds lib/librccl-net.so), built as in the OLCF guide.
AWS_OFI_RCCL_DIR="${AWS_OFI_RCCL_DIR:-}"

# --- modules ----------------------------------------------------------------------------------
module load PrgEnv-gnu                       # GNU toolchain: what ROCm torch wheels and the plugin are built with
module load "rocm/${ORBIT_ROCM_VERSION}"     # HIP runtime + RCCL matching the torch wheel
module load craype-accel-amd-gfx90a          # MI250X target (gfx90a) for anything compiled on the fly
if [[ -n "${ORBIT_CONDA_ENV}" ]]; then
    module load miniforge3                   # conda for the environment below
    source activate "${ORBIT_CONDA_ENV}"
elif [[ -n "${ORBIT_VENV}" ]]; then
    module load cray-python                  # the Python the venv was created with
    source "${ORBIT_VENV}/bin/activate"
else
    echo "env.sh: set ORBIT_VENV or ORBIT_CONDA_ENV to the Python environment with torch and orbit" >&2
    return 1 2>/dev/null || exit 1
fi

# --- RCCL over Slingshot (libfabric / CXI) ------------------------------------------------------
if [[ -n "${AWS_OFI_RCCL_DIR}" ]]; then
    # The plugin lets RCCL use libfabric's CXI provider; without it RCCL falls back to TCP sockets,
    # an order of magnitude slower between nodes.
    export LD_LIBRARY_PATH="${AWS_OFI_RCCL_DIR}/lib:${LD_LIBRARY_PATH:-}"
else
    echo "env.sh: AWS_OFI_RCCL_DIR is not set: RCCL will use TCP sockets between nodes (slow)" >&2
fi
export NCCL_SOCKET_IFNAME=hsn0               # bootstrap and socket traffic on the Slingshot NIC, not the management net
export NCCL_NET_GDR_LEVEL=3                  # tune: GPU-direct RDMA GCD<->NIC (OLCF: drop it if a hang appears)
export NCCL_CROSS_NIC=1                      # tune: rings/trees may span NICs; OLCF found it faster on large jobs
export FI_CXI_ATS=0                          # CXI address translation off: RCCL over CXI hangs or errs with it on
export FI_CXI_DEFAULT_CQ_SIZE=131072         # bigger completion queues: avoids CQ overflow with thousands of peers
export FI_MR_CACHE_MONITOR=userfaultfd       # memory-registration cache monitor that copes with ROCm allocations
export HSA_FORCE_FINE_GRAIN_PCIE=1           # lets the NIC read/write GPU memory directly (needed for GDR above)
# For jobs of several hundred nodes, large-scale recipes also add (with `#SBATCH --network=disable_rdzv_get`):
# export FI_CXI_RDZV_PROTO=alt_read

# --- per-node caches and threads -------------------------------------------------------------------
# MIOpen keeps its kernel database under $HOME (NFS) by default: concurrent ranks corrupt it
# ("disk I/O error"). Node-local /tmp, one directory per job; the job script creates it on each node.
export MIOPEN_USER_DB_PATH="/tmp/miopen-${USER}-${SLURM_JOB_ID:-interactive}"
export MIOPEN_CUSTOM_CACHE_DIR="${MIOPEN_USER_DB_PATH}"
export OMP_NUM_THREADS=7                     # the 7 cores of each task (--cpus-per-task=7): 56 usable cores / 8 GCDs
