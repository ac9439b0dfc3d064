"""What `kubectl filterrelease get` prints: a table of releases, or one release as a tree (its
WasmPlugins, pods by track, steps, analysis, history, recent Events). Pure: release, WasmPlugin
and Event dicts in, text out; the clock is passed in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from filterrelease.core.render import ANNOTATION_VERSION, LABEL_ROLE
from filterrelease.plugin.ages import age

MESSAGE_WIDTH = 60  # the table's MESSAGE column: enough for the gist, the tree has it whole
EVENTS_SHOWN = 5
NONE = "-"
LABEL_WIDTH = 14  # the tree's header: "Generation:" and three spaces


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, three spaces apart, as kubectl's tables (the last one is not padded)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def short(text: str, width: int = MESSAGE_WIDTH) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _status(release: dict[str, Any]) -> dict[str, Any]:
    return dict(release.get("status") or {})


def _version(status: dict[str, Any], key: str) -> str:
    return str((status.get(key) or {}).get("version") or NONE)


def release_table(
    releases: Sequence[dict[str, Any]], now: datetime, *, all_namespaces: bool
) -> str:
    """`get` without a name: one line per release, sorted by namespace and name."""
    if not releases:
        return "No FilterReleases found."
    head = ["NAME", "PHASE", "STABLE", "CANARY", "STEP", "WEIGHT", "PROXIES", "AGE", "MESSAGE"]
    rows = [["NAMESPACE", *head] if all_namespaces else head]
    ordered = sorted(
        releases, key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"])
    )
    for release in ordered:
        meta, status = release["metadata"], _status(release)
        weight = status.get("canaryWeight")
        row = [
            meta["name"],
            str(status.get("phase") or "Pending"),
            _version(status, "stable"),
            _version(status, "canary"),
            str(status.get("currentStep") or NONE),
            NONE if weight is None else f"{weight}%",
            str((status.get("proxies") or {}).get("ready") or NONE),
            age(meta.get("creationTimestamp"), now),
            short(str(status.get("message") or "")),
        ]
        rows.append([meta.get("namespace", ""), *row] if all_namespaces else row)
    return columns(rows)


# -- one release as a tree ---------------------------------------------------------------------


def steps_of(release: dict[str, Any]) -> list[dict[str, Any]]:
    spec = release.get("spec") or {}
    canary = (spec.get("strategy") or {}).get("canary") or spec.get("canary") or {}
    return list(canary.get("steps") or [])


def describe_step(step: dict[str, Any]) -> str:
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}%"
    if "pause" in step:
        duration = (step.get("pause") or {}).get("duration")
        return f"pause {duration}" if duration else "pause (until promoted)"
    if "analysis" in step:
        analysis = step.get("analysis") or {}
        names = [t.get("name", "?") for t in analysis.get("templates") or []]
        names += [m.get("name", "?") for m in analysis.get("metrics") or []]
        return f"analysis: {', '.join(names)}" if names else "analysis"
    return "?"


def _steps_section(release: dict[str, Any]) -> list[str]:
    steps = steps_of(release)
    if not steps:
        return []
    rollout = _status(release).get("rollout")
    current = int(rollout.get("step", 0)) if rollout else None
    lines = ["Steps:"]
    for i, step in enumerate(steps):
        if current is None:
            mark = "   "
        elif i < current:
            mark = "[x]"
        elif i == current:
            mark = "[>]"
        else:
            mark = "[ ]"
        lines.append(f"  {mark} {i + 1}. {describe_step(step)}")
    return lines


def _plugins_section(status: dict[str, Any], plugins: Sequence[dict[str, Any]] | None) -> list[str]:
    """None for plugins: they could not be read (RBAC), so only their names are known."""
    names = list(status.get("wasmPlugins") or [])
    if not names:
        return []
    live = {p["metadata"]["name"]: p for p in plugins or ()}
    rows = []
    for name in names:
        plugin = live.get(name)
        if plugin is None:
            rows.append(["  " + name, NONE, "(not found)" if plugins is not None else "?"])
            continue
        meta = plugin["metadata"]
        role = (meta.get("labels") or {}).get(LABEL_ROLE) or NONE
        version = (meta.get("annotations") or {}).get(ANNOTATION_VERSION) or NONE
        rows.append(["  " + name, role, version])
    return ["WasmPlugins:", columns(rows)]


def _pods_section(status: dict[str, Any]) -> list[str]:
    lagging = {
        entry.get("pod"): entry for entry in (status.get("proxies") or {}).get("lagging") or []
    }
    lines: list[str] = []
    for track, key in (("canary", "canaryPods"), ("stable", "stablePods")):
        pods = list(status.get(key) or [])
        if not pods:
            continue
        version = _version(status, track)
        lines.append(f"  {track} ({version}): {len(pods)} pod{'' if len(pods) == 1 else 's'}")
        rows = []
        for pod in sorted(pods):
            behind = lagging.get(pod)
            note = f"proxy runs {behind.get('runs', '?')}" if behind else ""
            rows.append(["    " + pod, note])
        lines.append(columns(rows))
    return ["Pods:", *lines] if lines else []


def _number(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metric_line(result: dict[str, Any]) -> list[str]:
    """One metric's row: name, phase, counts, the last measured value (and the stable
    pods' baseline for it, when the analysis compares against one)."""
    counts = (
        f"{result.get('count', 0)} measured: {result.get('successful', 0)} ok, "
        f"{result.get('failed', 0)} failed, {result.get('inconclusive', 0)} inconclusive, "
        f"{result.get('error', 0)} errors"
    )
    measurements = result.get("measurements") or []
    last = measurements[-1] if measurements else None
    if last is None:
        value = "no measurement yet"
    else:
        value = f"last {_number(last.get('value'))}"
        if last.get("baseline") is not None:
            value += f" (stable {_number(last.get('baseline'))})"
        if last.get("message"):
            value += f": {short(str(last['message']), 50)}"
    return [
        "  " + str(result.get("name", "?")),
        str(result.get("phase", "Running")),
        counts,
        value,
    ]


def _analysis_section(status: dict[str, Any]) -> list[str]:
    rollout = status.get("rollout") or {}
    lines: list[str] = []
    for title, key in (("Analysis", "analysis"), ("Background analysis", "background")):
        results = rollout.get(key) or []
        if results:
            lines += [f"{title}:", columns([metric_line(r) for r in results])]
    return lines


def _history_section(status: dict[str, Any], now: datetime) -> list[str]:
    history = status.get("history") or []
    if not history:
        return []
    rows = [["  REVISION", "VERSION", "OUTCOME", "AGE", "UNDO", "REASON"]]
    for entry in history:
        revision = entry.get("revision")
        undo = NONE
        if entry.get("content"):
            undo = f"undo:{revision}" if revision is not None else "yes"
        rows.append(
            [
                "  " + (NONE if revision is None else str(revision)),
                str(entry.get("version", "?")),
                str(entry.get("outcome", "?")),
                age(entry.get("at"), now),
                undo,
                short(str(entry.get("reason") or ""), 50),
            ]
        )
    return ["History (newest first; UNDO: where `undo --to-revision` can go):", columns(rows)]


def _events_section(events: Sequence[dict[str, Any]], now: datetime) -> list[str]:
    if not events:
        return []
    rows = [["  AGE", "TYPE", "REASON", "MESSAGE"]]
    for event in list(events)[-EVENTS_SHOWN:]:
        stamp = event.get("lastTimestamp") or event.get("eventTime")
        rows.append(
            [
                "  " + age(stamp, now),
                str(event.get("type", "")),
                str(event.get("reason", "")),
                short(str(event.get("message", "")), 80),
            ]
        )
    return ["Events:", columns(rows)]


def _proxies_summary(proxies: dict[str, Any]) -> str:
    parts = [
        f"{proxies[key]} {key}"
        for key in ("stable", "canary", "pending", "fallback", "unknown", "unreachable")
        if proxies.get(key)
    ]
    ready = f"{proxies.get('ready', '?')} confirmed"
    return f"{ready} ({', '.join(parts)})" if parts else ready


def release_tree(
    release: dict[str, Any],
    now: datetime,
    plugins: Sequence[dict[str, Any]] | None = (),
    events: Sequence[dict[str, Any]] = (),
) -> str:
    """`get NAME`: everything about one release a person needs to decide what to do next.
    plugins: the live WasmPlugins of status.wasmPlugins (None: not readable)."""
    meta, status = release["metadata"], _status(release)
    steps = steps_of(release)
    header = [
        ["Name:", meta["name"]],
        ["Namespace:", meta.get("namespace", "")],
        ["Phase:", str(status.get("phase") or "Pending")],
        ["Message:", " ".join(str(status.get("message") or "").split()) or NONE],
        ["Strategy:", f"Canary ({len(steps)} steps)" if steps else "Direct"],
    ]
    if status.get("currentStep"):
        header.append(["  Step:", str(status["currentStep"])])
    if status.get("canaryWeight") is not None:
        header.append(["  Weight:", f"{status['canaryWeight']}%"])
    paused = (status.get("rollout") or {}).get("paused")
    if paused:
        header.append(["  Paused:", f"{paused} (waits for a person: promote or resume)"])
    header += [["Stable:", _version(status, "stable")], ["Canary:", _version(status, "canary")]]
    if status.get("proxies"):
        header.append(["Proxies:", _proxies_summary(status["proxies"])])
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if observed is not None and observed != generation:
        header.append(["Generation:", f"{generation} (the operator has seen {observed})"])
    header.append(["Age:", age(meta.get("creationTimestamp"), now)])
    sections = [
        [f"{label:<{LABEL_WIDTH}}{value}".rstrip() for label, value in header],
        _steps_section(release),
        _plugins_section(status, plugins),
        _pods_section(status),
        _analysis_section(status),
        _history_section(status, now),
        _events_section(events, now),
    ]
    return "\n\n".join("\n".join(section) for section in sections if section)
