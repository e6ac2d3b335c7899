#!/usr/bin/env bash
# Make sure Debian's Python 3.11 documentation (HTML) is installed: benchmarks/knowledge_bases.py
# ingests it as its corpus (a real documentation set no one here wrote). Like
# ensure_chromium.sh, it comes from Debian's packages; the corpus is never committed.
set -euo pipefail

PYDOC_ROOT="${PYDOC_ROOT:-/usr/share/doc/python3.11/html}"

if [ -f "$PYDOC_ROOT/library/os.html" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_pydoc: $PYDOC_ROOT is missing and installing it needs root:" \
        "run 'sudo apt-get install --no-install-recommends python3.11-doc', then try again" >&2
    exit 1
fi

echo "ensure_pydoc: installing Debian's python3.11-doc (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends python3.11-doc

if [ ! -f "$PYDOC_ROOT/library/os.html" ]; then
    echo "ensure_pydoc: apt-get finished but $PYDOC_ROOT/library/os.html is still missing" >&2
    exit 1
fi
