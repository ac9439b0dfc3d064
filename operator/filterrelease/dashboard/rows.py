"""One row of the release list, from a FilterRelease as the API server returns it. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

PHASES = ("Pending", "Progressing", "Paused", "Healthy", "Degraded")


def release_key(release: dict[str, Any]) -> tuple[str, str]:
    meta = release.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def release_row(release: dict[str, Any]) -> dict[str, Any]:
    """What the list shows of a release; the browser formats the age from `created`."""
    namespace, name = release_key(release)
    status = release.get("status") or {}
    rollout = status.get("rollout") or {}
    proxies = status.get("proxies") or {}
    return {
        "namespace": namespace,
        "name": name,
        "phase": status.get("phase") or "Pending",
        "message": status.get("message") or "",
        "stable": (status.get("stable") or {}).get("version") or "",
        "canary": (status.get("canary") or {}).get("version") or "",
        "step": status.get("currentStep") or "",
        "weight": status.get("canaryWeight"),
        "proxies": proxies.get("ready") or "",
        "analysis": last_analysis(rollout),
        "created": (release.get("metadata") or {}).get("creationTimestamp") or "",
    }


def last_analysis(rollout: dict[str, Any]) -> dict[str, Any] | None:
    """The newest measurement of the rollout's analysis (the current step's, else the
    background's): which metric, its phase and value."""
    newest: dict[str, Any] | None = None
    for result in [*(rollout.get("analysis") or []), *(rollout.get("background") or [])]:
        for measurement in result.get("measurements") or []:
            if newest is None or str(measurement.get("finishedAt") or "") > str(
                newest.get("finishedAt") or ""
            ):
                newest = measurement
    if newest is None:
        return None
    return {
        "metric": newest.get("metric") or "",
        "phase": newest.get("phase") or "",
        "value": newest.get("value"),
        "at": newest.get("finishedAt") or "",
    }


def phase_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Releases per phase, every known phase present (zero included)."""
    counted = Counter(str(row.get("phase")) for row in rows)
    others = sorted(set(counted) - set(PHASES))
    return {phase: counted.get(phase, 0) for phase in (*PHASES, *others)}
