#!/usr/bin/env bash
# Build a Debian bookworm base image with debootstrap and import it into Docker, for
# machines that cannot pull python:3.11-slim or tensorflow/tensorflow (`make images
# BASE=local`). Both ftserve images are built on it: Debian's Python 3.11 with pip, and
# nothing else; the worker adds TensorFlow from PyPI.
#
#   deploy/base-image/build.sh [TAG]        (default ftserve-base:bookworm; needs root)
#
# MIRROR: the Debian mirror (default: the one this machine's apt sources use for
# bookworm, else deb.debian.org). DOCKER: the docker command. FORCE=1 rebuilds an image
# that is already there; without it an image built from this same script is kept.
set -euo pipefail

TAG=${1:-ftserve-base:bookworm}
SUITE=bookworm
DOCKER=${DOCKER:-docker}
# python-is-python3: `python` on PATH, as in python:3.11-slim. ca-certificates: the public
# roots only; a proxy's CA comes in as a build secret, never into the image.
PACKAGES=python3,python3-pip,python-is-python3,ca-certificates
RECIPE_LABEL=org.ftserve.base-recipe

die() { echo "base-image: $*" >&2; exit 1; }

# The mirror this machine's apt already reaches for $SUITE: deb822 sources first, then
# one-line sources.
apt_mirror() {
    local files=(/etc/apt/sources.list.d/*.sources)
    if [ -e "${files[0]}" ]; then
        awk -v suite="$SUITE" 'BEGIN { RS = "" }
            $0 ~ "Suites:[^\n]*[ \t]" suite "([ \t\n]|$)" {
                if (match($0, /URIs:[ \t]*[^ \t\n]+/)) {
                    split(substr($0, RSTART, RLENGTH), f, /[ \t]+/); print f[2]; exit
                }
            }' "${files[@]}" 2>/dev/null
    fi
    [ -r /etc/apt/sources.list ] && awk -v suite="$SUITE" '
        $1 == "deb" { sub(/\[[^]]*\][ \t]*/, ""); if ($3 == suite) { print $2; exit } }' \
        /etc/apt/sources.list
    return 0
}

MIRROR=${MIRROR:-$(apt_mirror | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# The recipe: this script plus the mirror. An image carrying the same label is current.
RECIPE=$( { cat "$0"; echo "$MIRROR"; } | sha256sum | cut -c1-16)

if [ "${FORCE:-0}" != 1 ] \
    && [ "$($DOCKER image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}" "$TAG" 2>/dev/null)" = "$RECIPE" ]; then
    echo "base-image: $TAG is current (recipe $RECIPE)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

# Under /var/tmp, not /tmp: the tree is a few hundred MB and /tmp may be a small tmpfs.
ROOTFS=$(mktemp -d /var/tmp/ftserve-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

echo "base-image: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; die "debootstrap failed (log: $ROOTFS.log)"; }
rm -f "$ROOTFS.log"

# What only the build needed: downloaded packages, package lists, logs. Docker supplies
# hostname and resolv.conf at run time.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/usr/share/man/* \
    "$ROOTFS"/etc/hostname "$ROOTFS"/etc/resolv.conf
: >"$ROOTFS/etc/machine-id"

tar --numeric-owner --xattrs -C "$ROOTFS" -c . | $DOCKER import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL $RECIPE_LABEL=$RECIPE" \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE ($MIRROR) + $PACKAGES" \
    - "$TAG" >/dev/null
echo "base-image: imported $TAG (recipe $RECIPE)"
