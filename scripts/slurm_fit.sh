#!/usr/bin/env bash
# Train an experiment on a SLURM cluster: one task per GPU, Lightning reads the SLURM environment.
#   sbatch --nodes 4 scripts/slurm_fit.sh configs/exp1.yaml [extra LightningCLI flags]
# The global batch is the config's data.init_args.global_batch_size (EDM2: 2048 images per optimizer step) on any
# number of nodes: each GPU takes 2048 / (GPUs x rounds) images per round, at most data.init_args.batch_size, with
# the gradient-accumulation rounds derived (1 node x 8 GPUs: 256 x 1; 4 nodes: 64 x 1), so the lr decay and the EMA
# snapshots mean the same steps on any allocation. Resume: add --ckpt_path <run>/checkpoints/last.ckpt.
# In a container (pyxis/enroot: srun --container-image=...), /dev/shm is the node's; with Docker, run it with
# --ipc=host (docker/Dockerfile): DataLoader workers pass batches through shared memory.
#SBATCH --job-name=lcsbench-fit
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch [--nodes N] scripts/slurm_fit.sh configs/<experiment>.yaml [flags]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-.venv/bin/python}
GPUS=${SLURM_NTASKS_PER_NODE:-8}
NODES=${SLURM_JOB_NUM_NODES:-1}
echo "lcsbench fit: $CONFIG on $NODES node(s) x $GPUS GPU(s)"
srun "$PY" -m lcsbench fit --config "$CONFIG" \
    --trainer.num_nodes "$NODES" --trainer.devices "$GPUS" --trainer.strategy ddp "$@"
