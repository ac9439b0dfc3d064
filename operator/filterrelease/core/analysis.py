"""Canary analysis: the metric spec, measurements, and the verdicts drawn from them. Pure.

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
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from filterrelease.core.condition import validate_condition
from filterrelease.core.duration import format_duration, parse_duration
from filterrelease.core.promql import template_problem
from filterrelease.core.timestamps import parse_timestamp, timestamp

DEFAULT_INTERVAL = timedelta(seconds=30)
# A wasm guard is measured at every reconcile; the state machine should reconcile at least this
# often while one runs (see requeue_after).
WASM_POLL = timedelta(seconds=10)
MAX_MEASUREMENTS = 10  # kept per metric in the status: enough to see a trend, small enough
MAX_MESSAGE = 256  # characters of a measurement's message kept in the status
_DURATION = r"^([0-9]+(ms|s|m|h))+$"


class _Spec(BaseModel):
    # Unknown fields are an error: nothing in a spec is silently ignored.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class _Status(BaseModel):
    # Status written by a newer operator must not break an older one (as core/status.py).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


# -- the spec ---------------------------------------------------------------------------------


class SuccessRate(_Spec):
    min_percent: float | None = Field(default=None, ge=0, le=100)
    max_drop_percent: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _some_bound(self) -> SuccessRate:
        if self.min_percent is None and self.max_drop_percent is None:
            raise ValueError("successRate needs minPercent, maxDropPercent or both")
        return self


class LatencyP99(_Spec):
    max_milliseconds: float | None = Field(default=None, ge=0)
    max_increase_percent: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> LatencyP99:
        if self.max_milliseconds is None and self.max_increase_percent is None:
            raise ValueError("latencyP99 needs maxMilliseconds, maxIncreasePercent or both")
        return self


class IstioProvider(_Spec):
    success_rate: SuccessRate | None = None
    latency_p99: LatencyP99 | None = None
    min_requests: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _something_to_check(self) -> IstioProvider:
        if self.success_rate is None and self.latency_p99 is None and self.min_requests is None:
            raise ValueError("istio needs successRate, latencyP99 or minRequests")
        return self


class PrometheusProvider(_Spec):
    query: str = Field(min_length=1)
    success_condition: str = Field(min_length=1)

    @field_validator("success_condition")
    @classmethod
    def _condition_parses(cls, value: str) -> str:
        problem = validate_condition(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("query")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        problem = template_problem(value)
        if problem is not None:
            raise ValueError(f"query: {problem}")
        return value


class WasmProvider(_Spec):
    pass


class ProxyLogsProvider(_Spec):
    # Python regular expressions (re), searched anywhere in a line.
    patterns: tuple[str, ...] = Field(min_length=1)
    max_count: int = Field(default=0, ge=0)

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"pattern {pattern!r} is not a regular expression: {err}") from err
        return value


class ProviderKind(StrEnum):
    ISTIO = "istio"
    PROMETHEUS = "prometheus"
    WASM = "wasm"
    PROXY_LOGS = "proxyLogs"


class MetricProvider(_Spec):
    istio: IstioProvider | None = None
    prometheus: PrometheusProvider | None = None
    wasm: WasmProvider | None = None
    proxy_logs: ProxyLogsProvider | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> MetricProvider:
        chosen = [self.istio, self.prometheus, self.wasm, self.proxy_logs]
        if sum(p is not None for p in chosen) != 1:
            raise ValueError(
                "a metric provider must have exactly one of istio, prometheus, wasm or proxyLogs"
            )
        return self

    @property
    def kind(self) -> ProviderKind:
        if self.istio is not None:
            return ProviderKind.ISTIO
        if self.prometheus is not None:
            return ProviderKind.PROMETHEUS
        if self.wasm is not None:
            return ProviderKind.WASM
        return ProviderKind.PROXY_LOGS


class Metric(_Spec):
    name: str = Field(min_length=1, max_length=63)
    interval: str | None = Field(default=None, pattern=_DURATION)
    count: int | None = Field(default=None, ge=1)
    failure_limit: int = Field(default=0, ge=0)
    inconclusive_limit: int = Field(default=0, ge=0)
    provider: MetricProvider

    @model_validator(mode="after")
    def _limits_reachable(self) -> Metric:
        if self.interval is not None and parse_duration(self.interval) < timedelta(seconds=1):
            raise ValueError("interval must be at least 1s")
        # With count <= a limit, that many measurements can never exceed it: the limit would
        # be dead and the metric could only succeed.
        if self.count is not None and self.provider.wasm is None:
            if self.count <= self.failure_limit:
                raise ValueError("count must be greater than failureLimit")
            if self.count <= self.inconclusive_limit:
                raise ValueError("count must be greater than inconclusiveLimit")
        return self

    @property
    def interval_delta(self) -> timedelta:
        return parse_duration(self.interval) if self.interval else DEFAULT_INTERVAL

    @property
    def is_wasm(self) -> bool:
        return self.provider.wasm is not None

    @property
    def effective_count(self) -> int | None:
        """Measurements to take, or None for a guard that runs until the analysis ends."""
        if self.count is not None:
            return self.count
        if self.interval is None and not self.is_wasm:
            return 1  # Argo: neither count nor interval means one measurement
        return None

    @property
    def effective_failure_limit(self) -> int:
        # One sign of a broken module is enough: fetch failures and VM crashes do not
        # get better by waiting.
        return 0 if self.is_wasm else self.failure_limit


class TemplateRef(_Spec):
    name: str = Field(min_length=1, max_length=253)


class AnalysisSpec(_Spec):
    templates: tuple[TemplateRef, ...] = ()
    metrics: tuple[Metric, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> AnalysisSpec:
        seen: set[str] = set()
        for metric in self.metrics:
            if metric.name in seen:
                raise ValueError(f"metric name {metric.name!r} is used twice")
            seen.add(metric.name)
        return self


def step_analysis_problem(metrics: Iterable[Metric]) -> str | None:
    """Why an analysis *step* with these metrics could never finish, or None.

    Guards (metrics without count) never succeed on their own, so a step needs at least one
    counted metric. A background analysis does not: it runs until the rollout ends."""
    metrics = tuple(metrics)
    if metrics and all(m.effective_count is None for m in metrics):
        return (
            "an analysis step needs at least one metric with a count (or with neither count "
            "nor interval, measured once); metrics without count only guard the step"
        )
    return None


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
    message: str = ""


class Measurement(_Status):
    metric: str
    phase: MeasurementPhase
    value: float | None = None
    message: str = ""
    started_at: str
    finished_at: str

    @field_validator("value")
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
