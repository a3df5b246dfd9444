#!/usr/bin/env bash
# Builds the instance image `berth-hotpocket:latest` locally (no registry):
#   1. the static `hotpocket` binary and the static example contracts (crt-static, gnu target),
#   2. the example bundles examples/bundles/{echo,counter}.zip,
#   3. a build context (Dockerfile FROM scratch + hotpocket + busybox) and `docker build`.
# Needs: cargo, docker, and a static busybox at $BUSYBOX (default /bin/busybox, Debian
# package busybox-static).
# Usage: hotpocket/image/build.sh [--no-docker]   (env IMAGE_TAG, BUSYBOX, CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/hotpocket-static"
TRIPLE=x86_64-unknown-linux-gnu
TAG="${IMAGE_TAG:-berth-hotpocket:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

echo "==> static hotpocket and example contracts ($TARGET_DIR)"
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" cargo build --release -p berth-hotpocket \
    --bin hotpocket --example echo-contract --example counter-contract \
    --target "$TRIPLE" --target-dir "$TARGET_DIR"
OUT="$TARGET_DIR/$TRIPLE/release"
test -x "$OUT/hotpocket" || { echo "static build failed" >&2; exit 1; }

echo "==> example bundles"
"$OUT/hotpocket" bundle --bin "$OUT/examples/echo-contract" --out "$ROOT/examples/bundles/echo.zip"
"$OUT/hotpocket" bundle --bin "$OUT/examples/counter-contract" --out "$ROOT/examples/bundles/counter.zip"

if [ "${1:-}" = "--no-docker" ]; then exit 0; fi
# shellcheck source=scripts/busybox.sh
. "$ROOT/scripts/busybox.sh"
ensure_busybox
echo "==> build context and image $TAG"
CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
"$OUT/hotpocket" image-context --dir "$CONTEXT" --hotpocket "$OUT/hotpocket" --busybox "$BUSYBOX"
docker build -q -t "$TAG" "$CONTEXT"
docker image inspect "$TAG" --format 'image {{.RepoTags}} size {{.Size}} bytes'
