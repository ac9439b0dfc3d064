"""The shell around track labels (core/tracks.py): take a deleted release's labels off its pods.

A release deleted mid-canary loses its WasmPlugins to garbage collection, but the
`track.filterrelease.dev/<release>` label stays on every pod it split. Without a finalizer (one
would block deletion while the operator is down), the labels are removed when the deletion is
seen (remove_track, from the reconcile that finds the release gone) and, for releases deleted
while no operator ran, by a sweep at start-up and at every resync (sweep).

Both run under the release's lock (release_locks.py) and check first that no release of the
namespace owns the key. A release owns its key's labels only while it may have split pods:
its status says split, or records a rollout (which may still be unwinding its labels). A
release of the same name created right after the deletion has neither (a first version is never
canaried: there is nothing to canary against), so the old labels come off whichever the operator
sees first. The pod admission webhook adds labels only for releases that are split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from filterrelease.core.tracks import orphaned_tracks, track_label
from filterrelease.ports import ReleaseCluster
from filterrelease.release_locks import ReleaseLocks

log = logging.getLogger(__name__)


async def remove_track(kube: ReleaseCluster, namespace: str, key: str) -> int:
    """Remove the label `key` from every pod of the namespace that carries it; how many. The
    caller holds the release's lock and has seen that no release owns the key."""
    pods = await kube.list_tracked_pods(namespace, key)
    removed = 0
    for (pod_namespace, pod), _ in sorted(pods.items()):
        removed += bool(await kube.label_pod(pod_namespace, pod, key, None))
    if removed:
        log.info("removed the track label %s of a deleted release from %d pods", key, removed)
    return removed


def _may_own_tracks(release: Mapping[str, Any]) -> bool:
    status = release.get("status") or {}
    return bool(status.get("split") or status.get("rollout"))


def _owned(releases: Iterable[Mapping[str, Any]], namespace: str, key: str) -> bool:
    return any(
        r["metadata"]["namespace"] == namespace
        and track_label(r["metadata"]["name"]) == key
        and _may_own_tracks(r)
        for r in releases
    )


async def sweep(
    kube: ReleaseCluster, locks: ReleaseLocks, namespace: str | None, releases: list[dict[str, Any]]
) -> int:
    """Remove the track labels no release of `releases` (the namespace's, just listed) owns
    (see above); how many were removed. namespace None: every namespace."""
    pods = await kube.list_tracked_pods(namespace)
    names = (
        (r["metadata"]["namespace"], r["metadata"]["name"]) for r in releases if _may_own_tracks(r)
    )
    removed = 0
    for pod_namespace, key in sorted(
        orphaned_tracks(((ns, labels) for (ns, _), labels in pods.items()), names)
    ):
        async with locks.hold(pod_namespace, key):
            # Listed again under the lock: a release created since owns its key.
            if _owned(await kube.list_releases(pod_namespace), pod_namespace, key):
                continue
            removed += await remove_track(kube, pod_namespace, key)
    return removed
