#!/usr/bin/env bash
# Idempotent install of the benchmark references: nginx (light flavour),
# docker-registry (distribution v2) and curl. Needs root (or sudo) and apt.
# A reference that cannot be installed is reported, not fatal: bench/run.py
# prints "n/a" in its column.
set -u
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

want_pkg() {   # first installable candidate among the arguments, or nothing
    for p in "$@"; do
        c=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -n "$c" ] && [ "$c" != "(none)" ]; then echo "$p"; return 0; fi
    done
    return 1
}

have() { command -v "$1" >/dev/null 2>&1; }

missing=()
have nginx || missing+=(nginx)
have docker-registry || missing+=(docker-registry)
have curl || missing+=(curl)
have openssl || missing+=(openssl)

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: nginx, docker-registry, curl and openssl already installed"
    exit 0
fi

# apt-cache knows nothing before the first `apt-get update`
if ! ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages'; then
    $SUDO apt-get update -q
fi

pkgs=()
for m in "${missing[@]}"; do
    case "$m" in
        nginx) p=$(want_pkg nginx-light nginx-core nginx) ;;
        docker-registry) p=$(want_pkg docker-registry) ;;
        *) p=$(want_pkg "$m") ;;
    esac
    if [ -n "${p:-}" ]; then pkgs+=("$p"); else echo "setup: WARNING: no apt package for $m; its benchmark columns will read n/a"; fi
done

status=0
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "setup: apt-get install -y ${pkgs[*]}"
    # The Debian packages start system services; the benchmark runs its own
    # instances on private ports, so keep the system ones from starting.
    printf '#!/bin/sh\nexit 101\n' > /tmp/aar-bench-policy-rc.d
    chmod +x /tmp/aar-bench-policy-rc.d
    restore=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        $SUDO cp /tmp/aar-bench-policy-rc.d /usr/sbin/policy-rc.d; restore=1
    fi
    install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"; }
    # a stale package list makes the download fail: refresh once and retry
    install || { $SUDO apt-get update -q && install; } || status=$?
    [ -n "$restore" ] && $SUDO rm -f /usr/sbin/policy-rc.d
    rm -f /tmp/aar-bench-policy-rc.d
fi

for b in nginx docker-registry curl openssl; do
    if have "$b"; then echo "setup: $b: $(command -v $b)"; else echo "setup: $b: NOT INSTALLED (skipped by bench/run.py)"; fi
done
exit $status
