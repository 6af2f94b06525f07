#!/usr/bin/env bash
# Start `orbit` with torchrun: NPROC ranks on this node, or the same command on each of NNODES nodes
# meeting at a c10d rendezvous.
#   launch/torchrun.sh 4 pretrain --config configs/pretrain/tiny.yaml parallel.tp=2 data.batch_size=4
#   # two nodes: run on both (RDZV_ENDPOINT = host:port of one of them, reachable from the other)
#   NNODES=2 RDZV_ENDPOINT=node01:29400 RDZV_ID=myrun launch/torchrun.sh 8 pretrain --config ...
# Environment: PYTHON (default python), NNODES (default 1), RDZV_ENDPOINT and RDZV_ID (several nodes),
# OMP_NUM_THREADS (torchrun sets 1 per rank unless given).
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 NPROC ORBIT-COMMAND [ARGS...]   e.g. $0 4 pretrain --config configs/pretrain/tiny.yaml" >&2
    exit 2
fi
nproc="$1"
shift
python="${PYTHON:-python}"
nnodes="${NNODES:-1}"

if [[ "${nnodes}" == 1 ]]; then
    # --standalone: a private rendezvous on a free localhost port (runs side by side never clash).
    rdzv=(--standalone)
else
    rdzv=(--nnodes "${nnodes}" --rdzv-backend c10d
          --rdzv-endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of one node for a multi-node run}"
          --rdzv-id "${RDZV_ID:?set RDZV_ID to the same job name on every node}")
fi
exec "${python}" -m torch.distributed.run "${rdzv[@]}" --nproc-per-node "${nproc}" -m orbit "$@"
