"""`kubectl filterrelease status NAME`: wait for a release to settle, for CI pipelines. Pure:
what a release's state means for the wait, and the progress line it prints.

Exit codes: 0 Healthy (the operator has seen the latest spec and Ready is True), 1 Degraded (of
the latest spec), 2 timed out; the CLI adds 3 for "could not ask" (not found, deleted while
waiting, RBAC, unreachable). A Paused release keeps waiting: a person promotes or resumes it,
and the pipeline goes on when they do.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

DEFAULT_TIMEOUT = "10m"  # longer than a typical canary's steps, shorter than a CI job's limit


class ExitCode(IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    TIMEOUT = 2


class State(StrEnum):
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    PAUSED = "Paused"
    PROGRESSING = "Progressing"


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)
    state: State
    line: str  # what to print when it differs from the previous line

    @property
    def done(self) -> bool:
        return self.state in (State.HEALTHY, State.DEGRADED)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.HEALTHY if self.state is State.HEALTHY else ExitCode.DEGRADED


def _ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def assess(release: dict[str, Any]) -> Verdict:
    """What the wait makes of the release as it is now. A status the operator wrote for an
    older spec says nothing about the new one: it is still progressing."""
    meta = release.get("metadata") or {}
    status = release.get("status") or {}
    current = status.get("observedGeneration") == meta.get("generation")
    phase = str(status.get("phase") or "Pending")
    message = " ".join(str(status.get("message") or "").split())
    where = ", ".join(
        part
        for part in (
            f"step {status['currentStep']}" if status.get("currentStep") else "",
            f"canary weight {status['canaryWeight']}%"
            if status.get("canaryWeight") is not None
            else "",
            f"proxies {status['proxies']['ready']}"
            if (status.get("proxies") or {}).get("ready")
            else "",
        )
        if part
    )
    detail = f"{phase}" + (f" ({where})" if where else "") + (f": {message}" if message else "")
    if not current:
        seen = status.get("observedGeneration")
        return Verdict(
            state=State.PROGRESSING,
            line=f"Waiting for the operator to see generation {meta.get('generation')} "
            f"(it has seen {seen if seen is not None else 'none'})",
        )
    if _ready(status) and phase not in (State.DEGRADED, State.PAUSED):
        return Verdict(state=State.HEALTHY, line=detail)
    if phase == State.DEGRADED:
        return Verdict(state=State.DEGRADED, line=detail)
    if phase == State.PAUSED:
        return Verdict(
            state=State.PAUSED,
            line=f"{detail} -- waiting for a person to promote or resume it",
        )
    return Verdict(state=State.PROGRESSING, line=detail)
