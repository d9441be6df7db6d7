#!/usr/bin/env bash
# The main job: set up .venv, make the default synthetic data set if it is missing, train the default classifier
# (Inception v3 from scratch) with the MONAI bundle, evaluate it on the held-out test patients (slice metrics,
# CAM localization, thresholds chosen on validation), then score every test scan (Agatston, agreement).
# NETWORK=<id> picks another network; extra arguments go to `coronary-calcium train` and `evaluate`
# (e.g. --epochs 2, --set batch_size=32).
# On a machine without network access whose Python already holds the packages (a GPU box), skip the venv with
# CORONARY_CALCIUM_CLI="python3 -m coronary_calcium.cli" (and PYTHONPATH=src); SYNTH_WORKERS=N sets the processes
# that generate the data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${CORONARY_CALCIUM_CLI:-}" ]]; then
    cc=$CORONARY_CALCIUM_CLI
else
    bash scripts/setup_venv.sh
    cc=.venv/bin/coronary-calcium
fi
network=${NETWORK:-inception_v3_scratch}
$cc synth --manifest data_manifest.json ${SYNTH_WORKERS:+--workers "$SYNTH_WORKERS"}
$cc validate --quick data_manifest.json
$cc train --network "$network" "$@"
$cc evaluate --network "$network" "$@"
$cc infer data_manifest.json --split test --network "$network" --out "bundle/runs/$network/inference" --overwrite
