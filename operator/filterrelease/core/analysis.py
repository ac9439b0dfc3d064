"""Canary analysis: measurements and the verdicts drawn from them. Pure. (The metrics' spec is
core/analysis_spec.py.)

The semantics are Argo Rollouts' (`assessMetricStatus`), with two deliberate differences:

* Scheduling. A metric is first measured one `interval` after its analysis starts (so the first
  measurement sees a full interval of canary traffic; Argo needs `initialDelay` for that), then
  one interval after the previous measurement finished. The `wasm` provider is different: it
  is measured at every reconcile, so a module that cannot be fetched or crashes fails the
  analysis at once; a Successful or Error measurement that repeats the previous one is
  recorded at most once an interval (recording each would rewrite the status at every
  reconcile and make the status write itself trigger the next reconcile); a change of phase
  is recorded at once.
* Guards. A metric without `count` runs until its analysis ends. Argo would then never finish
  an analysis step; here such a metric is a guard: it can fail or hold the analysis but does
  not keep it from succeeding once every counted metric has. As in Argo, a metric with
  neither `count` nor `interval` is measured once (except `wasm`, which is always a guard
  unless it has a count).

Measurement phases: Successful, Failed, Inconclusive (the data cannot decide: too little
traffic, no baseline), and Error (the measurement could not be taken: Prometheus unreachable,
a query that fails). Error measurements are not failures and do not count toward `count`.

Time is always a parameter; timestamps are stored as core/timestamps.py writes them, like the
rest of the status.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.alias_generators import to_camel

from filterrelease.core.analysis_spec import Metric
from filterrelease.core.duration import format_duration
from filterrelease.core.timestamps import parse_timestamp, timestamp

# A wasm guard is measured at every reconcile; the state machine should reconcile at least this
# often while one runs (see requeue_after).
WASM_POLL = timedelta(seconds=10)
MAX_MEASUREMENTS = 10  # kept per metric in the status: enough to see a trend, small enough
MAX_MESSAGE = 256  # characters of a measurement's message kept in the status


class _Status(BaseModel):
    # Status written by a newer operator must not break an older one (as core/status.py).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


# -- measurements and results -----------------------------------------------------------------


class MeasurementPhase(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class AnalysisPhase(StrEnum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


TERMINAL = frozenset({AnalysisPhase.SUCCESSFUL, AnalysisPhase.FAILED, AnalysisPhase.INCONCLUSIVE})


class Reading(BaseModel):
    """What a provider found, before it is stamped with a metric name and times."""

    model_config = ConfigDict(frozen=True)
    phase: MeasurementPhase
    value: float | None = None
    # The same quantity on the stable pods, where the provider measures them: dashboards plot
    # canary against stable (it only decides where a relative bound asks for it).
    baseline: float | None = None
    message: str = ""


class Measurement(_Status):
    metric: str
    phase: MeasurementPhase
    value: float | None = None  # on the canary pods
    baseline: float | None = None  # on the stable pods
    message: str = ""
    started_at: str
    finished_at: str

    @field_validator("value", "baseline")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        # JSON has no NaN or Infinity; a missing value says the same thing.
        return value if value is None or math.isfinite(value) else None

    @field_validator("message")
    @classmethod
    def _short(cls, value: str) -> str:
        return value if len(value) <= MAX_MESSAGE else value[: MAX_MESSAGE - 1] + "…"


def measurement(
    metric: Metric, reading: Reading, started: datetime, finished: datetime
) -> Measurement:
    return Measurement(
        metric=metric.name,
        phase=reading.phase,
        value=reading.value,
        baseline=reading.baseline,
        message=reading.message,
        started_at=timestamp(started),
        finished_at=timestamp(finished),
    )


class MetricResult(_Status):
    """One metric's progress, as kept in the FilterRelease status."""

    name: str
    phase: AnalysisPhase = AnalysisPhase.RUNNING
    count: int = 0  # Successful + Failed + Inconclusive measurements (Errors do not count)
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutive_error: int = 0
    measurements: tuple[Measurement, ...] = ()  # the last MAX_MEASUREMENTS
    message: str = ""


# -- scheduling -------------------------------------------------------------------------------


def next_due(
    metric: Metric, result: MetricResult | None, step_started: datetime
) -> datetime | None:
    """When the metric is next measured; None once its result is final. A wasm metric is
    due at every reconcile: its next_due is always `step_started`."""
    if result is not None and result.phase in TERMINAL:
        return None
    if metric.is_wasm:
        return step_started
    if result is None or not result.measurements:
        return step_started + metric.interval_delta
    return parse_timestamp(result.measurements[-1].finished_at) + metric.interval_delta


def is_due(
    metric: Metric, result: MetricResult | None, now: datetime, step_started: datetime
) -> bool:
    due = next_due(metric, result, step_started)
    return due is not None and now >= due


def requeue_after(
    metrics: Iterable[Metric],
    results: Mapping[str, MetricResult],
    now: datetime,
    step_started: datetime,
) -> timedelta | None:
    """How long until some metric is due (zero if one is now; at most WASM_POLL while a wasm
    metric runs); None when every metric is final."""
    waits: list[timedelta] = []
    for metric in metrics:
        due = next_due(metric, results.get(metric.name), step_started)
        if due is None:
            continue
        waits.append(WASM_POLL if metric.is_wasm else max(due - now, timedelta(0)))
    return min(waits) if waits else None


# -- recording and assessing ------------------------------------------------------------------


def record(metric: Metric, result: MetricResult | None, new: Measurement) -> MetricResult:
    """The result with `new` counted in (Argo's counters), and its phase re-assessed."""
    current = result if result is not None else MetricResult(name=metric.name)
    if current.phase in TERMINAL:
        return current  # a final verdict does not change
    last = current.measurements[-1] if current.measurements else None
    if (
        metric.is_wasm
        and last is not None
        and new.phase == last.phase
        and new.phase in (MeasurementPhase.SUCCESSFUL, MeasurementPhase.ERROR)
        and parse_timestamp(new.finished_at)
        < parse_timestamp(last.finished_at) + metric.interval_delta
    ):
        return current  # the same news again: recorded once an interval (a change at once)
    counts = {
        "successful": current.successful,
        "failed": current.failed,
        "inconclusive": current.inconclusive,
        "error": current.error,
    }
    counts[new.phase.value.lower()] += 1
    counted = new.phase != MeasurementPhase.ERROR
    updated = current.model_copy(
        update={
            **counts,
            "count": current.count + counted,
            "consecutive_error": 0 if counted else current.consecutive_error + 1,
            "measurements": (*current.measurements, new)[-MAX_MEASUREMENTS:],
        }
    )
    phase = assess(metric, updated)
    return updated.model_copy(update={"phase": phase, "message": _summary(metric, updated, phase)})


def assess(metric: Metric, result: MetricResult | None) -> AnalysisPhase:
    """The metric's phase from its counters (Argo's assessMetricStatus, without its
    consecutiveErrorLimit: an Error holds, it never ends the metric)."""
    if result is None or not result.measurements:
        return AnalysisPhase.RUNNING
    if result.failed > metric.effective_failure_limit:
        return AnalysisPhase.FAILED
    if result.inconclusive > metric.inconclusive_limit:
        return AnalysisPhase.INCONCLUSIVE
    count = metric.effective_count
    if count is not None and result.count >= count:
        return AnalysisPhase.SUCCESSFUL
    if result.consecutive_error > 0:
        return AnalysisPhase.ERROR
    return AnalysisPhase.RUNNING


# Worst wins. Error ranks below Failed and Inconclusive and above Running:
#  * above Running (and Successful): a metric that cannot be measured says nothing about the
#    canary, so an unreachable Prometheus must hold the rollout and never let it be promoted;
#  * below Failed and Inconclusive: it must not hide a real verdict from another provider
#    (a panic found in the proxy logs still rolls back while Prometheus is down), and by
#    itself it never rolls back: an outage of the monitoring is not evidence against the
#    canary. Error is not final: the metric keeps being measured and recovers.
_SEVERITY = {
    AnalysisPhase.SUCCESSFUL: 0,
    AnalysisPhase.RUNNING: 1,
    AnalysisPhase.ERROR: 2,
    AnalysisPhase.INCONCLUSIVE: 3,
    AnalysisPhase.FAILED: 4,
}


def assess_all(metrics: Iterable[Metric], results: Mapping[str, MetricResult]) -> AnalysisPhase:
    """The analysis' phase: the worst of its metrics'. A guard (no count) that is still
    Running counts as Successful here: it can fail or hold the analysis, not prolong it. An
    analysis of guards only stays Running."""
    phases: list[AnalysisPhase] = []
    counted = False
    for metric in metrics:
        phase = assess(metric, results.get(metric.name))
        if metric.effective_count is None and phase == AnalysisPhase.RUNNING:
            continue
        counted = counted or metric.effective_count is not None
        phases.append(phase)
    if not counted:
        phases.append(AnalysisPhase.RUNNING)
    return max(phases, key=_SEVERITY.__getitem__)


def _summary(metric: Metric, result: MetricResult, phase: AnalysisPhase) -> str:
    last = result.measurements[-1].message if result.measurements else ""
    if phase == AnalysisPhase.FAILED:
        limit = metric.effective_failure_limit
        why = f"{result.failed} failed measurement(s), more than the {limit} tolerated"
    elif phase == AnalysisPhase.INCONCLUSIVE:
        why = (
            f"{result.inconclusive} inconclusive measurement(s), more than the "
            f"{metric.inconclusive_limit} tolerated"
        )
    elif phase == AnalysisPhase.ERROR:
        why = f"{result.consecutive_error} measurement(s) in a row could not be taken"
    elif phase == AnalysisPhase.SUCCESSFUL:
        why = f"{result.count} measurement(s) taken"
    else:
        total = metric.effective_count
        every = format_duration(metric.interval_delta)
        why = f"{result.count}/{total} measurements" if total else f"guarding every {every}"
    text = f"{why}: {last}" if last else why
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


class AnalysisTarget(BaseModel):
    """What is measured: the canary pods against the stable pods of one workload, counting
    only traffic since `since` (when the canary pods got the canary version: when the
    canary WasmPlugin was applied to them)."""

    model_config = ConfigDict(frozen=True)
    namespace: str
    workload_selector: dict[str, str]
    canary_pods: tuple[str, ...]
    stable_pods: tuple[str, ...]
    since: datetime

    @field_validator("since")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("since must carry a time zone")
        return value
