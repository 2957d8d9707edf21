#!/usr/bin/env bash
# Quickstart on a fresh machine (CPU is enough): installs everything (scripts/setup.sh), renders a
# small CLEVR dataset with Blender (32x32, 1-3 objects), trains the tiny EDM2 model of
# configs/quickstart.yaml for a few minutes with the three analyses logged to TensorBoard twice (locality heat
# maps and radii, the length-generalization curve, the feature cosine matrix), draws samples and the locality
# figures (Figure 2 style) from its EMA weights, and prints where the TensorBoard logs and figures are.
# Rerunning resumes the render and starts a new training version.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PY=.venv/bin/python
$PY -m lcsbench render --out data/quickstart --counts 1-3 --per-count 400 --val-per-count 32 \
    --resolution 32 --samples-per-pixel 16 --shard-size 100
$PY -m lcsbench fit --config configs/quickstart.yaml "$@"
LOGDIR=runs/quickstart
VERSION=$(ls -d "$LOGDIR"/lightning_logs/version_* | sort -V | tail -n 1)
CKPT="$VERSION/checkpoints/last.ckpt"
REPORTS=reports/quickstart
# sample and locality on the threads `fit` would choose (usable cores less busy ones; OMP_NUM_THREADS wins)
THREADS=${OMP_NUM_THREADS:-$($PY -c 'from lcsbench.commands._common import thread_count; print(thread_count()[0])')}
OMP_NUM_THREADS=$THREADS $PY -m lcsbench sample --ckpt "$CKPT" --locations paper:3 --n 16 \
    --out "$REPORTS/samples_paper3.png" --device cpu
OMP_NUM_THREADS=$THREADS $PY -m lcsbench locality --ckpt "$CKPT" --out "$REPORTS" --device cpu
echo
echo "quickstart done."
echo "  dataset:      data/quickstart (manifest.json, n1..n3/*.tar)"
echo "  TensorBoard:  .venv/bin/tensorboard --logdir $LOGDIR   (this run: $VERSION)"
echo "                losses and sample grids; locality/, lengthgen/, features/ (IMAGES, SCALARS; TEXT: what each is)"
echo "                a picture of it: scripts/tensorboard_screenshot.sh $VERSION tensorboard.png"
echo "  checkpoint:   $CKPT"
echo "  figures:      $REPORTS/ (samples_paper3.png, locality_grid_t*.png, locality_radius.png, locality.json)"
