#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the browser tests (Playwright drives it headless).
# Playwright's own browser download cannot work here: the only reachable hosts are package
# registries, so the browser comes from Debian's packages instead.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: $CHROMIUM is missing and installing it needs root:" \
        "run 'sudo apt-get install --no-install-recommends chromium', then try again" >&2
    exit 1
fi

echo "ensure_chromium: installing Debian's chromium (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "ensure_chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
