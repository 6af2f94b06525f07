#!/usr/bin/env bash
# Start `orbit` on NP ranks with an MPI launcher (OpenMPI's mpirun or MPICH/Intel MPI's mpiexec).
# orbit reads its rank from the launcher's variables and, through mpi4py (pip install mpi4py, built
# against this MPI), rank 0 shares its address and a free port with everyone.
#   launch/mpirun.sh 4 pretrain --config configs/pretrain/tiny.yaml parallel.tp=2 data.batch_size=4
#   HOSTFILE=hosts.txt launch/mpirun.sh 16 pretrain --config ...      # several nodes
# Environment: MPIRUN (default mpirun), PYTHON (default python), HOSTFILE (optional), MPI_ARGS
# (extra launcher arguments), OMP_NUM_THREADS (default 1 per rank).
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 NP ORBIT-COMMAND [ARGS...]   e.g. $0 4 pretrain --config configs/pretrain/tiny.yaml" >&2
    exit 2
fi
np="$1"
shift
mpirun="${MPIRUN:-mpirun}"
python="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
read -r -a extra <<< "${MPI_ARGS:-}"

if "${mpirun}" --version 2>&1 | grep -q "Open MPI"; then
    # OpenMPI forwards no environment to other nodes unless named; no core binding (torch threads).
    args=(--bind-to none --map-by slot -x OMP_NUM_THREADS -x PATH -x LD_LIBRARY_PATH)
    [[ -n "${HOSTFILE:-}" ]] && args+=(--hostfile "${HOSTFILE}")
    [[ "$(id -u)" == 0 ]] && args+=(--allow-run-as-root)
else
    # hydra (MPICH, Intel MPI) forwards the whole environment by default.
    args=()
    [[ -n "${HOSTFILE:-}" ]] && args+=(-f "${HOSTFILE}")
fi
exec "${mpirun}" -n "${np}" "${args[@]}" "${extra[@]}" "${python}" -m orbit "$@"
