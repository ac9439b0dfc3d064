"""Which manual requests a person may send from the dashboard, and which make sense now. Pure.

A request is the value of the filterrelease.dev/request annotation (core/requests.py); the
operator still judges it (and posts a RequestIgnored Event when it does not apply), so the
buttons offered here are a convenience, not a guard.
"""

from __future__ import annotations

import re
from typing import Any

REQUESTS = ("promote", "promote-full", "abort", "pause", "resume", "retry", "undo")
# undo:N goes back to history revision N; a bounded number, so the value stays an annotation.
_UNDO_TO = re.compile(r"undo:([1-9][0-9]{0,8})")
# Paused for these reasons, `resume` ends the pause; a pause step ends by `promote`.
_RESUMABLE = ("Manual", "Inconclusive")


class InvalidRequestError(ValueError):
    """A request value the operator does not know."""


def validate_request(value: object) -> str:
    """The request value as the operator reads it, or InvalidRequestError."""
    if not isinstance(value, str):
        raise InvalidRequestError("the request must be a string")
    if value in REQUESTS or _UNDO_TO.fullmatch(value):
        return value
    known = ", ".join(REQUESTS)
    raise InvalidRequestError(f"unknown request {value[:40]!r}: one of {known}, undo:N")


def available_actions(release: dict[str, Any]) -> list[str]:
    """The requests that apply to the release as its status stands, in button order."""
    status = release.get("status") or {}
    rollout = status.get("rollout") or {}
    offered: list[str] = []
    running = bool(rollout) and not rollout.get("aborted") and not rollout.get("promoting")
    if running:
        offered += ["promote", "promote-full"]
        if rollout.get("paused") in _RESUMABLE:
            offered.append("resume")
        elif not rollout.get("paused"):
            offered.append("pause")
        offered.append("abort")
    if rollout.get("aborted"):
        offered.append("retry")
    if undo_targets(release):
        offered.append("undo")
    return offered


def undo_targets(release: dict[str, Any]) -> list[int]:
    """History revisions `undo:N` can go back to: entries that keep their content and are not
    the version the release runs or rolls out now."""
    status = release.get("status") or {}
    current = {
        (status.get("stable") or {}).get("configHash"),
        (status.get("rollout") or {}).get("revision"),
    }
    targets: list[int] = []
    for entry in status.get("history") or []:
        revision = entry.get("revision")
        if (
            entry.get("content")
            and isinstance(revision, int)
            and entry.get("configHash") not in (current)
        ):
            targets.append(revision)
    return targets
