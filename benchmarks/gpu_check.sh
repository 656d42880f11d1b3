#!/usr/bin/env bash
# The GPU path in one table (benchmarks/gpu_check.py says what it measures):
#   bash benchmarks/gpu_check.sh [--cpu] [--model smollm2|tiny|FOLDER] [--steps N]
# Runs with $PYTHON, else the repository's .venv (python3 dev.py test makes it), else python3.
set -euo pipefail
# --model and --output-dir are read from where the script was called (gpu_check.py resolves them
# against CAT_CALLER_DIR), then it runs from the repository root
export CAT_CALLER_DIR="$PWD"
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "${PYTHON:-$PY}" benchmarks/gpu_check.py "$@"
