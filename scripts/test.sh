#!/usr/bin/env bash
# The test suite: set up .venv, then run pytest (slow end-to-end cases excluded; add `-m slow` to run them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_venv.sh
exec .venv/bin/python -m pytest -m "not slow" -p no:cacheprovider "$@"
