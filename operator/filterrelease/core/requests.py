"""Manual control of a running rollout: a person's request, through an annotation. Pure."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from filterrelease.core.canary import advance, current_step, start, step_label
from filterrelease.core.rollout_state import PauseReason, Reason
from filterrelease.core.spec import Canary
from filterrelease.core.status import RolloutStatus
from filterrelease.core.timestamps import timestamp


class Request(StrEnum):
    """Manual control, through the filterrelease.dev/request annotation (never the spec, so a
    GitOps tool sees no drift)."""

    PROMOTE = "promote"  # end the current pause or analysis step and go on
    PROMOTE_FULL = "promote-full"  # skip the remaining steps and promote now
    ABORT = "abort"  # roll back now
    PAUSE = "pause"  # hold where the rollout is
    RESUME = "resume"  # end a manual pause, or a pause for an inconclusive analysis
    RETRY = "retry"  # start a rolled-back version's rollout again


REQUEST_ANNOTATION = "filterrelease.dev/request"


def apply_request(
    request: str, rollout: RolloutStatus, canary: Canary, now: datetime
) -> tuple[RolloutStatus, tuple[str, str, str]]:
    """A person's request; returns the rollout and the Event that says what was done."""
    who = "by request"
    match request:
        case Request.ABORT if not rollout.aborted and not rollout.promoting:
            return rollout.model_copy(
                update={"aborted": f"aborted {who}", "aborted_at": timestamp(now)}
            ), ("Warning", Reason.ROLLING_BACK, f"aborted {who}: rolling back")
        case Request.PROMOTE_FULL if not rollout.aborted and not rollout.promoting:
            return rollout.model_copy(update={"promoting": True, "paused": None}), (
                "Normal",
                Reason.PROMOTING,
                f"promoted {who}, skipping the remaining steps",
            )
        case Request.PROMOTE if not rollout.aborted and not rollout.promoting:
            step = current_step(rollout, canary)
            if step is not None and step.set_weight is not None:
                # A weight step only moves pods: promoting past it would skip the move.
                return rollout.model_copy(update={"paused": None}), (
                    "Normal",
                    Reason.RESUMED,
                    f"promote {who}: resumed",
                )
            return advance(rollout, now), (
                "Normal",
                Reason.STEP_PASSED,
                f"step {step_label(rollout, canary)} promoted {who}",
            )
        case Request.PAUSE if not rollout.aborted and not rollout.promoting:
            return rollout.model_copy(update={"paused": PauseReason.MANUAL}), (
                "Normal",
                Reason.PAUSED,
                f"paused {who}",
            )
        case Request.RESUME if rollout.paused in (PauseReason.MANUAL, PauseReason.INCONCLUSIVE):
            return rollout.model_copy(update={"paused": None, "analysis": ()}), (
                "Normal",
                Reason.RESUMED,
                f"resumed {who}",
            )
        case Request.RETRY if rollout.aborted:
            return start(rollout.revision, now), (
                "Normal",
                Reason.RETRYING,
                f"rollout restarted {who}",
            )
    return rollout, (
        "Warning",
        Reason.REQUEST_IGNORED,
        f"request {request!r} does not apply now (see README: manual control)",
    )
