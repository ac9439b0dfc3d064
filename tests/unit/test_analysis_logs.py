"""Log-based analysis without a cluster: the proxyLogs provider's counting with an injected
reader, the wasm provider's broken-filter lines (real lines from Envoy and istio-agent), and
the pod log adapter's timestamp handling. The same reader against a real API server (kwok's
pod logs) is in tests/integration/test_analysis_providers.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from filterrelease.core.analysis import AnalysisTarget, MeasurementPhase
from filterrelease.core.analysis_spec import ProxyLogsProvider
from filterrelease.kube.podlogs import lines_since, parse_stamp
from filterrelease.providers.proxylogs import measure_proxy_logs, scan
from filterrelease.providers.wasm import LOG_PATTERNS

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

# Lines as the testbed's Envoy 1.40 and mesh agent wrote them (a Go filter panicking under
# FAIL_CLOSE, a module that could not be fetched), and as Envoy/Rust SDKs write them elsewhere.
BROKEN = [
    "[2026-11-24 05:52:19.414][30697][error][wasm] [source/extensions/common/wasm/wasm_vm.cc:38]"
    " Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable",
    "[2026-11-24 05:52:19.413][30697][error][wasm] [source/extensions/common/wasm/context.cc:1157]"
    " wasm log mesh.panicky~istio-translated-wasmplugin: panic: ",
    "[2026-11-24 05:52:19.413][30697][error][wasm] [source/extensions/common/wasm/context.cc:1157]"
    " wasm log mesh.slow: fatal error: poll_oneoff failed",
    "2026-11-24T05:52:16.768670Z\terror\twasm\terror in converting the wasm config to local: "
    "cannot fetch Wasm module oci://127.0.0.1:5000/f:v1: manifest unknown. applying deny RBAC "
    "filter",
    "[2026-01-01 00:00:00.000][1][critical][wasm] Wasm VM failed Failed to initialize Wasm code",
    "[2026-01-01 00:00:00.000][1][warning][wasm] Plugin configured to fail closed failed to load",
    "[2026-01-01 00:00:00.000][1][error][wasm] Failed to load Wasm module due to a missing import",
    "[2026-01-01 00:00:00.000][1][error][wasm] Failed to configure base Wasm plugin",
    "[2026-01-01 00:00:00.000][1][critical][wasm] wasm log: panicked at 'index out of bounds'",
]
HEALTHY = [
    "[2026-11-24 05:52:19.179][30679][info][wasm] [source/extensions/common/wasm/context.cc:1151]"
    " wasm log: panicky: started, version unversioned, panicking on 1 request in 1",
    "2026-11-24T05:52:16.768670Z\tinfo\twasm\tfetching image filters/panicky from registry",
    "[2026-01-01 00:00:00.000][1][info][upstream] lds: add/update listener 'inbound'",
    "[2026-01-01 00:00:00.000][1][debug][wasm] WasmVm created envoy.wasm.runtime.v8 now active",
]


@pytest.mark.parametrize("line", BROKEN)
def test_broken_filter_lines_are_recognised(line: str) -> None:
    assert any(p.search(line) for p in LOG_PATTERNS), line


@pytest.mark.parametrize("line", HEALTHY)
def test_healthy_lines_are_not(line: str) -> None:
    assert not any(p.search(line) for p in LOG_PATTERNS), line


class Logs:
    """An in-memory log source with the reader's signature: (namespace, pod) -> lines; a pod
    whose entry is an exception fails to read."""

    def __init__(self, logs: dict[str, list[str] | Exception]) -> None:
        self.logs = logs
        self.asked: list[tuple[str, str, str, datetime]] = []

    async def __call__(
        self, namespace: str, pod: str, container: str, since: datetime
    ) -> Sequence[str]:
        self.asked.append((namespace, pod, container, since))
        found = self.logs[pod]
        if isinstance(found, Exception):
            raise found
        return found


def target(*canary: str) -> AnalysisTarget:
    return AnalysisTarget(
        namespace="shop",
        workload_selector={"app": "web"},
        canary_pods=canary,
        stable_pods=("web-s",),
        since=T0,
    )


SPEC = ProxyLogsProvider(patterns=("panic", "RuntimeError"), max_count=1)


def test_lines_are_counted_once_across_patterns_and_pods() -> None:
    logs = Logs(
        {
            "web-1": ["ok", "panic: x", "RuntimeError after panic"],  # 2 lines, 3 matches
            "web-2": ["RuntimeError: unreachable", "fine"],
        }
    )
    patterns = [re.compile(p) for p in SPEC.patterns]
    found = asyncio.run(scan(logs, "shop", ["web-2", "web-1"], T0, patterns))
    assert found.count == 3
    assert found.first == "web-1: panic: x"  # pods in name order
    assert found.errors == ()
    assert {a[2] for a in logs.asked} == {"istio-proxy"}


@pytest.mark.parametrize(
    ("logs", "phase", "value", "words"),
    [
        ({"web-1": ["ok"], "web-2": []}, MeasurementPhase.SUCCESSFUL, 0, ["0 matching line(s)"]),
        ({"web-1": ["panic"], "web-2": []}, MeasurementPhase.SUCCESSFUL, 1, ["1 tolerated"]),
        (
            {"web-1": ["panic"], "web-2": ["x RuntimeError"]},
            MeasurementPhase.FAILED,
            2,
            ["2 matching line(s) in 2 canary pod(s), 1 tolerated: web-1: panic"],
        ),
        # a failure found in one pod wins over another pod's unreadable log ...
        (
            {"web-1": ["panic", "panic"], "web-2": RuntimeError("pod gone")},
            MeasurementPhase.FAILED,
            2,
            [],
        ),
        # ... but without one, an unreadable log means nothing was proven
        (
            {"web-1": ["ok"], "web-2": RuntimeError("403: forbidden")},
            MeasurementPhase.ERROR,
            None,
            ["cannot read the istio-proxy log of web-2: 403: forbidden"],
        ),
    ],
)
def test_proxy_logs_verdicts(
    logs: dict[str, list[str] | Exception],
    phase: MeasurementPhase,
    value: float | None,
    words: list[str],
) -> None:
    reading = asyncio.run(
        measure_proxy_logs(
            Logs(logs), SPEC, target("web-1", "web-2"), now=T0, interval=timedelta(minutes=1)
        )
    )
    assert (reading.phase, reading.value) == (phase, value), reading.message
    for word in words:
        assert word in reading.message


def test_each_measurement_reads_the_last_interval_never_before_since() -> None:
    logs = Logs({"web-1": []})
    t = target("web-1")
    minute = timedelta(minutes=1)
    asyncio.run(measure_proxy_logs(logs, SPEC, t, now=T0 + minute / 3, interval=minute))
    asyncio.run(measure_proxy_logs(logs, SPEC, t, now=T0 + 5 * minute, interval=minute))
    assert [a[3] for a in logs.asked] == [T0, T0 + timedelta(minutes=4)]


def test_no_canary_pods_is_inconclusive() -> None:
    reading = asyncio.run(
        measure_proxy_logs(Logs({}), SPEC, target(), now=T0, interval=timedelta(minutes=1))
    )
    assert reading.phase == MeasurementPhase.INCONCLUSIVE


# -- the pod log adapter's parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T12:00:00.123456789Z", datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-01-01T12:00:00Z", T0),
        ("2026-01-01T12:00:00.5Z", T0 + timedelta(milliseconds=500)),
        ("2026-01-01T13:00:00+01:00", T0),
        ("2026-01-01T12:00:00", None),  # no zone: not a kubelet stamp
        ("[2026-01-01", None),
    ],
)
def test_parse_stamp(text: str, expected: datetime | None) -> None:
    assert parse_stamp(text) == expected


def test_lines_since_drops_older_lines_and_the_stamps() -> None:
    body = (
        "2026-01-01T11:59:59.999999999Z before\n"
        "2026-01-01T12:00:00.000000000Z at since\n"
        "2026-01-01T12:00:01.000000000Z \tafter, with a tab\n"
        "no stamp at all\n"
    )
    assert lines_since(body, T0) == ["at since", "\tafter, with a tab", "no stamp at all"]
