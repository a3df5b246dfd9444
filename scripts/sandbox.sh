#!/usr/bin/env bash
# The whole Berth marketplace on this machine, in one command: checks Docker, installs
# busybox-static when missing (scripts/busybox.sh), builds the instance image and the example
# bundles when missing (hotpocket/image/build.sh), and runs `berth sandbox` until Ctrl-C.
# One cargo invocation builds everything it runs, in the `sandbox` profile (Cargo.toml: light
# optimisation, no debug info), statically like the image's runtime so that the dependencies
# common to the runtime and `berth-sandbox` compile once: `hotpocket` and the example
# contracts for the image, `berth` and `berth-sandbox`.
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

TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR="${CARGO_TARGET_DIR:-target}/hotpocket-static"
OUT="$TARGET_DIR/$TRIPLE/sandbox"
echo "==> cargo build --profile sandbox: hotpocket, the example contracts, berth, berth-sandbox ($OUT)"
# The flags of hotpocket/image/build.sh's static build (its STATIC_RUSTFLAGS).
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" cargo build --profile sandbox \
    --target "$TRIPLE" --target-dir "$TARGET_DIR" \
    -p berth-hotpocket --bin hotpocket --example echo-contract --example counter-contract \
    -p berth-tenant --bin berth -p berth-sandbox --bin berth-sandbox
BERTH="$OUT/berth"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1 || [ ! -f "$BUNDLE" ]; then
    # shellcheck source=scripts/busybox.sh
    . scripts/busybox.sh
    ensure_busybox
    echo "==> building the instance image $IMAGE and the example bundles"
    hotpocket/image/build.sh --prebuilt "$OUT"
fi

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
