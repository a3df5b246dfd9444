#!/usr/bin/env bash
# Runs every test of the workspace. Sets up what the tests need first:
#   - a Python virtualenv in .venv with xrpl-py (the interoperability check of localnet)
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import xrpl, cryptography' 2>/dev/null; then
    echo "==> setting up .venv with xrpl-py (interoperability tests)"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'xrpl-py>=2.0,<5' 'cryptography>=41'
fi
export BERTH_PYTHON="$PWD/.venv/bin/python"

echo "==> cargo test --workspace (benchmarks are built by clippy, run with cargo bench)"
cargo test --workspace "$@"
