#!/usr/bin/env bash
# Packs one snap from its recipe and a fresh zipapp:
#
#   snap/pack.sh aar|ams [snapcraft arguments, e.g. --destructive-mode]
#
# snapcraft sees only its project directory (the whole of it is copied into a
# build container), so this assembles a scratch one: the recipe as
# snap/snapcraft.yaml plus aar.pyz, which the recipe's `zipapp` part dumps.
# The .snap lands in dist/.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
die() { echo "snap/pack.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: snap/pack.sh aar|ams [snapcraft arguments]"
NAME=$1; shift
[ -f "$HERE/$NAME/snapcraft.yaml" ] || die "no recipe snap/$NAME/snapcraft.yaml"
command -v snapcraft >/dev/null 2>&1 || die "snapcraft is not installed (snap install snapcraft --classic)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aar-snap.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/snap" "$ROOT/dist"
cp "$HERE/$NAME/snapcraft.yaml" "$WORK/snap/snapcraft.yaml"
# snapcraft takes hooks from snap/hooks/ of the project.
if [ -d "$HERE/$NAME/hooks" ]; then
    cp -R "$HERE/$NAME/hooks" "$WORK/snap/hooks"
fi
"$ROOT/build.sh" -o "$WORK/aar.pyz"
(cd "$WORK" && snapcraft "$@")
for built in "$WORK"/*.snap; do
    [ -e "$built" ] || die "snapcraft made no .snap"
    mv -f "$built" "$ROOT/dist/"
    echo "$ROOT/dist/$(basename "$built")"
done
