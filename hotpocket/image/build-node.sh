#!/usr/bin/env bash
# Builds the Node.js instance image `berth-hotpocket-node:latest` locally, without a registry
# and without a base image from one:
#   1. the minimal instance image `berth-hotpocket:latest` (hotpocket/image/build.sh) when the
#      engine does not have it: the new image is that one plus one layer;
#   2. with a private apt state (its own sources, lists and an empty dpkg status, so nothing
#      installed on this machine counts), `apt-get install --download-only nodejs` downloads
#      nodejs and its whole dependency closure from Debian's mirrors (libc6, libstdc++6,
#      libnode, libuv1, libssl3, libicu, zlib1g, libbrotli1, libc-ares2, libnghttp2, ...);
#   3. `dpkg -x` of every package into rootfs/ (docs and manuals dropped), /etc/passwd and
#      /etc/group naming uid 10001, the package list in /usr/share/berth/packages.txt;
#   4. `docker build` of hotpocket/image/Dockerfile.node (FROM the local minimal image, COPY
#      rootfs/ /): the same entrypoint, user (10001), /state and ports.
# Cached: nothing is done when the tag exists, was built on the current minimal image and
# from the same package request, unless --force.
# Needs: docker, apt-get and dpkg (a Debian or Ubuntu machine; Debian's archive keyring for
# the default sources), network to the Debian mirror; cargo and busybox-static for step 1.
# Usage: hotpocket/image/build-node.sh [--force] [--prebuilt DIR]
#   --prebuilt DIR: passed to build.sh for step 1.
#   env NODE_IMAGE_TAG (berth-hotpocket-node:latest), IMAGE_TAG (the base,
#   berth-hotpocket:latest), NODE_IMAGE_PACKAGES (nodejs), DEBIAN_MIRROR
#   (http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR, DEBIAN_SUITE (this machine's
#   VERSION_CODENAME), CARGO_TARGET_DIR (the work directory is $CARGO_TARGET_DIR/node-image).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
TAG="${NODE_IMAGE_TAG:-berth-hotpocket-node:latest}"
BASE="${IMAGE_TAG:-berth-hotpocket:latest}"
PACKAGES="${NODE_IMAGE_PACKAGES:-nodejs}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
WORK="${CARGO_TARGET_DIR:-$ROOT/target}/node-image"

force=false
prebuilt=()
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=true ;;
        --prebuilt) prebuilt=(--prebuilt "${2:?--prebuilt needs a directory}"); shift ;;
        *) echo "usage: hotpocket/image/build-node.sh [--force] [--prebuilt DIR]" >&2; exit 2 ;;
    esac
    shift
done

size() {
    docker image inspect "$TAG" --format 'image {{.RepoTags}} size {{.Size}} bytes'
}

label() {
    docker image inspect "$TAG" --format "{{index .Config.Labels \"$1\"}}" 2>/dev/null || true
}

start=$(date +%s)
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "==> base image $BASE (hotpocket/image/build.sh)"
    IMAGE_TAG="$BASE" "$ROOT/hotpocket/image/build.sh" "${prebuilt[@]}"
fi
base_id="$(docker image inspect "$BASE" --format '{{.Id}}')"

if ! $force && [ "$(label berth.base-image)" = "$base_id" ] \
    && [ "$(label berth.packages-requested)" = "$PACKAGES" ]; then
    echo "==> $TAG is up to date (base $base_id; --force rebuilds it)"
    size
    exit 0
fi

for tool in apt-get dpkg docker; do
    command -v "$tool" >/dev/null || { echo "error: build-node.sh needs $tool (a Debian or Ubuntu machine)" >&2; exit 1; }
done
if [ -z "${DEBIAN_SUITE:-}" ]; then
    # shellcheck source=/dev/null
    DEBIAN_SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi
[ -n "$DEBIAN_SUITE" ] || { echo "error: no VERSION_CODENAME in /etc/os-release; set DEBIAN_SUITE" >&2; exit 1; }
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || { echo "error: no $KEYRING (Debian package debian-archive-keyring)" >&2; exit 1; }

echo "==> Debian packages: $PACKAGES and their dependencies ($DEBIAN_SUITE, $MIRROR)"
APT="$WORK/apt"
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/etc/apt.conf.d" "$APT/etc/preferences.d"
: > "$APT/status"
cat > "$APT/sources.list" <<SOURCES
deb [signed-by=$KEYRING] $MIRROR $DEBIAN_SUITE main
deb [signed-by=$KEYRING] $MIRROR $DEBIAN_SUITE-updates main
deb [signed-by=$KEYRING] $SECURITY_MIRROR $DEBIAN_SUITE-security main
SOURCES
apt_opts=(
    -o "Dir::Etc::SourceList=$APT/sources.list"
    -o "Dir::Etc::SourceParts=-"
    -o "Dir::Etc::Parts=$APT/etc/apt.conf.d"
    -o "Dir::Etc::PreferencesParts=$APT/etc/preferences.d"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::State::status=$APT/status"
    -o "Dir::Cache=$APT/cache"
    -o "Dir::Cache::archives=$APT/archives"
    -o "Debug::NoLocking=1"
    -o "APT::Architecture=amd64"
    -o "APT::Install-Recommends=false"
    -o "APT::Install-Suggests=false"
)
if [ "$(id -u)" -eq 0 ]; then
    # The _apt sandbox user could not write into the work directory.
    apt_opts+=(-o "APT::Sandbox::User=root")
fi
mkdir -p "$APT/cache"
apt-get "${apt_opts[@]}" -qq update
read -r -a packages <<< "$PACKAGES"
apt-get "${apt_opts[@]}" -qq -y --download-only install "${packages[@]}" >/dev/null
# The closure as apt resolved it ("Inst <package> (<version> <release> [<arch>])"), as the
# names of the archives it downloaded (an epoch's ':' is '%3a' there).
mapfile -t debs < <(apt-get "${apt_opts[@]}" -qq -s install "${packages[@]}" \
    | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*\[\([a-z0-9]*\)\]).*/\1_\2_\3.deb/p' | sed 's/:/%3a/g' \
    | sort)
[ "${#debs[@]}" -gt 0 ] || { echo "error: apt resolved no packages for: $PACKAGES" >&2; exit 1; }

echo "==> rootfs from ${#debs[@]} packages"
CONTEXT="$WORK/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/rootfs"
ROOTFS="$CONTEXT/rootfs"
manifest=()
for deb in "${debs[@]}"; do
    path="$APT/archives/$deb"
    [ -f "$path" ] || { echo "error: $path was not downloaded" >&2; exit 1; }
    dpkg -x "$path" "$ROOTFS"
    manifest+=("$(dpkg-deb -f "$path" Package) $(dpkg-deb -f "$path" Version)")
done
# Documentation, manuals and lintian overrides are of no use to a contract.
rm -rf "$ROOTFS/usr/share/doc" "$ROOTFS/usr/share/man" "$ROOTFS/usr/share/lintian" \
    "$ROOTFS/usr/share/info" "$ROOTFS/usr/share/bug"
mkdir -p "$ROOTFS/etc" "$ROOTFS/usr/share/berth"
printf 'root:x:0:0:root:/root:/bin/sh\nhotpocket:x:10001:10001:instance:/state:/bin/sh\n' > "$ROOTFS/etc/passwd"
printf 'root:x:0:\nhotpocket:x:10001:\n' > "$ROOTFS/etc/group"
printf '%s\n' "${manifest[@]}" > "$ROOTFS/usr/share/berth/packages.txt"
cp "$ROOT/hotpocket/image/Dockerfile.node" "$CONTEXT/Dockerfile"

echo "==> image $TAG (FROM $BASE)"
docker build -q -t "$TAG" --build-arg "BASE=$BASE" \
    --label "berth.base-image=$base_id" \
    --label "berth.packages-requested=$PACKAGES" \
    --label "berth.debian-suite=$DEBIAN_SUITE" \
    "$CONTEXT" >/dev/null
echo "packages: $(tr '\n' ' ' < "$ROOTFS/usr/share/berth/packages.txt")"
echo "built in $(( $(date +%s) - start )) s"
size
