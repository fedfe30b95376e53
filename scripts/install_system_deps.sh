#!/usr/bin/env bash
# Install the Debian packages distillguard's integration tests and services need, if missing.
# Idempotent: does nothing when every package is already installed. Needs root (or sudo
# without a password); otherwise it explains what to install and exits 0 so `make` goes on.
set -euo pipefail

PACKAGES=(redis-server chromium wrk openjdk-17-jre-headless)  # wrk: bench_service load generator; JRE: --engine spark

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "system deps: all present (${PACKAGES[*]})"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "system deps: missing ${missing[*]} and not root; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "system deps: skipping (tests that need them will be skipped with a reason)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system deps: apt-get not found; install ${missing[*]} with your package manager" >&2
    exit 0
fi

echo "system deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
# The package's init script may start a daemon on :6379; tests start their own servers
# on random ports, so a system instance is neither needed nor harmful.
echo "system deps: done"
