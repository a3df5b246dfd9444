#!/usr/bin/env bash
# Runs every test of the workspace. Sets up what the tests need first:
#   - busybox-static (the instance image the Docker tests build), see scripts/busybox.sh
#   - a Python virtualenv in .venv with xrpl-py (the interoperability check of localnet)
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/busybox.sh
. scripts/busybox.sh
ensure_busybox

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import xrpl, cryptography' 2>/dev/null; then
    echo "==> setting up .venv with xrpl-py (interoperability tests)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'xrpl-py>=2.0,<5' 'cryptography>=41'
fi
export BERTH_PYTHON="$PWD/.venv/bin/python"

echo "==> cargo test --workspace (benchmarks are built by clippy, run with cargo bench)"
cargo test --workspace "$@"
