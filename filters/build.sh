#!/usr/bin/env bash
# Build every filter under cmd/ into a proxy-wasm module (<name>.wasm) with standard Go:
#   GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared
#
# Idempotent: modules land in a cache directory outside the repository, keyed by a hash of
# everything that decides their content (go.mod, go.sum, every .go file and its path, this
# script, the Go toolchain). When that directory exists the build is skipped. Concurrent runs
# are safe: each builds into its own temporary directory and renames it into place.
# Prints progress on stderr and the directory on its last stdout line; the directory holds
# <name>.wasm for each cmd/<name> and SHA256SUMS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

cache_root="${FILTERRELEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filterrelease}"
go_version="$(go version)"
key="$(
	{
		cat go.mod
		if [[ -f go.sum ]]; then cat go.sum; fi
		find . -name '*.go' -print0 | sort -z | while IFS= read -r -d '' f; do
			printf '%s\n' "$f"
			cat "$f"
		done
		cat build.sh
		echo "$go_version"
	} | sha256sum | cut -c1-16
)"
out="$cache_root/filters/$key"

filters=()
for dir in cmd/*/; do
	name="$(basename "$dir")"
	compgen -G "$dir*.go" >/dev/null && filters+=("$name")
done

if [[ -d "$out" ]]; then
	echo "filters: ${#filters[@]} modules cached in $out (key $key), skipping build" >&2
	echo "$out"
	exit 0
fi

mkdir -p "$cache_root/filters"
partial="$(mktemp -d "$cache_root/filters/.partial-$key-XXXXXX")"
trap 'rm -rf "$partial"' EXIT

echo "filters: building ${#filters[@]} modules with $go_version into $out" >&2
start=$SECONDS
i=0
for name in "${filters[@]}"; do
	i=$((i + 1))
	t0=$SECONDS
	GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 \
		go build -trimpath -buildmode=c-shared -o "$partial/$name.wasm" "./cmd/$name"
	size="$(du -k "$partial/$name.wasm" | cut -f1)"
	echo "filters: [$i/${#filters[@]}] $name.wasm (${size} KiB) in $((SECONDS - t0))s" >&2
done
(cd "$partial" && sha256sum -- *.wasm >SHA256SUMS)
chmod 755 "$partial"
# Another run may have finished the same key meanwhile: then keep its directory.
if ! mv -T "$partial" "$out" 2>/dev/null; then
	echo "filters: $out appeared meanwhile (a concurrent build); using it" >&2
fi
echo "filters: all modules built in $((SECONDS - start))s" >&2
echo "$out"
