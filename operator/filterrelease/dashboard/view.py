"""The release page's model: the release, its pods, Events, WasmPlugins and measurement series
put together as the browser draws them. Pure."""

from __future__ import annotations

from typing import Any

from filterrelease.dashboard.actions import available_actions, undo_targets
from filterrelease.dashboard.rows import release_row

TRACKS = ("canary", "stable", "other")


def release_view(
    release: dict[str, Any],
    *,
    metrics: dict[str, list[dict[str, Any]]],
    pods: list[dict[str, Any]],
    events: list[dict[str, Any]],
    plugins: list[dict[str, Any]],
    may_act: bool,
) -> dict[str, Any]:
    status = release.get("status") or {}
    rollout = status.get("rollout") or {}
    offered = available_actions(release) if may_act else []
    undoable = set(undo_targets(release)) if may_act else set()
    return {
        "release": release_row(release),
        "module": ((release.get("spec") or {}).get("module") or {}).get("url") or "",
        "rollout": {
            "paused": rollout.get("paused"),
            "promoting": bool(rollout.get("promoting")),
            "aborted": rollout.get("aborted"),
            "gate": rollout.get("gate"),
        }
        if rollout
        else None,
        "steps": steps(release),
        "pods": pod_groups(status, pods),
        "metrics": metric_panels(rollout, metrics),
        "events": event_rows(events),
        "history": [
            {
                "revision": entry.get("revision"),
                "version": entry.get("version") or "",
                "outcome": entry.get("outcome") or "",
                "at": entry.get("at") or "",
                "reason": entry.get("reason") or "",
                "undo": entry.get("revision") in undoable,
            }
            for entry in status.get("history") or []
        ],
        "plugins": [plugin_row(p) for p in plugins],
        "actions": offered,
        "mayAct": may_act,
    }


def steps(release: dict[str, Any]) -> list[dict[str, Any]]:
    """The canary steps, each done, current or to come (all to come without a rollout)."""
    strategy = (release.get("spec") or {}).get("strategy") or {}
    spec_steps = (strategy.get("canary") or {}).get("steps") or []
    rollout = (release.get("status") or {}).get("rollout") or {}
    at = int(rollout.get("step", 0)) if rollout else None
    result = []
    for i, step in enumerate(spec_steps):
        if at is None:
            state = "todo"
        elif i < at or (rollout.get("promoting") and i >= at):
            state = "done"
        elif i == at and not rollout.get("aborted"):
            state = "current"
        elif i == at:
            state = "stopped"
        else:
            state = "todo"
        result.append({"number": i + 1, "label": step_label(step), "state": state})
    return result


def step_label(step: dict[str, Any]) -> str:
    if "setWeight" in step:
        return f"set weight {step['setWeight']}%"
    if "pause" in step:
        duration = (step.get("pause") or {}).get("duration")
        return f"pause {duration}" if duration else "pause until promoted"
    analysis = step.get("analysis") or {}
    names = [m.get("name", "") for m in analysis.get("metrics") or []]
    names += [f"template {t.get('name', '')}" for t in analysis.get("templates") or []]
    return f"analysis: {', '.join(names)}" if names else "analysis"


def pod_groups(status: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The selected pods by track, each with the version it runs: the track's version, or what
    its proxy reports when the operator found it lagging."""
    canary = set(status.get("canaryPods") or [])
    stable = set(status.get("stablePods") or [])
    lagging = {lag.get("pod"): lag for lag in (status.get("proxies") or {}).get("lagging") or []}
    versions = {
        "canary": (status.get("canary") or {}).get("version") or "",
        "stable": (status.get("stable") or {}).get("version") or "",
        "other": "",
    }
    groups: dict[str, list[dict[str, Any]]] = {track: [] for track in TRACKS}
    names = {str((p.get("metadata") or {}).get("name") or ""): p for p in pods}
    # Pods the status names but the list missed (just deleted) are still shown.
    for name in sorted(set(names) | canary | stable):
        if name in canary:
            track = "canary"
        elif name in stable or not canary:
            # Without canary pods every selected pod is on the stable version.
            track = "stable"
        else:
            track = "other"
        pod = names.get(name) or {}
        lag = lagging.get(name)
        groups[track].append(
            {
                "name": name,
                "version": lag.get("runs") if lag else versions[track],
                "wants": lag.get("wants") if lag else None,
                "phase": (pod.get("status") or {}).get("phase") or ("Gone" if not pod else ""),
                "ready": _ready(pod),
            }
        )
    return [
        {"track": track, "version": versions[track], "pods": groups[track]}
        for track in TRACKS
        if groups[track]
    ]


def _ready(pod: dict[str, Any]) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def metric_panels(
    rollout: dict[str, Any], metrics: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One panel per metric: its latest verdict from the status and every point seen."""
    results = {
        r.get("name"): r
        for r in [*(rollout.get("analysis") or []), *(rollout.get("background") or [])]
    }
    panels = []
    for name in sorted(set(metrics) | {n for n in results if n}):
        result = results.get(name) or {}
        points = metrics.get(name, [])
        panels.append(
            {
                "name": name,
                "phase": result.get("phase") or "",
                "counts": {
                    k: int(result.get(k, 0))
                    for k in ("successful", "failed", "inconclusive", "error")
                },
                "points": points,
                "hasBaseline": any(p.get("baseline") is not None for p in points),
            }
        )
    return panels


def event_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first (Session.events gives them oldest first)."""
    rows = [
        {
            "type": e.get("type") or "",
            "reason": e.get("reason") or "",
            "message": e.get("message") or "",
            "at": e.get("lastTimestamp")
            or e.get("eventTime")
            or (e.get("metadata") or {}).get("creationTimestamp")
            or "",
            "count": e.get("count") or 1,
        }
        for e in events
    ]
    rows.sort(key=lambda r: str(r["at"]), reverse=True)
    return rows


def plugin_row(plugin: dict[str, Any]) -> dict[str, Any]:
    spec = plugin.get("spec") or {}
    return {
        "name": (plugin.get("metadata") or {}).get("name") or "",
        "url": spec.get("url") or "",
        "selector": (spec.get("selector") or {}).get("matchLabels") or {},
    }
