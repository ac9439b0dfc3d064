"""The `proxyLogs` provider: lines of the canary pods' istio-proxy logs that match patterns.

Logs come through an injected reader (kube/podlogs.py has the real one: the pods/log API), so
this module needs no Kubernetes client. The reader returns the lines a container logged since a
moment, and raises, with a readable message, when it cannot.

Each measurement reads the last interval of the logs, never before `since`:
`max(since, now - interval)`. maxCount is therefore "matching lines tolerated per interval".
A line that matches several patterns counts once. Patterns are Python regular expressions,
searched anywhere in the line; matching runs in a worker thread, since logs can be long.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from filterrelease.core.analysis import AnalysisTarget, MeasurementPhase, Reading
from filterrelease.core.analysis_spec import ProxyLogsProvider

CONTAINER = "istio-proxy"
READ_CONCURRENCY = 4  # pods whose logs are read at once, per measurement
QUOTE_CHARS = 160  # of the first matching line, quoted in the message


class LogReader(Protocol):
    async def __call__(
        self, namespace: str, pod: str, container: str, since: datetime
    ) -> Sequence[str]: ...


@dataclass(frozen=True)
class LogScan:
    count: int  # matching lines, all pods together
    first: str | None  # "<pod>: <the first matching line>"
    errors: tuple[str, ...]  # "<pod>: <why its log could not be read>"


def _matches(lines: Sequence[str], patterns: Sequence[re.Pattern[str]]) -> tuple[int, str | None]:
    count, first = 0, None
    for line in lines:
        if any(p.search(line) for p in patterns):
            count += 1
            first = first if first is not None else line
    return count, first


async def scan(
    read_log: LogReader,
    namespace: str,
    pods: Sequence[str],
    since: datetime,
    patterns: Sequence[re.Pattern[str]],
    *,
    container: str = CONTAINER,
) -> LogScan:
    """Count matching lines in each pod's log since `since`; never raises for a log that
    cannot be read (it is listed in `errors`)."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(pod: str) -> tuple[int, str | None, str | None]:
        async with gate:
            try:
                lines = await read_log(namespace, pod, container, since)
            except Exception as err:  # the reader's failures are expected: pod gone, API down
                return 0, None, f"{pod}: {err}"
        count, first = await asyncio.to_thread(_matches, lines, patterns)
        return count, (f"{pod}: {first.strip()}" if first is not None else None), None

    found = await asyncio.gather(*(one(p) for p in sorted(pods)))
    return LogScan(
        count=sum(c for c, _, _ in found),
        first=next((f for _, f, _ in found if f is not None), None),
        errors=tuple(e for _, _, e in found if e is not None),
    )


def quote(line: str) -> str:
    return line if len(line) <= QUOTE_CHARS else line[: QUOTE_CHARS - 1] + "…"


def cannot_read(errors: Sequence[str], container: str = CONTAINER) -> str:
    return f"cannot read the {container} log of " + "; ".join(errors)


async def measure_proxy_logs(
    read_log: LogReader,
    spec: ProxyLogsProvider,
    target: AnalysisTarget,
    *,
    now: datetime,
    interval: timedelta,
) -> Reading:
    if not target.canary_pods:
        return Reading(phase=MeasurementPhase.INCONCLUSIVE, message="no canary pods to read")
    start = max(target.since, now - interval)
    patterns = [re.compile(p) for p in spec.patterns]
    found = await scan(read_log, target.namespace, target.canary_pods, start, patterns)
    pods = len(target.canary_pods)
    counted = f"{found.count} matching line(s) in {pods} canary pod(s), {spec.max_count} tolerated"
    if found.count > spec.max_count:
        first = f": {quote(found.first)}" if found.first else ""
        return Reading(phase=MeasurementPhase.FAILED, value=found.count, message=counted + first)
    if found.errors:
        return Reading(phase=MeasurementPhase.ERROR, message=cannot_read(found.errors))
    return Reading(phase=MeasurementPhase.SUCCESSFUL, value=found.count, message=counted)
