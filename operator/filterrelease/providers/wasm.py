"""The `wasm` fast-fail provider: any sign, on the canary pods, that the new module cannot be
fetched, converted or run fails the measurement at once.

Signals, all restricted to the canary pods:
  * istio-agent's counters (labelled by pod through the scrape job), what they gained after
    `since` including series that first appeared after it (core/promql.increase_after):
    istio_agent_wasm_remote_fetch_count{result!="success"} and
    istio_agent_wasm_config_conversion_count{result!~"success|no_remote_load"};
  * lines of the istio-proxy log (istio-agent and Envoy share it) in the last interval that a
    broken filter produces; see LOG_PATTERNS.
Envoy has no counter for a crashed VM (wasm.*.created/active only; FAIL_RELOAD's vm_reload_*
counters are named after the plugin), so a crash is found by its log lines here and by its
503s (`wasm_fail_stream`) in the istio provider's success rate. `pilot_total_xds_rejects` is
istiod's, without pod labels, so it cannot be attributed to the canary.

A definite failure signal wins over an unavailable one: a panic in the logs fails the
measurement even while Prometheus is down. Without a failure, any source that could not be
read makes the measurement Error (nothing was proven healthy).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta

from filterrelease.core import promql
from filterrelease.core.analysis import AnalysisTarget, MeasurementPhase, Reading
from filterrelease.providers.prometheus import PrometheusClient, PrometheusError
from filterrelease.providers.proxylogs import LogReader, LogScan, cannot_read, quote, scan

# Lines a broken filter leaves in the istio-proxy log, from the programs that write them.
LOG_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # istio-agent (pkg/wasm/convert.go): the module could not be fetched
        r"cannot fetch Wasm module",
        # Envoy, source/extensions/common/wasm: a VM that failed, a plugin that did not load,
        # start or accept its configuration ("Failed to configure base Wasm plugin")
        r"Wasm VM failed",
        r"Plugin configured to fail closed failed to load",
        r"(?i)failed to (?:load|configure|start|initialize|create|clone)\b.*\bwasm",
        # proxy-wasm-cpp-host: a trap in any callback (panic, abort, out of bounds ...)
        r"Function: proxy_on_\w+ failed",
        # the module's own dying words: Rust's panic message, Go's runtime panic/fatal error
        r"panicked at",
        r"wasm log[^:]*: (?:panic|fatal error): ",
    )
)


async def measure_wasm(
    client: PrometheusClient,
    read_log: LogReader,
    target: AnalysisTarget,
    *,
    now: datetime,
    interval: timedelta,
) -> Reading:
    if not target.canary_pods:
        return Reading(phase=MeasurementPhase.SUCCESSFUL, message="no canary pods yet")
    # Counters: what they gained after `since`, never what they held before it.
    queries = promql.wasm_queries(target.namespace, target.canary_pods, target.since)

    async def counters() -> tuple[float, float] | PrometheusError:
        try:
            fetch, conversion = await asyncio.gather(
                client.value(queries.fetch_failures, now),
                client.value(queries.conversion_failures, now),
            )
        except PrometheusError as err:
            return err
        return fetch or 0.0, conversion or 0.0

    log_start = max(target.since, now - interval)
    counted, logs = await asyncio.gather(
        counters(), scan(read_log, target.namespace, target.canary_pods, log_start, LOG_PATTERNS)
    )
    return _verdict(counted, logs)


def _verdict(counted: tuple[float, float] | PrometheusError, logs: LogScan) -> Reading:
    failures: list[str] = []
    total = 0.0
    if not isinstance(counted, PrometheusError):
        fetch, conversion = counted
        if fetch > 0:
            failures.append(f"{fetch:.0f} failed module fetch(es)")
        if conversion > 0:
            failures.append(f"{conversion:.0f} failed Wasm config conversion(s)")
        total += fetch + conversion
    if logs.count:
        first = quote(logs.first) if logs.first else ""
        failures.append(f"{logs.count} broken-filter log line(s), first {first}")
        total += logs.count
    if failures:
        return Reading(
            phase=MeasurementPhase.FAILED,
            value=total,
            message="on the canary pods: " + "; ".join(failures),
        )
    problems = [str(counted)] if isinstance(counted, PrometheusError) else []
    if logs.errors:
        problems.append(cannot_read(logs.errors))
    if problems:
        return Reading(phase=MeasurementPhase.ERROR, message="; ".join(problems))
    return Reading(
        phase=MeasurementPhase.SUCCESSFUL,
        value=0.0,
        message="no failed fetches, conversions or broken-filter log lines on the canary pods",
    )
