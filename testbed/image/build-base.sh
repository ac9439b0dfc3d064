#!/usr/bin/env bash
# The operator image's base, made here out of Debian packages, for machines that cannot pull the
# public base the Dockerfile names (python:3.11-slim-bookworm): Debian bookworm (minbase) with
# its own python3.11, which is what python:3.11-slim-bookworm is built on too.
#
# The Dockerfile needs from a base: `python3.11` on the PATH (the venv's python links to it) and
# its `venv` module (the build stage installs uv from PyPI into a throwaway venv); the image
# needs CA certificates (registries over https) and tzdata, as the public base has.
#
# Cached: the image is named by a hash of this script, so a run finds it in the buildah storage
# (testbed/image/buildah.sh) and does nothing; editing the script makes a new one. Prints the
# image name on its last line; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$PATH:/usr/sbin:/sbin" # debootstrap, for a user whose PATH has no sbin
buildah=(bash "$here/buildah.sh")
mirror="${FILTERRELEASE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-distutils by name: python3.11-venv depends on the virtual python3.11-distutils, which
# debootstrap's resolver does not map to the package providing it.
packages=python3.11,python3.11-venv,python3-distutils,ca-certificates,tzdata
key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
name="localhost/filterrelease-base:bookworm-$key"

say() { echo "image-base: $*" >&2; }

if "${buildah[@]}" inspect --type image "$name" >/dev/null 2>&1; then
	say "$name is cached, skipping"
	echo "$name"
	exit 0
fi

cache_root="${FILTERRELEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filterrelease}"
mkdir -p "$cache_root/images"
work="$(mktemp -d "$cache_root/images/base.XXXXXX")"
ctr=""
cleanup() {
	[[ -z $ctr ]] || "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

t0=$SECONDS
say "debootstrap bookworm (minbase + $packages) from $mirror; log: $work/debootstrap.log"
# debootstrap prints a line per package; show the phases and a heartbeat instead.
debootstrap --variant=minbase --include="$packages" bookworm "$work/rootfs" "$mirror" \
	>"$work/debootstrap.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
	sleep 5
	say "  ... $(grep -c '' "$work/debootstrap.log") log lines, $((SECONDS - t0))s: $(tail -1 "$work/debootstrap.log")"
done
if ! wait "$pid"; then
	say "debootstrap failed:"
	tail -30 "$work/debootstrap.log" >&2
	# dpkg's own errors are in the log debootstrap keeps inside the target.
	tail -30 "$work/rootfs/debootstrap/debootstrap.log" >&2 2>/dev/null || true
	exit 1
fi
say "debootstrap done in $((SECONDS - t0))s"

# What an image does not need: apt's downloads and lists, documentation, translations (the
# image runs with LANG=C.UTF-8). apt and dpkg stay, as in the public slim base.
rootfs="$work/rootfs"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
	"$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
	"$rootfs"/usr/share/locale/* "$rootfs"/debootstrap
# This machine's name and resolver are no part of an image: a container runtime provides them.
rm -f "$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"
test -x "$rootfs/usr/bin/python3.11" || { say "no /usr/bin/python3.11 in the rootfs"; exit 1; }

say "committing $name"
ctr="$("${buildah[@]}" from scratch)"
mnt="$("${buildah[@]}" mount "$ctr")"
# /dev stays empty: a container runtime provides it.
tar -C "$rootfs" --exclude='./dev/*' -cf - . | tar -C "$mnt" -xpf -
"${buildah[@]}" umount "$ctr" >/dev/null
"${buildah[@]}" config \
	--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	--env LANG=C.UTF-8 \
	--cmd python3.11 \
	--label org.opencontainers.image.description="Debian bookworm minbase with python3.11 (testbed/image/build-base.sh)" \
	"$ctr"
"${buildah[@]}" commit --quiet --rm "$ctr" "$name" >/dev/null
ctr=""
# Bases of earlier versions of this script: vfs keeps each one in full.
for old in $("${buildah[@]}" images --noheading --format '{{.Name}}:{{.Tag}}'); do
	if [[ $old == "${name%%:*}:"* && $old != "$name" ]]; then
		"${buildah[@]}" rmi "$old" >/dev/null 2>&1 || true
	fi
done
say "$name built in $((SECONDS - t0))s ($("${buildah[@]}" images --format '{{.Size}}' "$name"))"
echo "$name"
