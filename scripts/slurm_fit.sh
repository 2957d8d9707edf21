#!/usr/bin/env bash
# Train an experiment on a SLURM cluster: one task per GPU (or per node on CPU), Lightning reads the SLURM environment.
#   sbatch --nodes 4 scripts/slurm_fit.sh configs/exp1.yaml [extra LightningCLI flags]
#   sbatch --nodes 2 --ntasks-per-node 1 --gpus-per-node 0 --cpus-per-task 2 scripts/slurm_fit.sh <config>   (CPU)
# Set on your cluster (sbatch options override the #SBATCH lines): --partition, --gpus-per-node (= tasks per node;
# 0 trains on CPU with gloo), --time, and --signal (when SLURM warns before the time limit or a preemption). Run it
# from the repository (the job's folder is the one it was submitted from; PYTHON names the interpreter).
# The global batch is the config's data.init_args.global_batch_size (EDM2: 2048 images per optimizer step) on any
# number of nodes: each GPU takes 2048 / (GPUs x rounds) images per round, at most data.init_args.batch_size, with
# the gradient-accumulation rounds derived (1 node x 8 GPUs: 256 x 1; 4 nodes: 64 x 1), so the lr decay and the EMA
# snapshots mean the same steps on any allocation.
# Preemption and time limits: on the --signal (USR1, 5 min before the end) Lightning saves the run's
# <run>/slurm-job-<id>/hpc_ckpt_N.ckpt and requeues the job; the requeued job (same id) resumes from it in the same
# run folder. A new job never restores another job's checkpoint. To resume by hand, add
# --ckpt_path <run>/checkpoints/last.ckpt.
# Rank 0's address is the first node's NodeAddr (`scontrol show node`), not its name, which need not resolve; a rank
# that cannot reach it stops after LCSBENCH_RENDEZVOUS_TIMEOUT_S (300 s) with a line naming the address.
# In a container (pyxis/enroot: srun --container-image=...), /dev/shm is the node's; with Docker, run it with
# --ipc=host (docker/Dockerfile): DataLoader workers pass batches through shared memory.
#SBATCH --job-name=lcsbench-fit
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch [--nodes N] scripts/slurm_fit.sh configs/<experiment>.yaml [flags]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-.venv/bin/python}
TASKS=${SLURM_NTASKS_PER_NODE:-1}
NODES=${SLURM_JOB_NUM_NODES:-1}
GPUS=${SLURM_GPUS_ON_NODE:-0}
if [[ $GPUS == 0 ]]; then ACCELERATOR=cpu; else ACCELERATOR=gpu; fi
if [[ -z ${MASTER_ADDR:-} ]]; then  # the first node's address; its name may not resolve on the other nodes
    FIRST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    ADDR=$(scontrol show node "$FIRST" -o | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
    export MASTER_ADDR=${ADDR:-$FIRST}
fi
[[ -n ${SLURM_CPUS_PER_TASK:-} ]] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK  # srun >= 22.05 needs it
echo "lcsbench fit: $CONFIG on $NODES node(s) x $TASKS task(s) ($ACCELERATOR), rank 0 at $MASTER_ADDR," \
     "job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}"
srun --kill-on-bad-exit=1 "$PY" -m lcsbench fit --config "$CONFIG" \
    --trainer.num_nodes "$NODES" --trainer.devices "$TASKS" --trainer.accelerator "$ACCELERATOR" \
    --trainer.strategy ddp "$@"
