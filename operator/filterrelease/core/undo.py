"""Undo: every proxy back to an earlier good version at once, by request. Pure.

During an incident the way back must not wait for a canary, nor for a Git revert to be
reviewed, merged and synced: `filterrelease.dev/request=undo` (or `undo:N` for history revision
N) puts back the exact WasmPlugin content a good version ran with (status.history keeps it for
the newest spec.revisionHistoryLimit ones), skipping the canary. Git stays the source of truth:
the release then reads Degraded/UndoneFromSpec, because what runs is not what the spec asks
for, until the spec changes; from that new spec on, a rollout canaries from the undone version.
"""

from __future__ import annotations

from datetime import datetime

from filterrelease.core.status import FilterReleaseStatus, HistoryEntry, ModuleVersion, UndoStatus
from filterrelease.core.timestamps import timestamp

UNDO = "undo"


def is_undo(request: str | None) -> bool:
    return request is not None and (request == UNDO or request.startswith(UNDO + ":"))


def undo_target(status: FilterReleaseStatus, request: str) -> HistoryEntry | str:
    """The history entry an undo request goes back to, or why there is none.

    `undo` alone goes to the newest good version other than the one being rolled out (during
    a canary: the stable one, at once) or, with none in progress, other than the one that
    runs (the version before it), as `kubectl argo rollouts undo` does."""
    whole = [h for h in status.history if h.content is not None and h.revision is not None]
    kept = ", ".join(str(h.revision) for h in whole) or "none"
    if not whole:
        return "no version in status.history keeps its content to go back to"
    if request == UNDO:
        rollout = status.rollout
        running = status.canary if rollout and not rollout.aborted else None
        current = running or status.stable
        skip = current.config_hash if current else None
        entry = next((h for h in whole if h.config_hash != skip), None)
        return entry or f"no earlier good version to go back to (revisions kept: {kept})"
    number = request.removeprefix(UNDO + ":")
    if not number.isdigit():
        return f"{request!r} names no revision: use undo or undo:<revision> (kept: {kept})"
    entry = next((h for h in whole if h.revision == int(number)), None)
    if entry is None:
        known = any(h.revision == int(number) for h in status.history)
        why = "was not a good version or is too old to keep" if known else "is not in the history"
        return f"revision {number} {why} (revisions an undo can go to: {kept})"
    return entry


def undone_version(entry: HistoryEntry) -> ModuleVersion:
    """The version a history entry kept, ready to render."""
    content = entry.content or {}
    return ModuleVersion(
        version=entry.version,
        url=str(content.get("url") or ""),
        sha256=content.get("sha256"),
        plugin_config=content.get("pluginConfig"),
        config_hash=entry.config_hash,
        content=content,
    )


def undo_status(entry: HistoryEntry, generation: int, now: datetime) -> UndoStatus:
    return UndoStatus(
        revision=entry.revision or 0,
        version=entry.version,
        config_hash=entry.config_hash,
        generation=generation,
        at=timestamp(now),
    )


def active_undo(status: FilterReleaseStatus, generation: int) -> UndoStatus | None:
    """The undo in force: one asked for under this spec generation (a new spec ends it)."""
    undone = status.undone
    return undone if undone is not None and undone.generation == generation else None
