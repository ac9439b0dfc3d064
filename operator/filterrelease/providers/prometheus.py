"""Prometheus: instant queries over its HTTP API, and the `istio` and `prometheus` metric
providers built on them.

The client is urllib in worker threads of its own (a small pool, so a slow Prometheus cannot
take the threads the Kubernetes adapter needs), with a timeout on every request. Queries are
POSTed as a form, as Prometheus allows, because a long list of pod names can outgrow a URL.

Providers never raise for what can be expected of a monitoring system: unreachable, slow,
answering 5xx, rejecting a query. Each becomes a Reading with phase Error and the reason, which
the analysis treats as "cannot measure" (hold), never as "the canary is bad".
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from filterrelease.core import promql, slo
from filterrelease.core.analysis import AnalysisTarget, MeasurementPhase, Reading
from filterrelease.core.analysis_spec import IstioProvider, PrometheusProvider
from filterrelease.core.condition import ConditionError, compile_condition

MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # an instant query for one number is a few hundred bytes
USER_AGENT = "filterrelease-analysis"


class PrometheusError(Exception):
    """A query could not be answered; the message is meant for the FilterRelease status."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    value: float


class PrometheusClient:
    def __init__(self, base_url: str, timeout: float = 10.0, *, max_workers: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="prometheus")
        self._opener = urllib.request.build_opener()

    def close(self) -> None:
        # Queries still in flight end by their own timeout; nothing waits for them.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def query(self, expr: str, at: datetime) -> list[Series]:
        """The instant query `expr` evaluated at `at`: one Series per element of the vector
        (a scalar is one Series without labels). PrometheusError on any failure."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._query, expr, at)

    async def value(self, expr: str, at: datetime) -> float | None:
        """The single number `expr` returns; None for an empty result; PrometheusError when
        it returns several series."""
        series = await self.query(expr, at)
        if not series:
            return None
        if len(series) > 1:
            raise PrometheusError(
                f"the query returned {len(series)} series; it must return one number "
                "(aggregate it with sum(), max() ...)"
            )
        return series[0].value

    # -- the blocking part -----------------------------------------------------------------

    def _query(self, expr: str, at: datetime) -> list[Series]:
        url = f"{self.base_url}/api/v1/query"
        form = urllib.parse.urlencode({"query": expr, "time": f"{at.timestamp():.3f}"})
        request = urllib.request.Request(  # noqa: S310  (the URL is the operator's setting)
            url,
            data=form.encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                raw = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            with err:
                detail = _api_error(err.read(64 * 1024))
            if err.code in (400, 422):
                raise PrometheusError(f"Prometheus rejected the query: {detail}") from err
            raise PrometheusError(
                f"Prometheus at {self.base_url} answered HTTP {err.code}: {detail}"
            ) from err
        except TimeoutError as err:
            raise PrometheusError(
                f"Prometheus at {self.base_url} did not answer within {self.timeout:g}s"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            if isinstance(reason, TimeoutError):
                raise PrometheusError(
                    f"Prometheus at {self.base_url} did not answer within {self.timeout:g}s"
                ) from err
            raise PrometheusError(
                f"Prometheus at {self.base_url} is unreachable: {reason}"
            ) from err
        if len(raw) > MAX_RESPONSE_BYTES:
            raise PrometheusError("the query's answer is too large; it must return one number")
        return _parse(raw)


def _api_error(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"{doc.get('errorType', 'error')}: {doc.get('error', '')}".strip()
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:200] or "no details"


def _number(value: Any) -> float:
    return float(value)  # the API sends "NaN", "+Inf" as strings, which float() reads


def _parse(raw: bytes) -> list[Series]:
    try:
        doc = json.loads(raw)
        if doc.get("status") != "success":
            raise PrometheusError(f"Prometheus answered an error: {_api_error(raw)}")
        data = doc["data"]
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return [Series({}, _number(result[1]))]
        if kind == "vector":
            return [Series(dict(s["metric"]), _number(s["value"][1])) for s in result]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise PrometheusError(f"Prometheus' answer is not its API's JSON: {err}") from err
    raise PrometheusError(f"the query returns a {kind}; it must return one number")


# -- providers ----------------------------------------------------------------------------------


def _error(err: Exception) -> Reading:
    return Reading(phase=MeasurementPhase.ERROR, message=str(err))


def measurement_window(
    target: AnalysisTarget, now: datetime, interval: timedelta, scrape_interval: timedelta
) -> timedelta:
    return promql.window(now - target.since, interval, scrape_interval)


async def _traffic(
    client: PrometheusClient, queries: promql.TrafficQueries, at: datetime, latency: bool
) -> slo.Traffic:
    asked = [client.value(queries.requests, at), client.value(queries.failed, at)]
    if latency:
        asked.append(client.value(queries.p99, at))
    values = await asyncio.gather(*asked)
    p99 = values[2] if latency else None
    return slo.Traffic(requests=values[0] or 0.0, failed=values[1] or 0.0, p99_ms=p99)


async def measure_istio(
    client: PrometheusClient,
    spec: IstioProvider,
    target: AnalysisTarget,
    *,
    now: datetime,
    interval: timedelta,
    scrape_interval: timedelta,
) -> Reading:
    """Istio's SLOs on the canary pods against the stable pods (core/slo.py judges)."""
    if not target.canary_pods:
        return Reading(phase=MeasurementPhase.INCONCLUSIVE, message="no canary pods to measure")
    window = measurement_window(target, now, interval, scrape_interval)
    latency = spec.latency_p99 is not None
    ns = target.namespace
    try:
        canary_q = promql.traffic_queries(ns, target.canary_pods, window)
        # The stable pods are measured too, relative bound or not: their value is the baseline
        # dashboards plot the canary against.
        if target.stable_pods:
            stable_q = promql.traffic_queries(ns, target.stable_pods, window)
            canary, stable = await asyncio.gather(
                _traffic(client, canary_q, now, latency), _traffic(client, stable_q, now, latency)
            )
        else:
            canary, stable = await _traffic(client, canary_q, now, latency), None
    except PrometheusError as err:
        return _error(err)
    return slo.judge(spec, canary, stable, window)


async def measure_query(
    client: PrometheusClient,
    spec: PrometheusProvider,
    target: AnalysisTarget,
    *,
    now: datetime,
    interval: timedelta,
    scrape_interval: timedelta,
) -> Reading:
    """A user's templated query, judged by its successCondition.

    No data is Inconclusive (a canary without traffic, or a query that selects nothing). NaN
    (0/0: nothing to divide) satisfies only a condition that says so (isNaN(result)), and is
    otherwise Inconclusive, not Failed: it means no data, not bad data."""
    window = measurement_window(target, now, interval, scrape_interval)
    try:
        expr = promql.render_template(
            spec.query,
            namespace=target.namespace,
            canary_pods=target.canary_pods,
            stable_pods=target.stable_pods,
            interval=window,
            workload_selector=target.workload_selector,
        )
        condition = compile_condition(spec.success_condition)
        # A query about the canary pods asked of the stable pods: the baseline dashboards plot.
        twin = None
        if "canary_pods" in spec.query and target.stable_pods:
            twin = promql.render_template(
                spec.query,
                namespace=target.namespace,
                canary_pods=target.stable_pods,
                stable_pods=target.stable_pods,
                interval=window,
                workload_selector=target.workload_selector,
            )
        value, baseline = await asyncio.gather(
            client.value(expr, now), _baseline(client, twin, now)
        )
    except (promql.TemplateError, ConditionError, PrometheusError) as err:
        return _error(err)
    return _judged(spec, condition, value).model_copy(update={"baseline": baseline})


async def _baseline(client: PrometheusClient, expr: str | None, now: datetime) -> float | None:
    """The stable pods' value; None when there is none (it never decides anything)."""
    if expr is None:
        return None
    try:
        value = await client.value(expr, now)
    except PrometheusError:
        return None
    return None if value is None or math.isnan(value) else value


def _judged(
    spec: PrometheusProvider, condition: Callable[[float], bool], value: float | None
) -> Reading:
    if value is None:
        return Reading(phase=MeasurementPhase.INCONCLUSIVE, message="the query returned no data")
    shown = f"{value:.6g}"
    if condition(value):
        return Reading(
            phase=MeasurementPhase.SUCCESSFUL,
            value=value,
            message=f"result {shown} satisfies {spec.success_condition!r}",
        )
    if math.isnan(value):
        return Reading(
            phase=MeasurementPhase.INCONCLUSIVE,
            message=f"the query returned NaN (no data?); {spec.success_condition!r} is not met",
        )
    return Reading(
        phase=MeasurementPhase.FAILED,
        value=value,
        message=f"result {shown} does not satisfy {spec.success_condition!r}",
    )
