#!/usr/bin/env bash
# Builds the instance image `berth-hotpocket:latest` locally (no registry):
#   1. the static `hotpocket` binary and the static example contracts (crt-static, gnu target),
#   2. the example bundles examples/bundles/{echo,counter}.zip,
#   3. a build context (Dockerfile FROM scratch + hotpocket + busybox) and `docker build`.
# Needs: cargo, docker, and a static busybox at $BUSYBOX (default /bin/busybox, Debian
# package busybox-static).
# Usage: hotpocket/image/build.sh [--no-docker] [--prebuilt DIR]
#   --prebuilt DIR: skip step 1 and take `hotpocket` and `examples/{echo,counter}-contract` from
#   DIR, built with the same flags (scripts/sandbox.sh does, in its `sandbox` profile).
#   env IMAGE_TAG, BUSYBOX, CARGO_TARGET_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/hotpocket-static"
TRIPLE=x86_64-unknown-linux-gnu
TAG="${IMAGE_TAG:-berth-hotpocket:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
# The flags of a static build; scripts/sandbox.sh builds with the same ones.
STATIC_RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols"

docker=true
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-docker) docker=false ;;
        --prebuilt) OUT="${2:?--prebuilt needs a directory}"; shift ;;
        *) echo "usage: hotpocket/image/build.sh [--no-docker] [--prebuilt DIR]" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$OUT" ]; then
    echo "==> static hotpocket and example contracts ($TARGET_DIR)"
    RUSTFLAGS="$STATIC_RUSTFLAGS" cargo build --release -p berth-hotpocket \
        --bin hotpocket --example echo-contract --example counter-contract \
        --target "$TRIPLE" --target-dir "$TARGET_DIR"
    OUT="$TARGET_DIR/$TRIPLE/release"
fi
test -x "$OUT/hotpocket" || { echo "static build failed: no $OUT/hotpocket" >&2; exit 1; }

echo "==> example bundles"
"$OUT/hotpocket" bundle --bin "$OUT/examples/echo-contract" --out "$ROOT/examples/bundles/echo.zip"
"$OUT/hotpocket" bundle --bin "$OUT/examples/counter-contract" --out "$ROOT/examples/bundles/counter.zip"

if ! $docker; then exit 0; fi
# shellcheck source=scripts/busybox.sh
. "$ROOT/scripts/busybox.sh"
ensure_busybox
echo "==> build context and image $TAG"
CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
"$OUT/hotpocket" image-context --dir "$CONTEXT" --hotpocket "$OUT/hotpocket" --busybox "$BUSYBOX"
docker build -q -t "$TAG" "$CONTEXT"
docker image inspect "$TAG" --format 'image {{.RepoTags}} size {{.Size}} bytes'
