#!/usr/bin/env bash
# Quick start 1: set up, then regenerate the results table with the default params.yaml (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/dvc repro "$@"
echo
cat metrics/results.md
