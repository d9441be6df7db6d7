#!/usr/bin/env bash
# Screenshots of TensorBoard's scalars and images pages over a run's logs, with headless Chromium
# (Debian's `chromium` package). Usage: bash scripts/tensorboard_screenshot.sh LOGDIR OUTDIR [PORT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
logdir=${1:?LOGDIR}; out=${2:?OUTDIR}; port=${3:-6123}
command -v chromium >/dev/null || { echo "error: chromium not found (apt-get install chromium)" >&2; exit 2; }
mkdir -p "$out"
.venv/bin/tensorboard --logdir "$logdir" --host 127.0.0.1 --port "$port" >/dev/null 2>&1 &
tb=$!
trap 'kill $tb 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/data/runs" >/dev/null && break; sleep 1; done
profile=$(mktemp -d)
shoot() {  # page, url fragment
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$profile/$1" --window-size=1400,1000 \
        --virtual-time-budget=15000 --hide-scrollbars --screenshot="$out/tensorboard_$1.png" \
        "http://127.0.0.1:$port/?darkMode=false#$2" 2>/dev/null
}
shoot scalars "scalars&tagFilter=val_%7Ctrain_%7Clearning"
shoot images "images"
echo "wrote $out/tensorboard_scalars.png $out/tensorboard_images.png"
