#!/usr/bin/env bash
# Builds dist/aar.pyz: one zipapp that runs the registry (aar) and, through a
# link named ams-sync or with `ams-sync` as its first argument, the agent.
#
#   ./build.sh [-o|--output PATH]        PYTHON=python3.12 ./build.sh
#
# Only the program code goes in (no tests, no bench, no caches). The program is
# standard library only, so shiv packs a directory and never runs pip for it;
# pip is used at most once, to install the pinned shiv when it is missing.
#
# At run time shiv extracts the packed code to $SHIV_ROOT, default ~/.shiv,
# in a directory named after the content hash (so builds never mix and the
# zipapp itself holds no state). We keep that default rather than baking in
# --root: it is the place shiv users expect, every user can write it, and
# SHIV_ROOT overrides it. The snaps set SHIV_ROOT=$SNAP_USER_DATA/shiv, which
# strict confinement lets the program write and snapd removes with the
# revision. --no-modify makes a tampered extraction fail loudly.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
OUTPUT=$ROOT/dist/aar.pyz
SHEBANG='/usr/bin/env python3'
# The program: these modules and packages, plus any other top-level package
# (a directory with __init__.py) but the ones that never ship.
PROGRAM=(aar.py ams_sync.py launcher.py names.py version.py cas.py cli trust registry agent)
NOT_SHIPPED=" tests bench dist snap docs "

die() { echo "build.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        -o|--output) [ $# -ge 2 ] || die "$1 needs a path"; OUTPUT=$2; shift 2 ;;
        --output=*) OUTPUT=${1#--output=}; shift ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON)"
for item in "${PROGRAM[@]}"; do
    [ -e "$ROOT/$item" ] || die "missing $item: the zipapp needs all of: ${PROGRAM[*]}"
done
for init in "$ROOT"/*/__init__.py; do
    [ -e "$init" ] || continue
    package=$(basename "$(dirname "$init")")
    case " ${PROGRAM[*]} $NOT_SHIPPED" in
        *" $package "*) ;;
        *) PROGRAM+=("$package") ;;
    esac
done

# shiv: the interpreter's own, else the repository's .venv (the one test.sh
# makes), created here if need be, with the version requirements-dev.txt pins.
SHIV_PY=$PY
if ! "$SHIV_PY" -c 'import shiv' >/dev/null 2>&1; then
    SHIV_PY=$ROOT/.venv/bin/python
    if ! { [ -x "$SHIV_PY" ] && "$SHIV_PY" -c 'import shiv' >/dev/null 2>&1; }; then
        pin=$(grep -E '^shiv[=<>~ ]' "$ROOT/requirements-dev.txt" | head -n1) ||
            die "requirements-dev.txt pins no shiv"
        if [ ! -x "$SHIV_PY" ]; then
            echo "build.sh: creating $ROOT/.venv for shiv" >&2
            "$PY" -m venv "$ROOT/.venv" ||
                die "cannot create $ROOT/.venv (on Debian/Ubuntu: apt-get install python3-venv)"
        fi
        echo "build.sh: installing $pin into $ROOT/.venv" >&2
        "$SHIV_PY" -m pip install -q --disable-pip-version-check "$pin" ||
            die "cannot install $pin"
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aar-build.XXXXXX")
TMP_OUT=$OUTPUT.tmp.$$
trap 'rm -rf "$WORK" "$TMP_OUT" "$TMP_OUT.main"' EXIT
SITE=$WORK/site-packages
mkdir -p "$SITE"
for item in "${PROGRAM[@]}"; do
    cp -R "$ROOT/$item" "$SITE/"
done
# No caches, no hidden files; fixed modes, so the same sources give the same bytes.
find "$SITE" \( -name __pycache__ -o -name '.*' \) -prune -exec rm -rf {} +
find "$SITE" -type f \( -name '*.pyc' -o -name '*.pyo' \) -delete
find "$SITE" -type d -exec chmod 755 {} +
find "$SITE" -type f -exec chmod 644 {} +

# Written beside the output, then renamed: a failed build leaves the old file.
mkdir -p "$(dirname "$OUTPUT")"
"$SHIV_PY" -m shiv --site-packages "$SITE" -e launcher:main -o "$TMP_OUT" \
    -p "$SHEBANG" --reproducible --no-modify >"$WORK/shiv.log" 2>&1 || {
    cat "$WORK/shiv.log" >&2
    die "shiv failed"
}
# shiv's __main__.py unpacks under ~/.shiv; ours first picks a private
# directory under $TMPDIR when the home directory cannot be written (a service
# account, HOME=/nonexistent), then hands over to shiv's bootstrap unchanged.
"$PY" - "$TMP_OUT" <<'PYTHON' || die "cannot write the zipapp's __main__.py"
import os, sys, zipfile
MAIN = b"""# -*- coding: utf-8 -*-
# Written by aar's build.sh: where ~/.shiv cannot be written and SHIV_ROOT is
# unset, unpack into a private directory of this user under $TMPDIR instead.
import os, stat, sys, tempfile


def _shiv_root():
    home = os.path.expanduser("~/.shiv")
    try:
        os.makedirs(home, exist_ok=True)
        if os.access(home, os.W_OK):
            return None
    except OSError:
        pass
    root = os.path.join(tempfile.gettempdir(), "aar-shiv-%d" % os.getuid())
    try:
        os.mkdir(root, 0o700)
    except OSError:
        pass
    try:
        st = os.lstat(root)
        private = (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
                   and not st.st_mode & 0o077)
    except OSError:
        private = False
    if not private:
        sys.exit("aar: cannot unpack the program: %s cannot be written and %s is not "
                 "a private directory of this user; set SHIV_ROOT to a writable "
                 "directory" % (home, root))
    return root


if not os.environ.get("SHIV_ROOT"):
    _root = _shiv_root()
    if _root:
        os.environ["SHIV_ROOT"] = _root
import _bootstrap  # noqa: E402
_bootstrap.bootstrap()
"""
path = sys.argv[1]
with open(path, "rb") as f:
    data = f.read()
shebang = data[:data.index(b"\n") + 1] if data.startswith(b"#!") else b""
with zipfile.ZipFile(path) as old:
    entries = [(info, old.read(info)) for info in old.infolist()]
mode = os.stat(path).st_mode
with open(path + ".main", "wb") as f:
    f.write(shebang)
    with zipfile.ZipFile(f, "w") as new:
        for info, body in entries:
            new.writestr(info, MAIN if info.filename == "__main__.py" else body)
os.chmod(path + ".main", mode)
os.replace(path + ".main", path)
PYTHON
mv -f "$TMP_OUT" "$OUTPUT"
SIZE=$(wc -c <"$OUTPUT" | tr -d ' ')
echo "$OUTPUT ($SIZE bytes)"
