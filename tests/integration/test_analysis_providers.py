"""The analysis providers and the Analyzer against real servers: Debian's Prometheus scraping a
loopback exposition server whose counters the tests drive, an unreachable or silent
"Prometheus", and pod logs read through a real API server (kwok serves them from files).

Counters grow with time at a known rate while they are served (value = rate x seconds since
the test set them), so ratios over any window are known; tests wait for Prometheus by polling
its API with deadlines, never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from filterrelease.analysis import Analyzer
from filterrelease.core.analysis import AnalysisPhase, AnalysisTarget, MeasurementPhase, Reading
from filterrelease.core.analysis_spec import Metric, ProxyLogsProvider
from filterrelease.kube.api import load_api_client
from filterrelease.kube.podlogs import PodLogs
from filterrelease.providers.prometheus import PrometheusClient, measure_istio, measure_query
from filterrelease.providers.proxylogs import measure_proxy_logs
from filterrelease.providers.wasm import measure_wasm
from localcluster import LocalCluster
from localcluster.prometheus import Prometheus, file_sd_job
from meshagent.upstream import LoopbackServer
from meshtraffic.podlogs import (
    CONTAINER,
    cri_line,
    logs_manifest,
)
from tests.support.mesh import meshed_pod
from tests.support.polling import poll

pytestmark = [pytest.mark.integration]

SCRAPE = timedelta(seconds=1)
BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)
JOB = "exposition"


# -- a scrape target the tests control ------------------------------------------------------


class Exposition:
    """A loopback HTTP server serving Prometheus text: series whose labels carry namespace and
    pod themselves (scraped with honor_labels, like the mesh agent's endpoint)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (name, sorted labels) -> value at scrape time
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], Callable[[], float]] = {}
        exposition = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exposition.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = LoopbackServer(Handler, "exposition")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._series[(name, tuple(sorted(labels.items())))] = lambda: value

    def grow(self, name: str, per_second: float, **labels: str) -> None:
        """A counter from 0 growing at `per_second` from now on."""
        t0 = time.monotonic()
        with self._lock:
            self._series[(name, tuple(sorted(labels.items())))] = lambda: (
                per_second * (time.monotonic() - t0)
            )

    def requests(self, ns: str, pod: str, per_second: dict[int, float], ms: float = 3) -> None:
        """Istio's request metrics of one pod: requests per second by response code, every
        request taking `ms` milliseconds."""
        for code, rate in per_second.items():
            labels = {"namespace": ns, "pod": pod, "reporter": "destination"}
            self.grow("istio_requests_total", rate, response_code=str(code), **labels)
            for le in (*BUCKETS, "+Inf"):
                if le == "+Inf" or ms <= float(le):
                    self.grow(
                        "istio_request_duration_milliseconds_bucket",
                        rate,
                        le=str(le),
                        response_code=str(code),
                        **labels,
                    )

    def render(self) -> str:
        with self._lock:
            series = list(self._series.items())
        lines = []
        for (name, labels), value in sorted(series, key=lambda s: s[0]):
            inner = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{inner}}} {value()}")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def exposition() -> Iterator[Exposition]:
    server = Exposition()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_prometheus(workdir: Path, exposition: Exposition) -> Prometheus:
    """A Prometheus (not started) scraping the exposition server every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    targets = workdir / "targets.json"
    targets.write_text(json.dumps([{"targets": [exposition.address]}]))
    prom = Prometheus(
        workdir / "prometheus",
        workdir / "pods.json",
        scrape_interval="1s",
        extra_jobs=[file_sd_job(JOB, targets, honor_labels=True)],
    )
    return prom


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, exposition: Exposition
) -> Iterator[Prometheus]:
    with make_prometheus(tmp_path_factory.mktemp("analysis-prom"), exposition) as prom:
        prom.wait_for_targets(1, job=JOB, timeout=30)
        yield prom


_names = itertools.count()


@pytest.fixture
def ns() -> str:
    return f"a{next(_names)}"


def wait_scraped(prom: Prometheus, selector: str, samples: int = 4) -> None:
    """Until Prometheus holds `samples` scrapes of every series matching `selector`."""
    query = f"min(count_over_time({selector}[1m]))"
    poll(
        lambda: bool((r := prom.query(query)) and r[0].value >= samples) or None,
        timeout=30,
        what=f"{samples} scrapes of {selector}",
    )


def target(
    ns: str, canary: Sequence[str], stable: Sequence[str], since: datetime
) -> AnalysisTarget:
    return AnalysisTarget(
        namespace=ns,
        workload_selector={"app": "web"},
        canary_pods=tuple(canary),
        stable_pods=tuple(stable),
        since=since,
    )


def metric(provider: dict[str, Any], **fields: Any) -> Metric:
    return Metric.model_validate({"name": "m", "interval": "30s", "provider": provider, **fields})


async def no_logs(namespace: str, pod: str, container: str, since: datetime) -> Sequence[str]:
    return []


def istio(
    prom: Prometheus, spec: dict[str, Any], t: AnalysisTarget, now: datetime | None = None
) -> Reading:
    m = metric({"istio": spec})
    provider = m.provider.istio
    assert provider is not None

    async def run() -> Reading:
        client = PrometheusClient(prom.url, timeout=10)
        try:
            return await measure_istio(
                client,
                provider,
                t,
                now=now or datetime.now(UTC),
                interval=m.interval_delta,
                scrape_interval=SCRAPE,
            )
        finally:
            client.close()

    return asyncio.run(run())


def custom(prom_url: str, query: str, condition: str, t: AnalysisTarget) -> Reading:
    m = metric({"prometheus": {"query": query, "successCondition": condition}})
    assert m.provider.prometheus is not None
    spec = m.provider.prometheus

    async def run() -> Reading:
        client = PrometheusClient(prom_url, timeout=5)
        try:
            return await measure_query(
                client,
                spec,
                t,
                now=datetime.now(UTC),
                interval=m.interval_delta,
                scrape_interval=SCRAPE,
            )
        finally:
            client.close()

    return asyncio.run(run())


# -- istio ----------------------------------------------------------------------------------


def test_istio_success_rate_canary_against_stable(
    prometheus: Prometheus, exposition: Exposition, ns: str
) -> None:
    since = datetime.now(UTC)
    exposition.requests(ns, "web-c1", {200: 27, 503: 1, 403: 2})  # 90 %: 5xx and 403 fail
    exposition.requests(ns, "web-c2", {200: 10})  # a healthy canary pod
    exposition.requests(ns, "web-s1", {200: 30})
    exposition.requests(ns, "web-s2", {200: 19, 500: 1})  # 95 %
    wait_scraped(prometheus, f'istio_requests_total{{namespace="{ns}"}}')

    broken = target(ns, ["web-c1"], ["web-s1"], since)
    reading = istio(prometheus, {"successRate": {"minPercent": 99}}, broken)
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert reading.value == pytest.approx(90, abs=1)
    assert "is below 99%" in reading.message

    healthy = target(ns, ["web-c2"], ["web-s1"], since)
    reading = istio(prometheus, {"successRate": {"minPercent": 99}}, healthy)
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message
    assert reading.value == pytest.approx(100)
    # The stable pods are measured too, without a relative bound: the baseline dashboards plot.
    reading = istio(
        prometheus, {"successRate": {"minPercent": 1}}, target(ns, ["web-c1"], ["web-s2"], since)
    )
    assert reading.baseline == pytest.approx(95, abs=1)

    # Relative: 90 % is 10 points under stable web-s1's 100 %, but only 5 under web-s2's 95 %.
    drop = {"successRate": {"maxDropPercent": 6}}
    assert istio(prometheus, drop, broken).phase == MeasurementPhase.FAILED
    reading = istio(prometheus, drop, target(ns, ["web-c1"], ["web-s2"], since))
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message
    assert "(stable 95%)" in reading.message

    # Too little traffic, and a relative bound without stable pods: Inconclusive.
    reading = istio(prometheus, {"successRate": {"minPercent": 1}, "minRequests": 100_000}, healthy)
    assert reading.phase == MeasurementPhase.INCONCLUSIVE
    assert "fewer than the 100000 needed" in reading.message
    reading = istio(prometheus, drop, target(ns, ["web-c2"], [], since))
    assert reading.phase == MeasurementPhase.INCONCLUSIVE
    assert "no stable traffic" in reading.message
    # Pods that served nothing (or do not exist): Inconclusive, never a 100 % success rate.
    reading = istio(
        prometheus, {"successRate": {"minPercent": 99}}, target(ns, ["nope"], [], since)
    )
    assert reading.phase == MeasurementPhase.INCONCLUSIVE


def test_istio_latency_p99(prometheus: Prometheus, exposition: Exposition, ns: str) -> None:
    since = datetime.now(UTC)
    exposition.requests(ns, "slow", {200: 10}, ms=200)
    exposition.requests(ns, "fast", {200: 10}, ms=3)
    wait_scraped(prometheus, f'istio_request_duration_milliseconds_bucket{{namespace="{ns}"}}')

    slow = target(ns, ["slow"], ["fast"], since)
    reading = istio(prometheus, {"latencyP99": {"maxMilliseconds": 100}}, slow)
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert reading.value is not None
    assert 100 < reading.value <= 250  # interpolated in the (100, 250] bucket
    reading = istio(prometheus, {"latencyP99": {"maxIncreasePercent": 50}}, slow)
    assert reading.phase == MeasurementPhase.FAILED
    assert "above the stable pods'" in reading.message
    reading = istio(
        prometheus,
        {"latencyP99": {"maxIncreasePercent": 50}},
        target(ns, ["fast"], ["fast"], since),
    )
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message


# -- custom queries -------------------------------------------------------------------------

ERROR_RATIO = (
    'sum(rate(istio_requests_total{namespace="{{ namespace }}",pod=~"{{ canary_pods }}",'
    'response_code=~"5.."}[{{ interval }}])) or vector(0)) / '
    'sum(rate(istio_requests_total{namespace="{{ namespace }}",pod=~"{{ canary_pods }}"}'
    "[{{ interval }}]))"
)


def test_custom_query_templated_and_judged(
    prometheus: Prometheus, exposition: Exposition, ns: str
) -> None:
    since = datetime.now(UTC)
    # Pod names with regex metacharacters are matched literally.
    exposition.requests(ns, "web.1", {200: 9, 500: 1})
    exposition.requests(ns, "webx1", {200: 10})
    wait_scraped(prometheus, f'istio_requests_total{{namespace="{ns}"}}')
    query = "(" + ERROR_RATIO

    bad = target(ns, ["web.1"], [], since)
    reading = custom(prometheus.url, query, "result < 0.01", bad)
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert reading.value == pytest.approx(0.1, abs=0.02)
    good = target(ns, ["webx1"], [], since)
    reading = custom(prometheus.url, query, "result < 0.01", good)
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message
    assert reading.value == 0
    assert reading.baseline is None  # no stable pods to ask
    # With stable pods, the same query asked of them is the baseline; it decides nothing.
    reading = custom(
        prometheus.url, query, "result < 0.01", target(ns, ["webx1"], ["web.1"], since)
    )
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message
    assert reading.baseline == pytest.approx(0.1, abs=0.02)
    assert custom(prometheus.url, query, "result[0] >= 0 && result <= 1", bad).phase == (
        MeasurementPhase.SUCCESSFUL
    )

    # No data, NaN, several series, a bad query, a template the target cannot fill.
    nothing = target(ns, ["gone"], [], since)
    reading = custom(prometheus.url, f'sum(up{{namespace="{ns}-none"}})', "result == 1", nothing)
    assert (reading.phase, reading.message) == (
        MeasurementPhase.INCONCLUSIVE,
        "the query returned no data",
    )
    assert custom(prometheus.url, "0/0", "result < 1", bad).phase == MeasurementPhase.INCONCLUSIVE
    assert custom(prometheus.url, "0/0", "isNaN(result)", bad).phase == MeasurementPhase.SUCCESSFUL
    reading = custom(prometheus.url, f'istio_requests_total{{namespace="{ns}"}}', "result > 0", bad)
    assert reading.phase == MeasurementPhase.ERROR
    assert "series; it must return one number" in reading.message
    reading = custom(prometheus.url, "sum(", "result > 0", bad)
    assert reading.phase == MeasurementPhase.ERROR
    assert reading.message.startswith("Prometheus rejected the query: bad_data:")
    reading = custom(prometheus.url, 'up{x="{{ selector.tier }}"}', "result > 0", bad)
    assert reading.phase == MeasurementPhase.ERROR
    assert "no label 'tier'" in reading.message


# -- wasm fast-fail -------------------------------------------------------------------------


def wasm(prom: Prometheus | str, t: AnalysisTarget, read_log: Any = no_logs) -> Reading:
    """measure_wasm against `prom` (a Prometheus, or the URL of one)."""
    url = prom if isinstance(prom, str) else prom.url

    async def run() -> Reading:
        client = PrometheusClient(url, timeout=10)
        try:
            return await measure_wasm(
                client,
                read_log,
                t,
                now=datetime.now(UTC),
                interval=timedelta(seconds=30),
            )
        finally:
            client.close()

    return asyncio.run(run())


def test_wasm_fails_on_fetch_failures_since_the_canary_started(
    prometheus: Prometheus, exposition: Exposition, ns: str
) -> None:
    fetch, conversion = (
        "istio_agent_wasm_remote_fetch_count",
        "istio_agent_wasm_config_conversion_count",
    )
    # Before the canary: an old failure on the pod, and successes that keep coming.
    exposition.set(fetch, 3, namespace=ns, pod="c1", result="download_failure")
    exposition.grow(fetch, 1, namespace=ns, pod="c1", result="success")
    exposition.grow(conversion, 1, namespace=ns, pod="c1", result="no_remote_load")
    wait_scraped(prometheus, f'{fetch}{{namespace="{ns}"}}')
    since = datetime.now(UTC)
    wait_scraped(prometheus, f'{fetch}{{namespace="{ns}"}}', samples=6)
    reading = wasm(prometheus, target(ns, ["c1"], [], since))
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message

    # A failure series that appears after `since` already at 1 and never grows: increase()
    # alone would miss it.
    exposition.set(fetch, 1, namespace=ns, pod="c1", result="manifest_failure")
    wait_scraped(prometheus, f'{fetch}{{namespace="{ns}",result="manifest_failure"}}', samples=2)
    reading = wasm(prometheus, target(ns, ["c1"], [], since))
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert "1 failed module fetch(es)" in reading.message
    # ... only on the canary pods
    assert wasm(prometheus, target(ns, ["c2"], [], since)).phase == MeasurementPhase.SUCCESSFUL

    # A conversion failure on another canary pod that grows after since.
    exposition.grow(conversion, 2, namespace=ns, pod="c2", result="fetch_failure")
    wait_scraped(prometheus, f'{conversion}{{namespace="{ns}",pod="c2"}}')
    reading = wasm(prometheus, target(ns, ["c2"], [], since))
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert "failed Wasm config conversion(s)" in reading.message


def test_wasm_does_not_blame_the_canary_for_a_failure_just_before_it_started(
    prometheus: Prometheus, exposition: Exposition, ns: str
) -> None:
    # A rolled-back version's failed fetch on a pod, scraped, and at once a new canary there:
    # the window of two scrapes that increase() would need reaches back over that failure.
    fetch = "istio_agent_wasm_remote_fetch_count"
    exposition.grow(fetch, 1, namespace=ns, pod="c1", result="success")
    wait_scraped(prometheus, f'{fetch}{{namespace="{ns}"}}', samples=2)
    exposition.set(fetch, 1, namespace=ns, pod="c1", result="download_failure")
    wait_scraped(prometheus, f'{fetch}{{namespace="{ns}",result="download_failure"}}', samples=1)
    since = datetime.now(UTC)
    reading = wasm(prometheus, target(ns, ["c1"], [], since))
    assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message
    # The same series growing after `since` is this canary's.
    exposition.set(fetch, 2, namespace=ns, pod="c1", result="download_failure")
    failures = f'{fetch}{{namespace="{ns}",result="download_failure"}}'
    poll(lambda: [s.value for s in prometheus.query(failures)] == [2.0] or None,
         timeout=30, what="the second failure scraped")  # fmt: skip
    reading = wasm(prometheus, target(ns, ["c1"], [], since))
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert "1 failed module fetch(es)" in reading.message


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A Prometheus URL whose port refuses connections: bound but not listening, so no other
    process can start listening there while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_wasm_log_failures_win_over_an_unreachable_prometheus(refusing_url: str) -> None:
    prom = refusing_url
    since = datetime.now(UTC) - timedelta(minutes=1)

    async def panicking(namespace: str, pod: str, container: str, when: datetime) -> list[str]:
        return ["[2026-01-01 00:00:00.000][1][critical][wasm] wasm log: panicked at 'boom'"]

    reading = wasm(prom, target("n", ["c1"], [], since), panicking)
    assert reading.phase == MeasurementPhase.FAILED, reading.message
    assert "panicked at 'boom'" in reading.message
    reading = wasm(prom, target("n", ["c1"], [], since))
    assert reading.phase == MeasurementPhase.ERROR
    assert "is unreachable" in reading.message


# -- errors ---------------------------------------------------------------------------------


def test_a_stopped_prometheus_is_an_error_with_a_readable_message(
    tmp_path: Path, exposition: Exposition
) -> None:
    t = target("n", ["c1"], ["s1"], datetime.now(UTC))
    with make_prometheus(tmp_path, exposition) as prom:
        prom.wait_for_targets(1, job=JOB, timeout=30)
        assert istio(prom, {"minRequests": 1}, t).phase == MeasurementPhase.INCONCLUSIVE
    reading = istio(prom, {"successRate": {"minPercent": 99}}, t)
    assert reading.phase == MeasurementPhase.ERROR
    assert reading.message.startswith(f"Prometheus at {prom.url} is unreachable: ")
    assert "refused" in reading.message


def test_something_that_is_not_prometheus_is_an_error(exposition: Exposition) -> None:
    t = target("n", ["c1"], [], datetime.now(UTC))
    url = f"http://{exposition.address}"
    reading = custom(url, "up", "result > 0", t)
    assert reading.phase == MeasurementPhase.ERROR
    assert reading.message.startswith(f"Prometheus at {url} answered HTTP 501: ")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def test_a_slow_provider_times_out_without_holding_up_the_others(silent_server: str) -> None:
    slo = Metric.model_validate(
        {"name": "slo", "count": 2, "provider": {"istio": {"successRate": {"minPercent": 99}}}}
    )
    logs = Metric.model_validate(
        {"name": "logs", "count": 2, "provider": {"proxyLogs": {"patterns": ["panic"]}}}
    )
    now = datetime.now(UTC)
    t = target("n", ["c1"], [], now - timedelta(minutes=5))

    async def run() -> tuple[Any, ...]:
        analyzer = Analyzer(silent_server, no_logs, timeout=1.0)
        try:
            return await analyzer.measure_due(
                [slo, logs], {}, t, now, step_started=now - timedelta(minutes=1)
            )
        finally:
            analyzer.close()

    started = time.monotonic()
    slo_result, logs_result = asyncio.run(run())
    # Bounded: the silent server never answers, so only the 1 s timeout can end the call. The
    # bound is generous on purpose: it is about the call ending, not this machine's speed.
    assert time.monotonic() - started < 1.0 + 5.0
    assert slo_result.phase == AnalysisPhase.ERROR
    assert slo_result.measurements[-1].phase == MeasurementPhase.ERROR
    message = slo_result.measurements[-1].message
    assert "did not answer within 1s" in message or "timed out after 1s" in message
    assert (logs_result.phase, logs_result.count) == (AnalysisPhase.RUNNING, 1)


def test_the_analyzer_measures_what_is_due_and_records_it(
    prometheus: Prometheus, exposition: Exposition, ns: str
) -> None:
    since = datetime.now(UTC)
    exposition.requests(ns, "c1", {200: 20})
    exposition.requests(ns, "s1", {200: 20})
    wait_scraped(prometheus, f'istio_requests_total{{namespace="{ns}"}}')
    metrics = [
        Metric.model_validate(
            {
                "name": "success",
                "interval": "10s",
                "count": 2,
                "provider": {"istio": {"successRate": {"minPercent": 99, "maxDropPercent": 1}}},
            }
        ),
        Metric.model_validate(
            {
                "name": "errors",
                "interval": "1m",
                "count": 1,
                "provider": {
                    "prometheus": {"query": "(" + ERROR_RATIO, "successCondition": "result < 0.01"}
                },
            }
        ),
        Metric.model_validate({"name": "wasm", "provider": {"wasm": {}}}),
    ]
    t = target(ns, ["c1"], ["s1"], since)
    now = datetime.now(UTC)

    async def run(step_started: datetime, previous: dict[str, Any]) -> tuple[Any, ...]:
        analyzer = Analyzer(prometheus.url, no_logs, timeout=10, scrape_interval=SCRAPE)
        try:
            return await analyzer.measure_due(metrics, previous, t, now, step_started)
        finally:
            analyzer.close()

    # 15 s into the step: `success` (10 s) and the wasm guard are due, `errors` (1 m) is not.
    first = asyncio.run(run(now - timedelta(seconds=15), {}))
    assert [r.name for r in first] == ["success", "errors", "wasm"]
    assert [(r.phase, r.count) for r in first] == [
        (AnalysisPhase.RUNNING, 1),
        (AnalysisPhase.RUNNING, 0),
        (AnalysisPhase.RUNNING, 1),
    ], [r.message for r in first]
    assert first[0].measurements[0].phase == MeasurementPhase.SUCCESSFUL
    assert first[0].measurements[0].started_at == now.strftime("%Y-%m-%dT%H:%M:%SZ")
    # A minute later, with the results fed back: everything has its verdict or keeps guarding.
    second = asyncio.run(run(now - timedelta(minutes=2), {r.name: r for r in first}))
    assert [r.phase for r in second] == [
        AnalysisPhase.RUNNING,  # measured 1 s ago by the clock of `now`: not due again
        AnalysisPhase.SUCCESSFUL,
        AnalysisPhase.RUNNING,
    ], [r.message for r in second]


# -- pod logs through the API server --------------------------------------------------------


def test_proxy_logs_read_through_the_pods_log_api(logs_cluster: LocalCluster) -> None:
    cluster = logs_cluster
    cluster.kubectl("create", "namespace", "shop")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(meshed_pod("shop", "web-1")))
    now = datetime.now(UTC)

    def ns_(moment: datetime) -> int:
        return int(moment.timestamp() * 1_000_000) * 1000

    log_file = cluster.workdir / "web-1.cri.log"
    log_file.write_text(
        cri_line(ns_(now - timedelta(hours=1)), "[old][wasm] Function: proxy_on_tick failed: old")
        + cri_line(ns_(now - timedelta(seconds=20)), "[info][main] starting")
        + cri_line(ns_(now - timedelta(seconds=10)), '{"looks": "like JSON", "panic": 1}')
        + cri_line(ns_(now - timedelta(seconds=5)), "[error][wasm] panic: deliberate")
    )
    manifest = logs_manifest("shop", "web-1", log_file)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    api_client = load_api_client(str(cluster.admin_kubeconfig))
    reader = PodLogs(api_client, timeout=10)
    since = now - timedelta(minutes=1)
    try:
        lines = poll(
            lambda: _read_or_none(reader, "shop", "web-1", since),
            timeout=60,
            what="the pod's istio-proxy log through the API",
        )
        assert lines == [
            "[info][main] starting",
            '{"looks": "like JSON", "panic": 1}',
            "[error][wasm] panic: deliberate",
        ]

        t = AnalysisTarget(
            namespace="shop",
            workload_selector={"app": "web"},
            canary_pods=("web-1",),
            stable_pods=(),
            since=since,
        )
        spec = ProxyLogsProvider(patterns=("panic",), max_count=1)
        reading = asyncio.run(
            measure_proxy_logs(reader, spec, t, now=now, interval=timedelta(minutes=5))
        )
        assert reading.phase == MeasurementPhase.FAILED, reading.message
        assert reading.value == 2
        # The panic far back, before since, is not counted; the last interval only.
        spec = ProxyLogsProvider(patterns=("Function: proxy_on_", "panic"), max_count=2)
        reading = asyncio.run(
            measure_proxy_logs(reader, spec, t, now=now, interval=timedelta(minutes=5))
        )
        assert reading.phase == MeasurementPhase.SUCCESSFUL, reading.message

        gone = t.model_copy(update={"canary_pods": ("web-1", "web-9")})
        reading = asyncio.run(
            measure_proxy_logs(reader, spec, gone, now=now, interval=timedelta(minutes=5))
        )
        assert reading.phase == MeasurementPhase.ERROR
        assert 'web-9: 404: pods "web-9" not found' in reading.message
    finally:
        api_client.close()  # type: ignore[no-untyped-call]


def _read_or_none(reader: PodLogs, ns: str, pod: str, since: datetime) -> list[str] | None:
    try:
        lines = asyncio.run(reader.read(ns, pod, CONTAINER, since))
    except Exception:
        return None
    return lines or None
