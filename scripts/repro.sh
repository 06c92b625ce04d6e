#!/usr/bin/env bash
# Quick start 1: set up, then regenerate the results table with the default params.yaml (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the stages run `python`: the venv's, whether or not the caller activated it
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 TF_CPP_MIN_LOG_LEVEL=2
dvc repro "$@"
echo
cat metrics/results.md
