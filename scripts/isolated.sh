#!/usr/bin/env bash
# Run a command with DATABASE_URL / REDIS_URL unset where no server but the embedded ones can be
# reached by accident: a network namespace with loopback only and a mount namespace where an
# empty tmpfs hides the system PostgreSQL's socket directory. Needs root (unshare).
#
#     bash scripts/isolated.sh make test
#
# Everything the command needs must be installed beforehand: the namespace has no network.
# The embedded servers it starts live only as long as this namespace is of use, so they are
# stopped on the way out (`make stop`); a later run starts its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${PALAVER_ISOLATED:-}" != 1 ]; then
    exec unshare --net --mount --propagation private \
        env PALAVER_ISOLATED=1 bash "${BASH_SOURCE[0]}" "$@"
fi

ip link set lo up  # a new network namespace starts with loopback down
for dir in /var/run/postgresql /run/postgresql /tmp/.s.PGSQL.*; do
    if [ -d "$dir" ]; then
        mount -t tmpfs -o size=1m tmpfs "$dir"
    fi
done
unset DATABASE_URL REDIS_URL
trap 'make --no-print-directory stop' EXIT
"$@"
