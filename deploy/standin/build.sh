#!/usr/bin/env bash
# Stand-in base images for machines that reach Debian's package mirror but no container
# registry: a Python base for the Dockerfile and a Redis image for the compose file, both
# built from Debian packages with mmdebstrap and imported into podman (or docker).
#
#   deploy/standin/build.sh                 # builds what is missing, prints the settings
#   PYTHON_IMAGE=casefetch-base/python:bookworm docker compose build
#   REDIS_IMAGE=casefetch-base/redis:bookworm docker compose up -d
#
# An image that already exists is kept (delete it to rebuild). The host's CA bundle goes
# into both images and pip is pointed at it, so a registry proxy with its own CA works.
set -euo pipefail

ENGINE=${ENGINE:-podman}
PYTHON_IMAGE=${PYTHON_IMAGE:-casefetch-base/python:bookworm}
REDIS_IMAGE=${REDIS_IMAGE:-casefetch-base/redis:bookworm}
SUITE=${SUITE:-bookworm}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

exists() { "$ENGINE" image exists "$1" 2>/dev/null || "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# mmdebstrap copies the host's apt sources; the hook puts the host's CA bundle in the tree.
rootfs() {  # rootfs OUTPUT PACKAGES [EXTRA CUSTOMIZE COMMAND]
    local out=$1 packages=$2 extra=${3:-true}
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --customize-hook="mkdir -p \"\$1/etc/ssl/certs\" && cp $CA_BUNDLE \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
        --customize-hook="rm -rf \"\$1/var/lib/apt/lists\"/* \"\$1/var/cache/apt\"/*.bin" \
        --customize-hook="$extra" \
        "$SUITE" "$out"
}

if exists "$PYTHON_IMAGE"; then
    echo "kept $PYTHON_IMAGE"
else
    # `python3 -m venv /usr/local` gives the python and pip commands of the official image.
    rootfs "$work/python.tar" python3,python3-venv,python3-pip,ca-certificates,passwd \
        'chroot "$1" python3 -m venv /usr/local'
    "$ENGINE" import \
        --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
        --change "ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$work/python.tar" "$PYTHON_IMAGE" >/dev/null
    echo "built $PYTHON_IMAGE"
fi

if exists "$REDIS_IMAGE"; then
    echo "kept $REDIS_IMAGE"
else
    rootfs "$work/redis.tar" redis-server,ca-certificates 'mkdir -p "$1/data"'
    "$ENGINE" import \
        --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'WORKDIR /data' \
        --change 'CMD ["redis-server", "--protected-mode", "no"]' \
        "$work/redis.tar" "$REDIS_IMAGE" >/dev/null
    echo "built $REDIS_IMAGE"
fi

echo "PYTHON_IMAGE=$PYTHON_IMAGE REDIS_IMAGE=$REDIS_IMAGE"
