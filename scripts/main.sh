#!/usr/bin/env bash
# The main job: set up .venv, make the default synthetic data set if it is missing, train the default classifier
# (Inception v3 from scratch) with the MONAI bundle, evaluate it on the held-out test patients.
# Extra arguments go to both `coronary-calcium train` and `evaluate` (e.g. --epochs 2, --network vgg16_scratch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_venv.sh
cc=.venv/bin/coronary-calcium
$cc synth --manifest data_manifest.json
$cc validate --quick data_manifest.json
$cc train "$@"
$cc evaluate "$@"
