#!/usr/bin/env bash
# Create (or reuse) the repository's .venv and install the project into it, with its test extras.
# Reinstalls only when setup.cfg or pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
stamp=".venv/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run: about 2 minutes)"
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
