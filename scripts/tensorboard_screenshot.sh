#!/usr/bin/env bash
# A picture of what TensorBoard shows for a run: starts the installed TensorBoard on a free loopback port on RUN
# (a run folder such as runs/quickstart/lightning_logs/version_0, or a log folder holding several), waits until it
# serves the run's images, takes a headless Chromium screenshot of its IMAGES tab, stops TensorBoard, and saves
# OUT.png as a palette PNG (small enough to commit). Installs Debian's `chromium` package if missing, as
# scripts/setup.sh does for Blender.
#   scripts/tensorboard_screenshot.sh runs/quickstart/lightning_logs/version_0 docs/monitoring.png
# Settings (environment): PYTHON (default .venv/bin/python), WIDTH x HEIGHT of the window (default 1400 x 1800),
# FILTER: the tag regex typed into the tab's filter box (default: the three analyses and the sample grids).
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 RUN OUT.png   (RUN: a TensorBoard run or log folder, e.g. runs/quickstart/lightning_logs/version_0)"
    exit 2
fi
RUN=$1
OUT=$2
if ! ls "$RUN" >/dev/null 2>&1 || [ -z "$(find "$RUN" -name 'events.out.tfevents.*' -print -quit)" ]; then
    echo "$0: $RUN holds no TensorBoard event files (events.out.tfevents.*): pass a run folder of a fit"
    exit 2
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WIDTH=${WIDTH:-1400}
HEIGHT=${HEIGHT:-1800}
FILTER=${FILTER:-locality|lengthgen|features|samples/ema}

if ! command -v chromium >/dev/null 2>&1; then
    echo "[tensorboard_screenshot] installing Chromium (Debian package 'chromium')"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PROFILE=$(mktemp -d)
TBLOG=$(mktemp)
$PY -m tensorboard.main --logdir "$RUN" --host 127.0.0.1 --port "$PORT" --load_fast false --reload_interval 0 \
    >"$TBLOG" 2>&1 &
TB=$!
trap 'kill $TB 2>/dev/null; wait $TB 2>/dev/null; rm -rf "$PROFILE" "$TBLOG"' EXIT

# up, and done with its one load of the run: the images plugin lists tags
$PY - "$PORT" <<'EOF'
import json, sys, time, urllib.request
port, deadline = sys.argv[1], time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/images/tags", timeout=10) as response:
            if any(json.load(response).values()):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"TensorBoard on port {port} served no images of the run within 120 s")
EOF

# the IMAGES tab with its filter box filled in: the matching tags, all in one open group
URL="http://127.0.0.1:$PORT/#images&tagFilter=$($PY -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' \
    "$FILTER")"
SHOT="$PROFILE/shot.png"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$PROFILE/user-data" --hide-scrollbars \
    --window-size="$WIDTH,$HEIGHT" --virtual-time-budget=20000 --screenshot="$SHOT" "$URL" >/dev/null 2>&1
mkdir -p "$(dirname "$OUT")"
$PY - "$SHOT" "$OUT" <<'EOF'
import sys
from PIL import Image
image = Image.open(sys.argv[1]).convert("RGB")
image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
print(f"{sys.argv[2]}: {image.width}x{image.height}")
EOF
