#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs the openssl and
# memcached commands if they are missing (the tests make real certificates with
# openssl; the S3 tests run OpenStack Swift, whose auth caches in memcached),
# makes .venv with the pinned test tools and .venv-swift with Swift (apart, so
# Swift's dependencies never move the test tools' pins), then runs pytest.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}"
    else
        echo "test.sh: the tests need ${missing[*]}: install it (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
if [ ! -x .venv-swift/bin/python ]; then
    "$PY" -m venv .venv-swift
fi
.venv-swift/bin/python -m pip install -q --disable-pip-version-check -r requirements-swift.txt
exec .venv/bin/python -m pytest "$@"
