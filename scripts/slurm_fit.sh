#!/usr/bin/env bash
# Train an experiment on a SLURM cluster: one task per GPU, Lightning reads the SLURM environment.
#   sbatch --nodes 4 scripts/slurm_fit.sh configs/exp1.yaml [extra LightningCLI flags]
# Global batch = data.init_args.batch_size x GPUs per node x nodes (EDM2's img64-xs: 2048 = 8 x 256 on one
# node, or lower the per-GPU batch on more nodes). Resume: add --ckpt_path <run>/checkpoints/last.ckpt.
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
