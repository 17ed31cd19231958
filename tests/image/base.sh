#!/usr/bin/env bash
# The test base: what debian:bookworm-slim holds, made here from Debian's packages with
# mmdebstrap (no container registry is needed), plus the host's CA store. Writes the base as a
# tarball for `podman import` to OUT (the first argument).
#
# It is debootstrap's minbase with merged /usr, without manual pages, documentation (copyright
# files kept), info pages and translations, as the registry's slim image is made. The host's CA
# store goes in as a local certificate authority: the Dockerfile's install of ca-certificates
# adds it to the image's store, so apt and pip inside the build trust what the host trusts (a
# proxy that inspects TLS, say). Such a base, and every image built on it, is for this machine's
# tests only: never tag it for a registry, never push it.
#
# check.sh caches the tarball under a name made from this file and the host's CA store, so a
# change to either makes a new base.
set -euo pipefail
out=$1
mirror=http://deb.debian.org/debian
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The merged-usr hook says more than --quiet lets through: the output shows only on a failure.
# shellcheck disable=SC2016 # the hooks' $1 is the new root, expanded by mmdebstrap
mmdebstrap --variant=minbase --format=tar --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
    --customize-hook='upload /etc/ssl/certs/ca-certificates.crt /usr/local/share/ca-certificates/host-ca-store.crt' \
    bookworm "$out" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $mirror-security bookworm-security main" \
    > "$log" 2>&1 || {
    cat "$log" >&2
    exit 1
}
