#!/usr/bin/env bash
# Make sure Debian's inspircd and ngircd are installed: the tests start them on loopback
# (tests/ircd.py) as real IRC servers. Only the binaries are wanted, so their system services
# must not start: a policy-rc.d that answers 101 ("action forbidden") stops invoke-rc.d during
# the install (and is removed afterwards), and the services are disabled for later boots.
# Fast and silent when both are already there.
set -euo pipefail

declare -A BINARIES=([inspircd]=/usr/sbin/inspircd [ngircd]=/usr/sbin/ngircd)

missing=()
for package in "${!BINARIES[@]}"; do
    [ -x "${BINARIES[$package]}" ] || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_ircd: Debian's ${missing[*]} missing (the tests start IRC servers) and" \
        "installing needs root: run 'sudo bash scripts/ensure_ircd.sh', then try again" >&2
    exit 1
fi

POLICY=/usr/sbin/policy-rc.d
if [ -e "$POLICY" ]; then
    # Someone else's policy: keep it, and put it back afterwards.
    saved_policy=$(mktemp)
    cp -p "$POLICY" "$saved_policy"
fi
restore_policy() {
    if [ -n "${saved_policy:-}" ]; then
        mv -f "$saved_policy" "$POLICY"
    else
        rm -f "$POLICY"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"

echo "ensure_ircd: installing Debian's ${missing[*]} (apt-get, system services not started)"
export DEBIAN_FRONTEND=noninteractive
apt_install() {
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
}
# Refresh the package lists only when the install cannot go ahead with the current ones: no
# candidate for a package (lists never fetched), or a failed download (lists out of date).
needs_update=no
for package in "${missing[@]}"; do
    candidate=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
        needs_update=yes
    fi
done
if [ "$needs_update" = yes ]; then
    apt-get update -q
    apt_install
elif ! apt_install; then
    echo "ensure_ircd: install failed, refreshing the package lists and retrying" >&2
    apt-get update -q
    apt_install
fi

for package in "${missing[@]}"; do
    if [ ! -x "${BINARIES[$package]}" ]; then
        echo "ensure_ircd: apt-get finished but ${BINARIES[$package]} is still missing" >&2
        exit 1
    fi
    # The packages enable their services for the next boot: an IRC server listening on every
    # interface is not what a test dependency should leave behind.
    if command -v systemctl >/dev/null; then
        systemctl disable --quiet "$package.service" >/dev/null 2>&1 || true
    fi
    if [ -e "/etc/init.d/$package" ] && command -v update-rc.d >/dev/null; then
        update-rc.d "$package" disable >/dev/null 2>&1 || true
    fi
done
