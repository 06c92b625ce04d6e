#!/usr/bin/env bash
# Quick start 2: set up, then run the whole test suite (unit tests and the end-to-end pipeline test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 TF_CPP_MIN_LOG_LEVEL=2
exec python -m pytest "$@"
