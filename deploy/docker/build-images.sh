#!/usr/bin/env bash
# Build the ftserve-api and ftserve-worker images with BuildKit (`make images`; README "Run
# it in containers"). Run from anywhere; the build context is the repository root.
#
# Settings (environment; the Makefile passes its variables of the same names):
#   BASE              official (python:3.11-slim, tensorflow/tensorflow:2.21.0-gpu) or
#                     local: a Debian bookworm base made here with debootstrap
#                     (deploy/base-image/build.sh; root), for machines that cannot pull
#   IMAGE_TAG         the images' tag (default: the version in pyproject.toml)
#   IMAGENET_WEIGHTS  download | skip (the worker's Keras cache; see its Dockerfile)
#   CA_BUNDLE         a CA bundle for pip behind a TLS-intercepting proxy, passed as a
#                     BuildKit secret (never in a layer). Default: the bundle pip is
#                     configured with here (PIP_CERT, pip's config, REQUESTS_CA_BUNDLE,
#                     SSL_CERT_FILE); empty: none
#   BUILD_NETWORK     the network of RUN steps (default host: pip reaches the index the
#                     way this machine does, proxy and DNS included)
#   DOCKER            the docker command (default: the first on PATH that can build with
#                     BuildKit)
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE=${BASE:-official}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}
IMAGENET_WEIGHTS=${IMAGENET_WEIGHTS:-download}
BUILD_NETWORK=${BUILD_NETWORK:-host}
LOCAL_BASE=ftserve-base:bookworm

die() { echo "images: $*" >&2; exit 1; }

# A docker command that builds with BuildKit, into the local image store: the buildx
# plugin where it is installed; else a client older than 23, which runs BuildKit itself
# when DOCKER_BUILDKIT=1 (Debian bookworm's docker.io is 20.10). Newer clients without
# buildx cannot, so look further along PATH. Sets DOCKER and BUILD.
find_builder() {
    local candidate major
    for candidate in ${DOCKER:-$(which -a docker 2>/dev/null | awk '!seen[$0]++')}; do
        DOCKER=$candidate
        if $DOCKER buildx version >/dev/null 2>&1; then
            BUILD=("$DOCKER" buildx build --load)
            return
        fi
        major=$($DOCKER version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
        if [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then
            BUILD=(env DOCKER_BUILDKIT=1 "$DOCKER" build)
            return
        fi
    done
    die "no docker client on PATH builds with BuildKit: install Docker with the buildx plugin,
or Debian's docker.io (20.10)"
}

# The CA bundle pip is configured with on this machine, if any.
pip_ca_bundle() {
    local python cert=${PIP_CERT:-}
    for python in .venv/bin/python python3; do
        [ -n "$cert" ] && break
        cert=$($python -m pip config get global.cert 2>/dev/null || true)
    done
    cert=${cert:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
    if [ -n "$cert" ] && [ -r "$cert" ]; then echo "$cert"; fi
}

find_builder
CA_BUNDLE=${CA_BUNDLE-$(pip_ca_bundle)}
SECRET=()
if [ -n "$CA_BUNDLE" ]; then
    [ -r "$CA_BUNDLE" ] || die "CA_BUNDLE $CA_BUNDLE cannot be read"
    SECRET=(--secret "id=ca,src=$CA_BUNDLE")
fi

API_ARGS=() WORKER_ARGS=(--build-arg "IMAGENET_WEIGHTS=$IMAGENET_WEIGHTS")
case $IMAGENET_WEIGHTS in
    download | skip) ;;
    *) die "IMAGENET_WEIGHTS must be download or skip, not $IMAGENET_WEIGHTS" ;;
esac
case $BASE in
    official) ;;
    local)
        DOCKER=$DOCKER deploy/base-image/build.sh "$LOCAL_BASE"
        API_ARGS+=(--build-arg "PYTHON_IMAGE=$LOCAL_BASE")
        WORKER_ARGS+=(--build-arg "TENSORFLOW_IMAGE=$LOCAL_BASE")
        ;;
    *) die "BASE must be official or local, not $BASE" ;;
esac

build() {
    local image=$1
    shift
    echo "images: building ftserve-$image:$IMAGE_TAG (base: $BASE${CA_BUNDLE:+, CA bundle $CA_BUNDLE})"
    "${BUILD[@]}" --network "$BUILD_NETWORK" "${SECRET[@]}" "$@" \
        -f "deploy/docker/$image/Dockerfile" -t "ftserve-$image:$IMAGE_TAG" .
}

build api "${API_ARGS[@]}"
build worker "${WORKER_ARGS[@]}"
