#!/usr/bin/env bash
# Build the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok) from the Go modules pinned in go.mod/go.sum.
#
# Idempotent: binaries land in a cache directory outside the repository, keyed by a hash of
# everything that decides their content (go.sum, go.mod, our own Go sources, the Go toolchain).
# When that directory is complete the build is skipped. Prints the directory on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

kube_version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)"
cache_root="${FILTERRELEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/filterrelease}"
key="$(
	{
		cat go.sum go.mod
		find cmd -name '*.go' -print0 | sort -z | xargs -0 cat
		go version
	} | sha256sum | cut -c1-16
)"
out="$cache_root/testbed/$key"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

complete=1
for b in "${binaries[@]}"; do [[ -x "$out/bin/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then
	echo "testbed: binaries for $kube_version are cached in $out/bin (key $key), skipping build" >&2
	echo "$out/bin"
	exit 0
fi

mkdir -p "$out/bin.partial"
# k8s reads its version from these variables; without them --version says v0.0.0-master.
major="${kube_version#v}"; major="${major%%.*}"
minor="$(echo "$kube_version" | cut -d. -f2)"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"

declare -A source=(
	[etcd]=./cmd/etcd
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
	[kubectl]=k8s.io/kubernetes/cmd/kubectl
	[kwok]=sigs.k8s.io/kwok/cmd/kwok
)

echo "testbed: building the local control plane ($kube_version) into $out" >&2
echo "testbed: downloading modules (first run only)..." >&2
go mod download
start=$SECONDS
i=0
for b in "${binaries[@]}"; do
	i=$((i + 1))
	if [[ -x "$out/bin.partial/$b" ]]; then continue; fi
	echo "testbed: [$i/${#binaries[@]}] go build $b (a cold build of the Kubernetes binaries takes minutes on 2 cores)" >&2
	t0=$SECONDS
	# A heartbeat so a CI log shows the build is alive during the long compile.
	(while sleep 30; do echo "testbed:       ... still building $b ($((SECONDS - t0))s)" >&2; done) &
	beat=$!
	if ! CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/bin.partial/$b" "${source[$b]}"; then
		kill "$beat" 2>/dev/null || true
		echo "testbed: build of $b failed" >&2
		exit 1
	fi
	kill "$beat" 2>/dev/null || true
	wait "$beat" 2>/dev/null || true
	echo "testbed:       $b built in $((SECONDS - t0))s" >&2
done
rm -rf "$out/bin"
mv "$out/bin.partial" "$out/bin"
echo "testbed: all binaries built in $((SECONDS - start))s; $(du -sh "$out/bin" | cut -f1) on disk" >&2
echo "$out/bin"
