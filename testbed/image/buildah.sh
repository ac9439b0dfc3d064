#!/usr/bin/env bash
# buildah with the storage the operator image lives in: `make image` builds into it and
# tests/integration/test_image.py runs the image from it, so both go through this one wrapper.
#
# The storage is kept out of the repository, in the cache beside the testbed binaries
# ($FILTERRELEASE_CACHE, default ~/.cache/filterrelease/containers). Its driver is chosen once,
# when the storage is made, and remembered (a storage cannot change driver): overlay where the
# kernel lets us mount it there (layers cost only their changes), else vfs, which works
# everywhere buildah does but stores every layer in full (about 9 GB for one build of this
# image with its cached layers). $FILTERRELEASE_BUILDAH_DRIVER forces one for a new storage.
set -euo pipefail

cache_root="${FILTERRELEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filterrelease}"
store="$cache_root/containers"

overlay_works() {
	[[ $(id -u) == 0 ]] || return 1
	local probe ok=1
	probe="$(mktemp -d "$store/probe.XXXXXX")"
	mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
	if mount -t overlay overlay \
		-o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
		"$probe/merged" 2>/dev/null; then
		umount "$probe/merged"
		ok=0
	fi
	rm -rf "$probe"
	return $ok
}

if [[ ! -f $store/driver ]]; then
	mkdir -p "$store"
	driver="${FILTERRELEASE_BUILDAH_DRIVER:-}"
	if [[ -z $driver ]]; then
		if overlay_works; then driver=overlay; else driver=vfs; fi
	fi
	echo "$driver" >"$store/driver"
fi
exec buildah --root "$store/storage" --runroot "$store/run" \
	--storage-driver "$(cat "$store/driver")" "$@"
