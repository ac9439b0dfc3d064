"""The canary rollout's steps and verdicts on them. Pure; time is an input.

A rollout is recorded in status.rollout and moves forward one decision at a time:

    setWeight w   move ceil(w% of the pods) (at least one) onto the canary track; the step is
                  done once the layout planner has nothing left to do
    pause [d]     wait d, or (without d) until a person promotes
    analysis      measure the canary pods until every metric has its verdict
    (after the last step) confirm-promotion gates → promote: the new version goes to all

Background analysis and Wasm fast-fail run whenever canary pods exist. A Failed analysis, a
rollback hook that answers yes, an abort request or a missed progress deadline roll back: the
stable plugin never stopped carrying the last good content, so rolling back is moving the
canary pods back and removing the canary plugin (core/layout.py orders that safely). The rollout
then stays rolled back for this version (no retry loop) until the spec changes or a person asks
to retry. A measurement that errors (Prometheus unreachable) holds the step: no promotion, no
rollback, unless spec.strategy.canary.metricsOutage says to roll back after a while.

Nothing here runs a step twice: the step index only moves forward, and it moves in the same
status write that records the step's outcome, so a crash either loses the whole decision (the
step is judged again from what is observed) or none of it.

What a decision needs measured or asked first is in core/needs.py; a person's requests
(promote, abort, pause, …) in core/requests.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from filterrelease.core.analysis import (
    AnalysisPhase,
    MetricResult,
    assess_all,
)
from filterrelease.core.hooks import GateResult, HookType
from filterrelease.core.rollout_state import PauseReason, Reason, Requeue
from filterrelease.core.spec import Canary, Step
from filterrelease.core.status import RolloutStatus
from filterrelease.core.timestamps import seconds_since, timestamp


def step_name(step: Step) -> str:
    if step.set_weight is not None:
        return f"setWeight {step.set_weight}"
    if step.pause is not None:
        return f"pause {step.pause.duration}" if step.pause.duration else "pause (until promoted)"
    return "analysis"


def step_label(rollout: RolloutStatus, canary: Canary) -> str:
    total = len(canary.steps)
    label = f"{min(rollout.step + 1, total)}/{total}"
    if canary.waves is not None and rollout.waves:
        label += f" (wave {rollout.wave + 1}/{len(rollout.waves)})"
    return label


def wave_values(canary: Canary, pods: Mapping[str, Mapping[str, str]]) -> tuple[str, ...] | None:
    """The waves of a rollout: the values of the waves label among the selected pods, in
    order (pods without the label make the last wave, value "")."""
    if canary.waves is None:
        return None
    key = canary.waves.by_label
    values = {labels.get(key, "") for labels in pods.values()}
    return tuple(sorted(values, key=lambda v: (v == "", v)))


def wave_target(
    rollout: RolloutStatus, canary: Canary, pods: Mapping[str, Mapping[str, str]]
) -> tuple[tuple[str, ...], int] | None:
    """With waves: the order in which pods join the canary (the waves done, then the current
    one) and how many of them are on it now. A value that appeared after the rollout started
    is in no wave: its pods stay stable until the promotion."""
    if canary.waves is None or rollout.waves is None:
        return None
    key = canary.waves.by_label
    done = set(rollout.waves[: rollout.wave])
    current = rollout.waves[rollout.wave] if rollout.wave < len(rollout.waves) else None
    finished = [p for p in sorted(pods) if pods[p].get(key, "") in done]
    running = [p for p in sorted(pods) if current is not None and pods[p].get(key, "") == current]
    count = len(finished) + canary_pod_count(rollout.weight, len(running))
    return (*finished, *running), count


def canary_pod_count(weight: int, pods: int) -> int:
    """A share of the pods, rounded up, and at least one pod for any weight above 0."""
    if weight <= 0 or pods == 0:
        return 0
    return max(1, math.ceil(weight * pods / 100))


def start(revision: str, now: datetime) -> RolloutStatus:
    return RolloutStatus(
        revision=revision, started_at=timestamp(now), step_started_at=timestamp(now)
    )


def advance(rollout: RolloutStatus, now: datetime) -> RolloutStatus:
    return rollout.model_copy(
        update={
            "step": rollout.step + 1,
            "step_started_at": timestamp(now),
            "analysis": (),
            "paused": None,
            "gate": None,
        }
    )


def current_step(rollout: RolloutStatus, canary: Canary) -> Step | None:
    return canary.steps[rollout.step] if rollout.step < len(canary.steps) else None


# --- the verdicts ---------------------------------------------------------------------------


class Outcome(BaseModel):
    """One decision on a rollout that is running (neither promoting nor rolled back)."""

    model_config = ConfigDict(frozen=True)
    rollout: RolloutStatus
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    requeue_after: float | None = None
    metrics_unavailable: str | None = None  # the message, while measurements error


def _message(results: tuple[MetricResult, ...], phase: AnalysisPhase) -> str:
    for r in results:
        if r.phase == phase:
            return f"{r.name}: {r.message}" if r.message else r.name
    return ""


def judge(
    rollout: RolloutStatus,
    canary: Canary,
    *,
    converged: bool,
    now: datetime,
    step_results: tuple[MetricResult, ...],
    background: tuple[MetricResult, ...],
    gates: Mapping[HookType, GateResult],
    next_due: float,
) -> Outcome:
    """Move a running rollout on, hold it, pause it, or mark it for rollback."""
    r = rollout.model_copy(update={"background": background or rollout.background})
    if step_results:
        r = r.model_copy(update={"analysis": step_results})

    rollback = gates.get(HookType.ROLLBACK)
    if rollback is not None and rollback.passed:
        return _abort(r, now, f"a rollback webhook asked for it: {rollback.message}")
    # Background analysis and fast-fail judge the canary pods whatever the step.
    if any(m.phase == AnalysisPhase.FAILED for m in background):
        return _abort(r, now, f"analysis failed: {_message(background, AnalysisPhase.FAILED)}")

    unavailable = None
    measured = background + step_results
    if any(m.phase == AnalysisPhase.ERROR for m in measured):
        unavailable = _message(measured, AnalysisPhase.ERROR)
        outage = canary.metrics_outage
        began = r.metrics_unavailable_since or timestamp(now)
        r = r.model_copy(update={"metrics_unavailable_since": began})
        if outage.action == "Rollback" and seconds_since(began, now) > outage.after_seconds:
            return _abort(r, now, f"metrics unavailable for over {outage.after}: {unavailable}")
    elif r.metrics_unavailable_since is not None:
        r = r.model_copy(update={"metrics_unavailable_since": None})

    if not converged or r.paused is not None:
        return Outcome(rollout=r, requeue_after=next_due, metrics_unavailable=unavailable)
    outcome = _judge_step(r, canary, now, gates, next_due)
    return outcome.model_copy(update={"metrics_unavailable": unavailable})


def _abort(rollout: RolloutStatus, now: datetime, reason: str) -> Outcome:
    aborted = rollout.model_copy(update={"aborted": reason, "aborted_at": timestamp(now)})
    return Outcome(
        rollout=aborted,
        events=(("Warning", Reason.ROLLING_BACK, reason),),
        requeue_after=Requeue.UNWIND,
    )


def _passed(rollout: RolloutStatus, now: datetime, what: str) -> Outcome:
    return Outcome(
        rollout=advance(rollout, now),
        events=(("Normal", Reason.STEP_PASSED, what),),
        requeue_after=Requeue.NEXT_MOVE,
    )


def _gate_closed(gates: Mapping[HookType, GateResult], hook: HookType) -> str | None:
    answer = gates.get(hook)
    return f"{hook.value}: {answer.message}" if answer is not None and not answer.passed else None


def _after_last_step(
    r: RolloutStatus, canary: Canary, now: datetime, gates: Mapping[HookType, GateResult]
) -> Outcome:
    """Every step passed: the next wave starts, or the promotion is confirmed and starts."""
    if r.waves is not None and r.wave + 1 < len(r.waves):
        # This wave passed every step: it stays on the canary, and the steps start again
        # on the next one.
        nxt = r.model_copy(
            update={
                "wave": r.wave + 1,
                "step": 0,
                "weight": 0,
                "step_started_at": timestamp(now),
                "analysis": (),
                "gate": None,
            }
        )
        key = canary.waves.by_label if canary.waves else ""
        event = (
            "Normal",
            Reason.WAVE_STARTED,
            f"wave {r.wave + 2}/{len(r.waves)} "
            f"({key}={r.waves[r.wave + 1] or '(none)'}): the steps start again",
        )
        return Outcome(rollout=nxt, events=(event,), requeue_after=Requeue.NEXT_MOVE)
    if closed := _gate_closed(gates, HookType.CONFIRM_PROMOTION):
        return Outcome(
            rollout=r.model_copy(update={"gate": closed}), requeue_after=Requeue.GATE_CLOSED
        )
    promoting = r.model_copy(update={"promoting": True, "gate": None})
    events = (("Normal", Reason.PROMOTING, "every step passed: promoting"),)
    return Outcome(rollout=promoting, events=events, requeue_after=Requeue.NEXT_MOVE)


def _judge_step(
    r: RolloutStatus,
    canary: Canary,
    now: datetime,
    gates: Mapping[HookType, GateResult],
    next_due: float,
) -> Outcome:
    """The current step, on a converged layout that is not paused."""
    step = current_step(r, canary)
    if step is None:
        return _after_last_step(r, canary, now, gates)

    label = step_label(r, canary)
    if step.set_weight is not None:
        if r.weight == 0 and r.wave == 0 and (closed := _gate_closed(gates, HookType.PRE_ROLLOUT)):
            return Outcome(
                rollout=r.model_copy(update={"gate": closed}), requeue_after=Requeue.GATE_CLOSED
            )
        if r.weight != step.set_weight:
            # Record the weight first; the layout planner moves the pods in this decision and
            # the next ones, and the step passes once nothing is left to move.
            started = r.model_copy(update={"weight": step.set_weight, "gate": None})
            event = ("Normal", Reason.STEP_STARTED, f"step {label}: setWeight {step.set_weight}")
            return Outcome(rollout=started, events=(event,), requeue_after=Requeue.NEXT_MOVE)
        return _passed(r, now, f"step {label}: {step.set_weight}% of the pods on the canary")

    if step.pause is not None:
        duration = step.pause.seconds
        if duration is None:
            event = ("Normal", Reason.PAUSED, f"step {label}: paused until promoted")
            return Outcome(
                rollout=r.model_copy(update={"paused": PauseReason.PAUSE_STEP}), events=(event,)
            )
        waited = seconds_since(r.step_started_at, now)
        if waited < duration:
            return Outcome(rollout=r, requeue_after=min(duration - waited, next_due))
        return _passed(r, now, f"step {label}: paused {step.pause.duration}")

    metrics = tuple(step.analysis.metrics) if step.analysis else ()
    verdict = assess_all(metrics, {m.name: m for m in r.analysis})
    if verdict == AnalysisPhase.FAILED:
        why = _message(r.analysis, AnalysisPhase.FAILED)
        return _abort(r, now, f"step {label} analysis failed: {why}")
    if verdict == AnalysisPhase.INCONCLUSIVE:
        why = _message(r.analysis, AnalysisPhase.INCONCLUSIVE)
        event = (
            "Warning",
            Reason.INCONCLUSIVE,
            f"step {label} analysis inconclusive, paused until resumed or promoted: {why}",
        )
        return Outcome(
            rollout=r.model_copy(update={"paused": PauseReason.INCONCLUSIVE}), events=(event,)
        )
    if verdict == AnalysisPhase.SUCCESSFUL:
        return _passed(r, now, f"step {label}: analysis successful")
    return Outcome(rollout=r, requeue_after=next_due)
