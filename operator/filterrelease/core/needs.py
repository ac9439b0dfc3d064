"""What a decision on a running rollout needs from the outside, before it is made: gate
answers and measurements; when the next one is due; and what a metric records when there is
no Prometheus to ask. Pure: the shell fetches, the core decides."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from filterrelease.core.analysis import (
    Measurement,
    MeasurementPhase,
    MetricResult,
    record,
    requeue_after,
)
from filterrelease.core.analysis_spec import Metric
from filterrelease.core.canary import current_step
from filterrelease.core.hooks import HookType
from filterrelease.core.spec import Canary
from filterrelease.core.status import RolloutStatus
from filterrelease.core.timestamps import parse_timestamp, timestamp

FAST_FAIL = Metric.model_validate({"name": "wasm-fast-fail", "provider": {"wasm": {}}})


# The shortest time between two measurements of one metric (see _not_just_measured).
MIN_GAP = 1.5


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


def rollout_needs(
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
