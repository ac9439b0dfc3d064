"""Canary analysis, the spec: which metrics a step or the background measures, from which
provider, how often, how many times, and what counts as success. Pure.

What the measurements mean (scheduling, counting, verdicts) is core/analysis.py's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from filterrelease.core.condition import validate_condition
from filterrelease.core.duration import parse_duration
from filterrelease.core.promql import template_problem

DEFAULT_INTERVAL = timedelta(seconds=30)
_DURATION = r"^([0-9]+(ms|s|m|h))+$"


class _Spec(BaseModel):
    # Unknown fields are an error: nothing in a spec is silently ignored.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
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
