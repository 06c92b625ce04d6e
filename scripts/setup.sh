#!/usr/bin/env bash
# Create .venv (Python 3.11) in the repository and install the pinned dependencies; idempotent and quick when
# nothing changed.  Needs only the package registry (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "error: Python 3.11 is required (found: $(python3 --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
# The test suite also drives the MLflow UI in headless Chromium and runs an MLflow tracking server on a real
# PostgreSQL server (Debian's packages; initdb/pg_ctl live in /usr/lib/postgresql/<version>/bin, not on PATH).
if [ "${1:-}" = "--test" ]; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || command -v pg_ctl >/dev/null || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Debian's ${missing[*]} for the tests (apt-get)..."
      { apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        echo "warning: apt-get install ${missing[*]} failed; the tests that need them will say so" >&2
    else
      echo "warning: ${missing[*]} missing; install (Debian: sudo apt-get install ${missing[*]}) or" \
           "tests/test_mlflow_ui.py / tests/test_tracking_server.py fail" >&2
    fi
  fi
fi
# DVC must not phone home (the project runs offline); the repo's .dvc/config already says so.
export DVC_NO_ANALYTICS=1
