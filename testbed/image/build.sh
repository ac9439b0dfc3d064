#!/usr/bin/env bash
# `make image`: builds the operator image from the Dockerfile with buildah (no Docker engine
# needed) into the storage of testbed/image/buildah.sh, tagged $1.
#
# The base: $FILTERRELEASE_BASE_IMAGE if set; else the Dockerfile's default (the public
# python:3.11-slim-bookworm, by digest) when it is in the storage or can be pulled; else, on a
# machine that reaches package registries but no image registry, a base made here from Debian
# packages (build-base.sh, cached). The base used is printed, and recorded in the image's
# labels (filterrelease.base-image).
set -euo pipefail

name="${1:?usage: build.sh IMAGE-NAME}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
buildah=(bash "$here/buildah.sh")
say() { echo "image: $*" >&2; }

t0=$SECONDS
base="${FILTERRELEASE_BASE_IMAGE:-}"
if [[ -z $base ]]; then
	public="$(sed -n 's/^ARG BASE_IMAGE=//p' "$repo/Dockerfile")"
	if "${buildah[@]}" inspect --type image "$public" >/dev/null 2>&1; then
		base="$public"
	elif err="$(timeout 300 "${buildah[@]}" pull --retry 0 --quiet "$public" 2>&1 >/dev/null)"; then
		base="$public"
	else
		say "cannot pull the public base $public (${err##*$'\n'}):"
		say "making a base from Debian packages instead"
		base="$(bash "$here/build-base.sh" | tail -1)"
	fi
fi
say "base $base"

# --layers: every instruction's result is cached, so a change of the operator's code alone
# rebuilds only the last layers (the dependencies' layer is keyed by pyproject.toml + uv.lock).
# --isolation chroot: RUN steps need no OCI runtime or user namespaces.
# PyPI is reached as this machine reaches it: through its own CA bundle (which may hold an egress
# proxy's CA), mounted over the base's for the RUN steps only; nothing of it is committed.
trust=()
bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
if [[ -f $bundle ]]; then
	in_build=/etc/ssl/certs/ca-certificates.crt
	trust=(--volume "$bundle:$in_build:ro" --build-arg SSL_CERT_FILE="$in_build"
		--build-arg PIP_CERT="$in_build")
fi

say "buildah bud $name (Dockerfile)"
"${buildah[@]}" bud --isolation chroot --layers "${trust[@]}" \
	--build-arg BASE_IMAGE="$base" \
	--label filterrelease.base-image="$base" \
	--tag "$name" --file "$repo/Dockerfile" "$repo" >&2
# The layer cache grows by the changed layers at every build with new code: past
# $FILTERRELEASE_IMAGE_CACHE_MB (default 4096) it is emptied, but for this image and its base
# (the next build then redoes the dependency layers once).
store_mb="$(du -sm "$("${buildah[@]}" info --format '{{.store.GraphRoot}}')" | cut -f1)"
if ((store_mb > ${FILTERRELEASE_IMAGE_CACHE_MB:-4096})); then
	say "image storage at ${store_mb} MB: dropping cached layers"
	keep="$("${buildah[@]}" images -q --no-trunc "$name"; "${buildah[@]}" images -q --no-trunc "$base")"
	for id in $("${buildah[@]}" images -a -q --no-trunc | sort -u); do
		grep -qx "$id" <<<"$keep" || "${buildah[@]}" rmi -f "$id" >/dev/null 2>&1 || true
	done
fi
say "$name built in $((SECONDS - t0))s, $("${buildah[@]}" images --format '{{.Size}}' "$name")"
