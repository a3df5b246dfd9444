#!/usr/bin/env bash
# The whole Berth marketplace on this machine, in one command: checks Docker, installs
# busybox-static when missing (scripts/busybox.sh), builds the instance image and the example
# bundles when missing (hotpocket/image/build.sh), builds `berth` and `berth-sandbox` (dev
# profile with optimised dependencies, shared with scripts/test.sh's build) and runs
# `berth sandbox` until Ctrl-C.
# Usage: scripts/sandbox.sh [berth sandbox flags]   e.g. scripts/sandbox.sh --keep --slots 2
#        scripts/sandbox.sh --demo                    (the guided tenant flow)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=berth-hotpocket:latest
BUNDLE=examples/bundles/counter.zip

if ! docker info >/dev/null 2>&1; then
    cat >&2 <<'EOF'
error: no Docker engine answers (`docker info` failed). The sandbox runs its instances in Docker:
  - install Docker Engine (Debian/Ubuntu: `sudo apt-get install docker.io`, or Docker's own packages),
  - start it: `sudo systemctl start docker`,
  - let your user use it: `sudo usermod -aG docker "$USER"`, then log in again
    (or set DOCKER_HOST to an engine you can reach).
EOF
    exit 1
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1 || [ ! -f "$BUNDLE" ]; then
    # shellcheck source=scripts/busybox.sh
    . scripts/busybox.sh
    ensure_busybox
    echo "==> building the instance image $IMAGE and the example bundles (the first build takes minutes)"
    hotpocket/image/build.sh
fi

echo "==> cargo build -p berth-tenant --bin berth -p berth-sandbox --bin berth-sandbox"
cargo build -p berth-tenant --bin berth -p berth-sandbox --bin berth-sandbox
BERTH="${CARGO_TARGET_DIR:-target}/debug/berth"

# `--demo` (the guided tenant flow: acquire, deploy, input, extend, terminate) deploys a bundle
# given with `--bundle`; both are flags of `berth sandbox`. With --demo and no --bundle, the
# counter example is deployed.
args=("$@")
demo=false
bundle=false
for arg in "$@"; do
    case "$arg" in
        --demo) demo=true ;;
        --bundle | --bundle=*) bundle=true ;;
    esac
done
if $demo && ! $bundle; then
    args+=(--bundle "$BUNDLE")
fi
exec "$BERTH" sandbox "${args[@]}"
