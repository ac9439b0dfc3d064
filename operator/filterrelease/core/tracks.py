"""How a release splits a workload's pods between two versions: the track label.

Istio's WasmPlugin selector is equality-only, so the pods of one workload can only be split by
the values of a label. Each release has its own label key, so two releases that select the same
pods (a security filter and a rate limiter on one workload) split them independently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict

TRACK_PREFIX = "track.filterrelease.dev/"
STABLE = "stable"
CANARY = "canary"
# A label name has at most 63 characters; longer release names are shortened with a hash so
# two long names never share a key.
_NAME_MAX = 63


def track_label(release_name: str) -> str:
    """The label key that puts a pod on the stable or the canary track of one release."""
    if len(release_name) <= _NAME_MAX:
        return TRACK_PREFIX + release_name
    digest = hashlib.sha256(release_name.encode()).hexdigest()[:10]
    return f"{TRACK_PREFIX}{release_name[: _NAME_MAX - 11].rstrip('-.')}-{digest}"


def is_reserved(label_key: str) -> bool:
    return label_key.startswith(TRACK_PREFIX)


def selects(match_labels: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Istio's (and Kubernetes') equality-based matchLabels."""
    return all(labels.get(k) == v for k, v in match_labels.items())


class SplitRelease(BaseModel):
    """What the pod admission webhook needs to know of a release whose pods are split."""

    model_config = ConfigDict(frozen=True)
    name: str
    match_labels: dict[str, str]


def admission_labels(
    pod_labels: Mapping[str, str], split_releases: Iterable[SplitRelease]
) -> dict[str, str]:
    """Labels to add to a pod being created so that exactly one WasmPlugin of every split
    release selects it: while a release is split, its stable plugin selects only pods on the
    stable track, so an unlabelled new pod would run without the filter. New pods join the
    stable track; the operator then moves pods between tracks to keep the canary's weight.
    A pod that already carries a track label (created by hand, or re-admitted) keeps it."""
    added: dict[str, str] = {}
    for release in split_releases:
        key = track_label(release.name)
        if selects(release.match_labels, pod_labels) and key not in pod_labels:
            added[key] = STABLE
    return added


def orphaned_tracks(
    pods: Iterable[tuple[str, Mapping[str, str]]], releases: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The track labels no release owns any more, as (namespace, label key): a release deleted
    mid-canary leaves its key on every pod it split (its WasmPlugins go by garbage collection,
    labels do not). A release splits pods of its own namespace only, so a key is owned when a
    release of that name exists in the pod's namespace.

    pods: (namespace, labels) of each pod; releases: (namespace, name) of each release."""
    owned = {(namespace, track_label(name)) for namespace, name in releases}
    return {
        (namespace, key)
        for namespace, labels in pods
        for key in labels
        if is_reserved(key) and (namespace, key) not in owned
    }
