"""The analysis shell: take the measurements that are due, record them, return the results.

    analyzer = Analyzer(settings.prometheus_url, PodLogs(api_client), timeout=10)
    results = await analyzer.measure_due(metrics, results_by_name, target, now, step_started)
    ...
    analyzer.close()

Which metrics are due, how a measurement is counted and what the results mean is decided by
core/analysis.py; this module only runs providers. Due metrics are measured concurrently, at
most `concurrency` at a time, each within `timeout` seconds: a provider that is slower becomes
an Error measurement ("timed out"), so one slow source never holds up the others or the
reconcile for longer than that. A provider that raises (a bug) is an Error measurement too:
the analysis holds instead of the reconcile crashing.

A measurement starts at `now` (the caller's clock, as the core wants) and finishes `now` plus
the time it took, measured with the monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from filterrelease.core.analysis import (
    AnalysisTarget,
    MeasurementPhase,
    MetricResult,
    Reading,
    is_due,
    measurement,
    record,
)
from filterrelease.core.analysis_spec import Metric
from filterrelease.providers.prometheus import PrometheusClient, measure_istio, measure_query
from filterrelease.providers.proxylogs import LogReader, measure_proxy_logs
from filterrelease.providers.wasm import measure_wasm

log = logging.getLogger(__name__)

# Istio's Prometheus scrapes every 15 s by default (samples/addons/prometheus.yaml).
DEFAULT_SCRAPE_INTERVAL = timedelta(seconds=15)


class Analyzer:
    def __init__(
        self,
        prometheus_url: str,
        read_log: LogReader,
        timeout: float = 10.0,
        *,
        scrape_interval: timedelta = DEFAULT_SCRAPE_INTERVAL,
        concurrency: int = 4,
    ) -> None:
        self._prometheus = PrometheusClient(prometheus_url, timeout, max_workers=concurrency)
        self._read_log = read_log
        self._timeout = timeout
        self._scrape_interval = scrape_interval
        self._concurrency = concurrency

    def close(self) -> None:
        self._prometheus.close()

    async def measure_due(
        self,
        metrics: Sequence[Metric],
        results: Mapping[str, MetricResult],
        target: AnalysisTarget,
        now: datetime,
        step_started: datetime,
    ) -> tuple[MetricResult, ...]:
        """Every metric's result, in the order of `metrics`: the due ones measured and
        recorded, the others as they were (a fresh Running result for one never measured)."""
        gate = asyncio.Semaphore(self._concurrency)

        async def one(metric: Metric) -> MetricResult:
            previous = results.get(metric.name)
            if not is_due(metric, previous, now, step_started) or self._too_early(
                metric, target, now
            ):
                return previous if previous is not None else MetricResult(name=metric.name)
            async with gate:
                started = time.monotonic()
                reading = await self.measure(metric, target, now)
                took = timedelta(seconds=time.monotonic() - started)
            return record(metric, previous, measurement(metric, reading, now, now + took))

        return tuple(await asyncio.gather(*(one(m) for m in metrics)))

    def _too_early(self, metric: Metric, target: AnalysisTarget, now: datetime) -> bool:
        """A traffic window is at least two scrapes long; until the canary pods have run the
        canary version that long, it would reach back to the version before (on the same
        pods) and judge the canary by its traffic. The Wasm guard is exempt: it compares its
        counters with their values at `since` exactly."""
        return not metric.is_wasm and now - target.since < 2 * self._scrape_interval

    async def measure(self, metric: Metric, target: AnalysisTarget, now: datetime) -> Reading:
        """One measurement of `metric`; never raises."""
        try:
            return await asyncio.wait_for(self._provider(metric, target, now), self._timeout)
        except TimeoutError:
            kind, limit = metric.provider.kind, self._timeout
            return Reading(
                phase=MeasurementPhase.ERROR,
                message=f"the {kind} measurement timed out after {limit:g}s",
            )
        except Exception as err:
            log.exception("metric %s: the %s provider failed", metric.name, metric.provider.kind)
            return Reading(
                phase=MeasurementPhase.ERROR,
                message=f"the {metric.provider.kind} provider failed: {type(err).__name__}: {err}",
            )

    async def _provider(self, metric: Metric, target: AnalysisTarget, now: datetime) -> Reading:
        p = metric.provider
        interval, scrape = metric.interval_delta, self._scrape_interval
        prom, read_log = self._prometheus, self._read_log
        if p.istio is not None:
            return await measure_istio(
                prom, p.istio, target, now=now, interval=interval, scrape_interval=scrape
            )
        if p.prometheus is not None:
            return await measure_query(
                prom, p.prometheus, target, now=now, interval=interval, scrape_interval=scrape
            )
        if p.wasm is not None:
            return await measure_wasm(prom, read_log, target, now=now, interval=interval)
        assert p.proxy_logs is not None  # MetricProvider has exactly one
        return await measure_proxy_logs(read_log, p.proxy_logs, target, now=now, interval=interval)
