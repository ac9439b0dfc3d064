"""The canary rollout's steps, gates, analysis and manual requests. Pure; time is an input.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from filterrelease.core.analysis import (
    AnalysisPhase,
    Measurement,
    MeasurementPhase,
    Metric,
    MetricResult,
    assess_all,
    record,
    requeue_after,
)
from filterrelease.core.rollout_state import PauseReason, Reason, Requeue
from filterrelease.core.spec import Canary, Step
from filterrelease.core.status import RolloutStatus
from filterrelease.core.timestamps import parse_timestamp, seconds_since, timestamp
from filterrelease.core.webhooks import GateResult, HookType

FAST_FAIL = Metric.model_validate({"name": "wasm-fast-fail", "provider": {"wasm": {}}})


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
# The shortest time between two measurements of one metric (see _not_just_measured).
MIN_GAP = 1.5


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


# --- what the shell must fetch before deciding ---------------------------------------------


class Needs(BaseModel):
    """What a decision on a running rollout needs from the outside: gate answers and
    measurements (with the results so far, which the shell adds the new ones to). The shell
    asks for them, then calls decide() with the answers."""

    model_config = ConfigDict(frozen=True)
    gate: HookType | None = None
    step_metrics: tuple[Metric, ...] = ()
    background_metrics: tuple[Metric, ...] = ()
    rollback_hooks: bool = False
    step_results: tuple[MetricResult, ...] = ()
    background_results: tuple[MetricResult, ...] = ()
    step_started_at: str | None = None
    canary_since: str | None = None  # analysis counts the canary pods' traffic from here
    checksum: str = ""  # the version rolled out, for webhook payloads


def background_metrics(canary: Canary) -> tuple[Metric, ...]:
    metrics = tuple(canary.analysis.metrics) if canary.analysis else ()
    return ((FAST_FAIL,) if canary.wasm_fast_fail else ()) + metrics


def _not_just_measured(
    metrics: tuple[Metric, ...], results: tuple[MetricResult, ...], now: datetime
) -> tuple[Metric, ...]:
    """Leave out metrics measured less than MIN_GAP ago. A Wasm fast-fail metric is due at
    every decision, and every measurement changes the status, whose watch event asks for
    another decision: without a gap that would measure in a tight loop."""
    last = {
        r.name: parse_timestamp(r.measurements[-1].finished_at) for r in results if r.measurements
    }
    return tuple(
        m for m in metrics if m.name not in last or (now - last[m.name]).total_seconds() >= MIN_GAP
    )


def needs(
    rollout: RolloutStatus, canary: Canary, *, converged: bool, canary_pods: int, now: datetime
) -> Needs:
    """Gates and measurements for this decision. Analysis only measures canary pods that are
    running the canary version (a converged layout); gates guard the steps that move pods."""
    if rollout.aborted or rollout.promoting:
        return Needs(checksum=rollout.revision)
    measuring = converged and canary_pods > 0
    step = current_step(rollout, canary)
    gate = None
    if converged and rollout.paused is None:
        if step is None:
            gate = HookType.CONFIRM_PROMOTION
        elif step.set_weight is not None and rollout.weight == 0 and rollout.wave == 0:
            gate = HookType.PRE_ROLLOUT
    step_metrics: tuple[Metric, ...] = ()
    if measuring and step is not None and step.analysis is not None and rollout.paused is None:
        step_metrics = tuple(step.analysis.metrics)
    background = background_metrics(canary) if measuring else ()
    return Needs(
        gate=gate,
        step_metrics=_not_just_measured(step_metrics, rollout.analysis, now),
        background_metrics=_not_just_measured(background, rollout.background, now),
        rollback_hooks=measuring,
        step_results=rollout.analysis,
        background_results=rollout.background,
        step_started_at=rollout.step_started_at,
        canary_since=rollout.canary_since or rollout.step_started_at,
        checksum=rollout.revision,
    )


def analysis_due_in(
    canary: Canary,
    rollout: RolloutStatus | None,
    results: tuple[MetricResult, ...],
    *,
    started: datetime,
    now: datetime,
) -> float | None:
    """Seconds until the next background or current-step metric is due; None when every one
    has its verdict."""
    metrics = list(background_metrics(canary))
    if rollout is not None and (step := current_step(rollout, canary)) and step.analysis:
        metrics += step.analysis.metrics
    wait = requeue_after(metrics, {r.name: r for r in results}, now, started)
    return wait.total_seconds() if wait is not None else None


def unmeasured(
    metrics: tuple[Metric, ...], results: tuple[MetricResult, ...], now: datetime
) -> tuple[MetricResult, ...]:
    """What the due metrics record when no Prometheus is configured: an Error each, so the step
    holds (and spec.strategy.canary.metricsOutage applies) as it would in an outage."""
    stamp = timestamp(now)
    prior = {r.name: r for r in results}
    return tuple(
        record(
            metric,
            prior.get(metric.name),
            Measurement(
                metric=metric.name,
                phase=MeasurementPhase.ERROR,
                message="no Prometheus configured (FILTERRELEASE_PROMETHEUS_URL)",
                started_at=stamp,
                finished_at=stamp,
            ),
        )
        for metric in metrics
    )


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
