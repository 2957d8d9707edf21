#!/usr/bin/env bash
# Render one CLEVR dataset over a SLURM array: every array task renders every N-th shard of the
# same dataset into the same shared directory (shards are written atomically, so tasks never
# collide; a rerun of a failed task resumes it). Example, the paper's 1-3 object data at 64x64:
#
#   mkdir -p logs && sbatch --array=0-31 scripts/render_cluster.sh /shared/clevr64 1-3 500000 64
#
# manifest.json lists every shard from the start; each task adds its shards' sha256 under a file lock.
# A task's log is logs/render-<job>_<task>.out (SLURM opens nothing where logs/ is missing: create it first, or pass
# --output). PYTHON names the interpreter (default: python).
# Tried as a two-task array on the local two-node cluster of scripts/local_slurm.sh (tests/test_cluster.py).
# Arguments: OUT COUNTS PER_COUNT RESOLUTION [extra `lcsbench render` flags...]
#SBATCH --job-name=lcsbench-render
#SBATCH --cpus-per-task=32
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --output=logs/render-%A_%a.out
set -euo pipefail
OUT=${1:?output directory}; COUNTS=${2:-1-3}; PER_COUNT=${3:-500000}; RESOLUTION=${4:-64}
shift $(( $# < 4 ? $# : 4 ))
# SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT become --node-rank / --num-nodes by default.
exec "${PYTHON:-python}" -m lcsbench render --out "$OUT" --counts "$COUNTS" --per-count "$PER_COUNT" \
    --resolution "$RESOLUTION" --samples-per-pixel 64 --shard-size 1000 \
    --workers "${SLURM_CPUS_PER_TASK:-$(nproc)}" --no-progress "$@"
