# Sourced by the scripts that build the instance image (scripts/sandbox.sh, scripts/test.sh,
# hotpocket/image/build.sh, .ci/run): `ensure_busybox` installs the static busybox the image
# holds (Debian/Ubuntu package busybox-static) when it is missing, with sudo when not root.
# BUSYBOX names another static busybox to use instead.

ensure_busybox() {
    local busybox="${BUSYBOX:-/bin/busybox}"
    if [ -x "$busybox" ] && { [ -n "${BUSYBOX:-}" ] || dpkg -s busybox-static >/dev/null 2>&1 || ! command -v dpkg >/dev/null; }; then
        return 0
    fi
    if [ -n "${BUSYBOX:-}" ]; then
        echo "error: BUSYBOX=$BUSYBOX is not an executable file; unset it to install busybox-static" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: the instance image needs a static busybox at /bin/busybox and this system has no apt-get:" \
            "install your distribution's static busybox, or set BUSYBOX to one" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: installing busybox-static needs root: run \`apt-get install busybox-static\` as root" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    echo "==> installing busybox-static (the shell inside the instance image)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
}
