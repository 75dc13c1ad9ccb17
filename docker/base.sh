#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, for hosts that reach a Debian mirror but no container
# registry: Debian bookworm (minbase) + its python3.11, python3-venv and python-is-python3, made with
# debootstrap and imported with `docker import`. Pass it to the builds as PYTHON_IMAGE:
#
#   sudo docker/base.sh                                   # -> deepserve-base/python:3.11-bookworm
#   docker build -f docker/Dockerfile --build-arg PYTHON_IMAGE=deepserve-base/python:3.11-bookworm -t deepserve:cpu .
#
# Differences from the official image: Python is Debian's 3.11.2 in /usr/bin (not 3.11.x in
# /usr/local), pip inside venvs is Debian's bundled 23.0; the rest of the image contract the Dockerfiles
# use (apt-get, groupadd/useradd, `python -m venv`) is the same. Needs root, debootstrap and a Debian
# mirror (DEBIAN_MIRROR, plain HTTP is enough). ROOTFS=folder reuses a debootstrap already made there.
set -euo pipefail

TAG="${1:-deepserve-base/python:3.11-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

command -v debootstrap >/dev/null || { echo "base.sh: apt-get install debootstrap" >&2; exit 1; }
[[ $EUID -eq 0 ]] || { echo "base.sh: debootstrap needs root" >&2; exit 1; }

rootfs="${ROOTFS:-}"
if [[ -z "$rootfs" ]]; then
    rootfs="$(mktemp -d /tmp/deepserve-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
fi
if [[ ! -x "$rootfs/usr/bin/python3" ]]; then
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,netbase \
        bookworm "$rootfs" "$MIRROR"
fi

# The same suites as the official image, so `apt-get install` in a build gets current packages.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
# What the official Debian images trim: package lists and caches, docs, man pages, translations.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log

tar --numeric-owner -C "$rootfs" -c . \
    | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --message "debootstrap bookworm minbase + python3.11 (docker/base.sh)" \
        - "$TAG"
docker run --rm "$TAG" python -c 'import sys, venv; print("base.sh:", sys.version.split()[0])'
echo "base.sh: built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
