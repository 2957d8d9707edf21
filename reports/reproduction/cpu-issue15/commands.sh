#!/usr/bin/env bash
# The commands `python -m lcsbench reproduce` ran, in order, appended by every run
# (python = the interpreter that ran reproduce).
# 2026-12-02T07:35:28 export exp3: EMA weights of runs/reproduction/cpu/exp3/lightning_logs/run/checkpoints/last.ckpt -> reports/reproduction/cpu/weights/exp3.pt
python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --runs runs/reproduction/cpu --data data/reproduce32 --stage export --experiments exp3
# 2026-12-02T07:46:56 lengthgen exp3
python -m lcsbench lengthgen --ckpt reports/reproduction/cpu/weights/exp3.pt --out reports/reproduction/cpu/exp3/lengthgen --name exp3 --ks 1-10 --samples-per-k 8 --steps 16 --oracle-samples 16
# 2026-12-02T08:09:01 locality exp3
python -m lcsbench locality --ckpt reports/reproduction/cpu/weights/exp3.pt --out reports/reproduction/cpu/exp3/locality --sigmas 0.05,0.2,0.5,1,2,5,10,40 --samples 2 --sample-steps 32 --locations 3
# 2026-12-02T08:28:51 export exp2: EMA weights of runs/reproduction/cpu/exp2/lightning_logs/run/checkpoints/last.ckpt -> reports/reproduction/cpu/weights/exp2.pt
python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --runs runs/reproduction/cpu --data data/reproduce32 --stage export --experiments exp2
# 2026-12-02T08:29:07 lengthgen exp2
python -m lcsbench lengthgen --ckpt reports/reproduction/cpu/weights/exp2.pt --out reports/reproduction/cpu/exp2/lengthgen --name exp2 --ks 1-10 --samples-per-k 32 --steps 32 --oracle-samples 16
# 2026-12-02T08:29:52 export exp1: EMA weights of runs/reproduction/cpu/exp1/lightning_logs/run/checkpoints/last.ckpt -> reports/reproduction/cpu/weights/exp1.pt
python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --runs runs/reproduction/cpu --data data/reproduce32 --stage export --experiments exp1
# 2026-12-02T08:30:06 lengthgen exp1
python -m lcsbench lengthgen --ckpt reports/reproduction/cpu/weights/exp1.pt --out reports/reproduction/cpu/exp1/lengthgen --name exp1 --ks 1-10 --samples-per-k 32 --steps 32 --oracle-samples 16
# 2026-12-02T08:33:30 locality exp2
python -m lcsbench locality --ckpt reports/reproduction/cpu/weights/exp2.pt --out reports/reproduction/cpu/exp2/locality --sigmas 0.05,0.2,0.5,1,2,5,10,40 --samples 2 --sample-steps 32 --locations 3
# 2026-12-02T08:34:10 locality exp1
python -m lcsbench locality --ckpt reports/reproduction/cpu/weights/exp1.pt --out reports/reproduction/cpu/exp1/locality --sigmas 0.05,0.2,0.5,1,2,5,10,40 --samples 2 --sample-steps 32 --locations 3
# 2026-12-02T08:36:23 report: reports/reproduction/cpu/table.md, report.json and figures
python -m lcsbench reproduce --scale cpu --out reports/reproduction/cpu --runs runs/reproduction/cpu --data data/reproduce32 --stage report
