#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs the openssl command
# if it is missing (the tests make real certificates with it), makes .venv,
# installs the pinned test tools, then runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq openssl
    else
        echo "test.sh: the tests need the openssl command: install it (apt-get install openssl)" >&2
        exit 1
    fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
