#!/usr/bin/env bash
# Train an experiment with torchrun (no SLURM): one process per GPU on each node.
#   single node:  scripts/torchrun_fit.sh configs/exp1.yaml
#   two nodes:    NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 scripts/torchrun_fit.sh configs/exp1.yaml   (on host0)
#                 NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 scripts/torchrun_fit.sh configs/exp1.yaml   (on host1)
# Extra arguments go to LightningCLI, e.g. --trainer.max_steps 1000 or --ckpt_path <run>/checkpoints/last.ckpt.
# The global batch stays the config's data.init_args.global_batch_size (EDM2: 2048) whatever NNODES x GPUS: the
# per-GPU batch and the gradient-accumulation rounds are derived from the world size (README "Running on GPUs").
# Tried as two nodes on loopback (NNODES=2, NODE_RANK 0 and 1, MASTER_ADDR 127.0.0.1) in tests/test_cluster.py.
set -euo pipefail
CONFIG=${1:?usage: scripts/torchrun_fit.sh configs/<experiment>.yaml [flags]}
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPUS=${GPUS:-$("$PY" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
getent ahosts "$MASTER_ADDR" >/dev/null || {  # torchrun would retry an unknown name for its whole join timeout
    echo "torchrun_fit.sh: MASTER_ADDR $MASTER_ADDR does not resolve: give node rank 0's IP address or a name in" \
         "DNS or /etc/hosts" >&2; exit 2; }
ACCELERATOR=$("$PY" -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")')
echo "lcsbench fit: $CONFIG on $NNODES node(s) x $GPUS process(es) ($ACCELERATOR), node rank $NODE_RANK"
exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" -m lcsbench fit --config "$CONFIG" \
    --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" --trainer.accelerator "$ACCELERATOR" \
    --trainer.strategy ddp "$@"
