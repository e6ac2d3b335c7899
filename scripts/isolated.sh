#!/usr/bin/env bash
# Run a command with DATABASE_URL / REDIS_URL empty (so the embedded servers are used, whatever
# .env says) where no other server can be reached by accident: a network namespace with loopback
# only, and a mount namespace where an empty tmpfs hides the system PostgreSQL's socket
# directory. Needs root (unshare; the embedded PostgreSQL also wants root or its own user).
#
#     bash scripts/isolated.sh make test
#
# Everything the command needs must be installed beforehand: the namespace has no network.
# The embedded servers (this checkout's, under var/) are stopped on the way out (`make stop`):
# a Redis left listening inside a namespace nobody can enter again would only be in the way
# (config.embedded replaces one that does not answer, but it need not come to that).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${PALAVER_ISOLATED:-}" != 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "isolated.sh: needs root (unshare --net --mount)" >&2
        exit 1
    fi
    exec unshare --net --mount --propagation private \
        env PALAVER_ISOLATED=1 bash "${BASH_SOURCE[0]}" "$@"
fi

ip link set lo up  # a new network namespace starts with loopback down
# libpq's default socket directory on Debian (where a bare `psql` or a HOST-less helper goes).
if [ -d /var/run/postgresql ]; then
    mount -t tmpfs -o size=1m tmpfs /var/run/postgresql
fi
# Empty, not unset: the environment wins over .env, and empty means embedded.
export DATABASE_URL= REDIS_URL=
trap 'make --no-print-directory stop' EXIT
"$@"
