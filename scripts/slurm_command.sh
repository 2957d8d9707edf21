#!/usr/bin/env bash
# One command of the study as a SLURM job: `python -m lcsbench reproduce --slurm` submits one job per part of the
# study (the render, each fit with its export, each closed form's spec, each model's evaluations, the report), each
# running `python -m lcsbench reproduce ... --stage <its stages> --experiments <its experiment>` through this script,
# with --dependency=afterok on the parts it needs. You do not submit it by hand:
#   python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --slurm --partition cpu --time 12:00:00
# The job runs in the folder reproduce was started from (its SLURM_SUBMIT_DIR) with the interpreter that started it
# (PYTHON, passed on by sbatch; default .venv/bin/python). A job that SLURM requeues reruns its part, which resumes
# where it stopped (a fit from its run's last.ckpt) as the local runner does.
#SBATCH --job-name=lcsbench-study
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-.venv/bin/python}
# threads = the job's cores (a cluster without CPU binding, e.g. TaskPlugin=task/none, shows every core of the node)
[[ -n ${SLURM_CPUS_PER_TASK:-} ]] && export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
echo "lcsbench study job ${SLURM_JOB_ID:-?} on ${SLURMD_NODENAME:-$(hostname)} (restart ${SLURM_RESTART_COUNT:-0})," \
     "$(date -u +%FT%TZ): $PY -m lcsbench $*"
exec "$PY" -m lcsbench "$@"
