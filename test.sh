#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: makes .venv, installs the pinned
# test tools, builds the zipapp, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
