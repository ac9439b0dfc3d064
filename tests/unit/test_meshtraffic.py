"""meshtraffic's pure parts on synthetic input: access-log parsing and tailing, Istio's labels
and histogram, the text exposition, CRI log lines and merging, kwok manifests, load-generator
bookkeeping (against an in-process loopback server)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshtraffic.accesslog import FileTail, parse_line
from meshtraffic.exporter import MeshMetricsExporter, PodExporter, pod_json_identity
from meshtraffic.loadgen import Endpoint, LoadGenerator, static_endpoints, workdir_endpoints
from meshtraffic.metrics import (
    DURATION_BUCKETS_MS,
    ISTIO_LABELS,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    PodIdentity,
    RequestMetrics,
    identity_from_name,
    identity_from_pod,
    parse_exposition,
    request_labels,
    workload_from_pod_name,
)
from meshtraffic.podfiles import PodDir, read_port, walk_pod_dirs
from meshtraffic.podforwards import portforward_crd_manifest, portforward_manifest
from meshtraffic.podlogs import (
    KWOK_CONFIG_YAML,
    PodLogMerger,
    cri_line,
    embedded_time,
    logs_crd_manifest,
    logs_manifest,
    merge_lines,
    parse_cri_line,
    rfc3339nano,
)


def entry_line(code: int = 200, flags: str = "-", duration: Any = 3, **extra: Any) -> str:
    obj = {
        "start_time": "2026-01-01T00:00:00.000Z",
        "method": "GET",
        "path": "/",
        "protocol": "HTTP/1.1",
        "response_code": code,
        "response_flags": flags,
        "duration_ms": duration,
        "upstream_host": "127.0.0.1:9000",
        "request_id": "r-1",
        "x_filter_version": None,
        **extra,
    }
    return json.dumps(obj)


def deployment_pod(name: str = "web-7d4b9c8f6d-x2z4q", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"pod-template-hash": "7d4b9c8f6d", **labels},
            "ownerReferences": [
                {"kind": "ReplicaSet", "name": "web-7d4b9c8f6d", "controller": True}
            ],
        }
    }


# -- access log --------------------------------------------------------------------------------


def test_parse_line_reads_the_agents_fields() -> None:
    e = parse_line(entry_line(503, "UF", 12.7, x_filter_version="v1.2.0"))
    assert e is not None
    assert (e.response_code, e.response_flags, e.duration_ms) == (503, "UF", 12.7)
    assert (e.method, e.path, e.x_filter_version) == ("GET", "/", "v1.2.0")


@pytest.mark.parametrize("line", ["", "not json", "[1, 2]", '{"response_code": 200', "  ", "null"])
def test_parse_line_skips_what_is_not_an_entry(line: str) -> None:
    assert parse_line(line) is None


def test_parse_line_missing_values() -> None:
    e = parse_line(json.dumps({"response_code": None, "response_flags": None, "duration_ms": "-"}))
    assert e is not None
    assert (e.response_code, e.response_flags, e.duration_ms) == (0, "-", None)
    e = parse_line(json.dumps({"response_code": "404", "duration_ms": "7"}))
    assert e is not None
    assert (e.response_code, e.duration_ms) == (404, 7.0)


def test_file_tail_returns_complete_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    tail = FileTail(path)
    assert tail.read_lines() == []  # missing file
    path.write_text("a\nb")
    assert tail.read_lines() == ["a"]
    with path.open("a") as f:
        f.write("c\nd\n")
    assert tail.read_lines() == ["bc", "d"]
    assert tail.read_lines() == []


def test_file_tail_starts_over_after_truncation_or_replacement(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("one\ntwo\n")
    tail = FileTail(path)
    assert tail.read_lines() == ["one", "two"]
    path.write_text("3\n")  # shorter: truncated and rewritten
    assert tail.read_lines() == ["3"]
    other = tmp_path / "new"
    other.write_text("x\ny\nz\nw\n")
    other.replace(path)  # new inode, longer than the offset
    assert tail.read_lines() == ["x", "y", "z", "w"]


def test_file_tail_start_offset(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old\nnew\n")
    assert FileTail(path, start_offset=4).read_lines() == ["new"]
    assert FileTail(path, start_offset=100).read_lines() == ["old", "new"]  # file shrank


# -- identity and labels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("web-7d4b9c8f6d-x2z4q", "web"),
        ("checkout-api-58b7c9d6f4-bdq2w", "checkout-api"),
        ("web-x2z4q", "web"),  # a ReplicaSet's / DaemonSet's / Job's pod
        ("web-0", "web-0"),  # StatefulSet pods keep their name without the owner
        ("solo", "solo"),
    ],
)
def test_workload_from_pod_name(pod: str, workload: str) -> None:
    assert workload_from_pod_name(pod) == workload


def test_identity_from_pod_follows_the_owner_and_labels() -> None:
    ident = identity_from_pod(deployment_pod(app="web", version="v2"))
    assert ident == PodIdentity(
        namespace="shop",
        workload="web",
        app="web",
        version="v2",
        canonical_service="web",
        canonical_revision="v2",
        authoritative=True,
    )
    assert ident.service_host == "web.shop.svc.cluster.local"


def test_identity_canonical_labels_win_and_defaults() -> None:
    ident = identity_from_pod(
        deployment_pod(
            app="web",
            **{
                "service.istio.io/canonical-name": "storefront",
                "service.istio.io/canonical-revision": "r7",
            },
        )
    )
    assert (ident.canonical_service, ident.canonical_revision) == ("storefront", "r7")
    bare = identity_from_pod(deployment_pod())
    assert (bare.app, bare.version) == ("", "")
    assert (bare.canonical_service, bare.canonical_revision) == ("web", "latest")


@pytest.mark.parametrize(
    ("owner", "workload"),
    [
        ({"kind": "StatefulSet", "name": "db"}, "db"),
        ({"kind": "Job", "name": "nightly-29012345"}, "nightly"),
        ({"kind": "Job", "name": "migrate"}, "migrate"),
        ({"kind": "ReplicaSet", "name": "standalone"}, "standalone"),
    ],
)
def test_identity_other_owners(owner: dict[str, str], workload: str) -> None:
    pod = {"metadata": {"name": "p-1", "namespace": "n", "ownerReferences": [owner]}}
    assert identity_from_pod(pod).workload == workload


def test_request_labels_for_a_plaintext_request_from_outside_the_mesh() -> None:
    ident = identity_from_pod(deployment_pod(app="web", version="v1"))
    entry = parse_line(entry_line(503, "UF"))
    assert entry is not None
    labels = dict(zip(ISTIO_LABELS, request_labels(ident, entry), strict=True))
    assert labels == {
        "reporter": "destination",
        "source_workload": "unknown",
        "source_canonical_service": "unknown",
        "source_canonical_revision": "latest",
        "source_workload_namespace": "unknown",
        "source_principal": "unknown",
        "source_app": "unknown",
        "source_version": "unknown",
        "source_cluster": "unknown",
        "destination_workload": "web",
        "destination_workload_namespace": "shop",
        "destination_principal": "unknown",
        "destination_app": "web",
        "destination_version": "v1",
        "destination_service": "web.shop.svc.cluster.local",
        "destination_canonical_service": "web",
        "destination_canonical_revision": "v1",
        "destination_service_name": "web",
        "destination_service_namespace": "shop",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "503",
        "grpc_response_status": "",
        "response_flags": "UF",
        "connection_security_policy": "none",
    }


def test_istio_label_set_is_the_documented_one() -> None:
    assert len(ISTIO_LABELS) == len(set(ISTIO_LABELS)) == 25
    assert DURATION_BUCKETS_MS[0] == 0.5
    assert DURATION_BUCKETS_MS[-1] == 3600000


# -- aggregation and exposition ----------------------------------------------------------------


def observe_all(metrics: RequestMetrics, ident: PodIdentity, lines: list[str]) -> None:
    for line in lines:
        entry = parse_line(line)
        assert entry is not None
        metrics.observe(ident, entry)


def test_counts_and_histogram() -> None:
    m = RequestMetrics()
    ident = identity_from_name("shop", "web-7d4b9c8f6d-x2z4q")
    observe_all(
        m,
        ident,
        [entry_line(200, duration=d) for d in (0, 1, 3, 3.9, 7000)]
        + [entry_line(503, "UF", duration=None)],
    )
    assert m.count_by("response_code") == {("200",): 5, ("503",): 1}
    samples = parse_exposition(m.render())

    def value(name: str, **labels: str) -> float:
        hits = [
            v
            for (n, ls), v in samples.items()
            if n == name and all((k, val) in ls for k, val in labels.items())
        ]
        assert len(hits) == 1, (name, labels, hits)
        return hits[0]

    assert value(REQUESTS_TOTAL, response_code="200") == 5
    assert value(REQUESTS_TOTAL, response_code="503", response_flags="UF") == 1
    # Whole milliseconds, cumulative buckets: 0 and 1 <= 1; 3 and 3(.9) <= 5; 7000 <= 10000.
    ok = {"response_code": "200"}
    assert value(f"{REQUEST_DURATION}_bucket", le="0.5", **ok) == 1
    assert value(f"{REQUEST_DURATION}_bucket", le="1", **ok) == 2
    assert value(f"{REQUEST_DURATION}_bucket", le="5", **ok) == 4
    assert value(f"{REQUEST_DURATION}_bucket", le="5000", **ok) == 4
    assert value(f"{REQUEST_DURATION}_bucket", le="10000", **ok) == 5
    assert value(f"{REQUEST_DURATION}_bucket", le="+Inf", **ok) == 5
    assert value(f"{REQUEST_DURATION}_count", **ok) == 5
    assert value(f"{REQUEST_DURATION}_sum", **ok) == 0 + 1 + 3 + 3 + 7000
    # A request without a duration is counted but not observed in the histogram.
    assert not any(
        n.startswith(REQUEST_DURATION) and ("response_code", "503") in ls for n, ls in samples
    )


def test_render_is_valid_exposition_with_escaping() -> None:
    m = RequestMetrics()
    ident = PodIdentity(namespace="n", workload='we"ird\\name', canonical_service="x")
    observe_all(m, ident, [entry_line()])
    text = m.render()
    assert "# TYPE istio_requests_total counter" in text
    assert "# TYPE istio_request_duration_milliseconds histogram" in text
    samples = parse_exposition(text)
    (labels,) = [ls for (n, ls) in samples if n == REQUESTS_TOTAL]
    assert ("destination_workload", 'we"ird\\name') in labels


def test_empty_metrics_render_only_metadata() -> None:
    assert parse_exposition(RequestMetrics().render()) == {}


# -- the exporter's file handling (no Prometheus) ----------------------------------------------


def make_pod(agent: Path, ns: str, pod: str, lines: list[str], port: int | None = 1) -> Path:
    d = agent / ns / pod
    d.mkdir(parents=True, exist_ok=True)
    with (d / "access.log").open("a") as f:
        f.writelines(line + "\n" for line in lines)
    if port is not None:
        (d / "port").write_text(f"{port}\n")
    return d


def test_walk_pod_dirs_and_read_port(tmp_path: Path) -> None:
    make_pod(tmp_path, "b", "p2", [])
    make_pod(tmp_path, "a", "p1", [], port=None)
    (tmp_path / "modules").mkdir()
    (tmp_path / "agent.log").write_text("")
    (tmp_path / ".hidden" / "x").mkdir(parents=True)
    assert [p.key for p in walk_pod_dirs(tmp_path)] == [("a", "p1"), ("b", "p2")]
    assert [p.key for p in walk_pod_dirs(tmp_path, marker="port")] == [("b", "p2")]
    assert read_port(tmp_path / "b" / "p2" / "port") == 1
    (tmp_path / "bad").write_text("12ab")
    assert read_port(tmp_path / "bad") is None
    assert read_port(tmp_path / "missing") is None


def test_pod_json_identity(tmp_path: Path) -> None:
    d = make_pod(tmp_path, "shop", "web-7d4b9c8f6d-x2z4q", [])
    pod = PodDir("shop", "web-7d4b9c8f6d-x2z4q", d)
    assert pod_json_identity(pod) is None
    (d / "pod.json").write_text(json.dumps(deployment_pod(app="web")))
    found = pod_json_identity(pod)
    assert found is not None
    assert found.authoritative
    assert found.app == "web"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5) as r:
        return parse_exposition(r.read().decode())


def totals_by_code(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == REQUESTS_TOTAL:
            code = dict(labels)["response_code"]
            out[code] = out.get(code, 0) + v
    return out


def test_exporter_serves_each_pod_and_writes_targets(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    make_pod(agent, "shop", "web-a", [entry_line(200)] * 3 + [entry_line(500)])
    make_pod(agent, "shop", "web-b", [entry_line(200)])
    targets_file = tmp_path / "sd" / "targets.json"
    exporter = MeshMetricsExporter(agent, targets_file, poll_interval=60, identity_grace_s=0)
    with exporter:
        pods = exporter.pods
        ports = {k: p.port for k, p in pods.items()}
        assert (agent / "shop" / "web-a" / "stats-port").read_text().strip() == str(
            ports[("shop", "web-a")]
        )
        targets = json.loads(targets_file.read_text())
        assert targets == [
            {"targets": [f"127.0.0.1:{ports[k]}"], "labels": {"namespace": k[0], "pod": k[1]}}
            for k in sorted(ports)
        ]
        assert totals_by_code(scrape(ports[("shop", "web-a")])) == {"200": 3, "500": 1}
        # New lines show up at the next scrape; the pod's sidecar stopping drops its target.
        make_pod(agent, "shop", "web-a", [entry_line(500)])
        assert totals_by_code(scrape(ports[("shop", "web-a")])) == {"200": 3, "500": 2}
        (agent / "shop" / "web-b" / "port").unlink()
        exporter.sync()
        assert set(exporter.pods) == {("shop", "web-a")}
        assert not (agent / "shop" / "web-b" / "stats-port").exists()
        assert [t["labels"]["pod"] for t in json.loads(targets_file.read_text())] == ["web-a"]
        # The same pod name coming back starts from zero and counts only new lines.
        make_pod(agent, "shop", "web-b", [entry_line(404)])
        exporter.sync()
        assert totals_by_code(scrape(exporter.pods[("shop", "web-b")].port)) == {"404": 1}
    assert json.loads(targets_file.read_text()) == []


def test_exporter_lists_the_agent_endpoint(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    agent_file = tmp_path / "agent-targets.json"
    exporter = MeshMetricsExporter(
        agent, tmp_path / "t.json", agent_targets_file=agent_file, poll_interval=60
    )
    with exporter:
        assert json.loads(agent_file.read_text()) == []
        (agent / "agent-metrics-port").write_text("4321\n")
        exporter.sync()
        assert json.loads(agent_file.read_text()) == [{"targets": ["127.0.0.1:4321"]}]


def test_pod_exporter_waits_for_the_identity_then_counts_under_it(tmp_path: Path) -> None:
    d = make_pod(tmp_path, "shop", "web-7d4b9c8f6d-x2z4q", [entry_line()])
    pod = PodDir("shop", "web-7d4b9c8f6d-x2z4q", d)
    exporter = PodExporter(pod, pod_json_identity, identity_grace_s=60)
    exporter.RESOLVE_RETRY_S = 0
    try:
        exporter.refresh()  # no pod.json yet: the line waits
        assert exporter.metrics.totals() == {}
        (d / "pod.json").write_text(json.dumps(deployment_pod(app="shop-web")))
        exporter.refresh()
        assert exporter.metrics.count_by("destination_app") == {("shop-web",): 1}
    finally:
        exporter.stop()


def test_pod_exporter_resolver_failure_falls_back_to_the_name(tmp_path: Path) -> None:
    d = make_pod(tmp_path, "shop", "web-7d4b9c8f6d-x2z4q", [entry_line()])

    def broken(_: PodDir) -> PodIdentity | None:
        raise RuntimeError("apiserver down")

    exporter = PodExporter(PodDir("shop", "web-7d4b9c8f6d-x2z4q", d), broken, identity_grace_s=0)
    try:
        exporter.refresh()
        assert exporter.identity.workload == "web"
        assert exporter.metrics.count_by("destination_workload") == {("web",): 1}
    finally:
        exporter.stop()


# -- pod logs ----------------------------------------------------------------------------------


def test_rfc3339nano_and_cri_line() -> None:
    ts = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
    assert rfc3339nano(ts) == "2026-01-01T00:00:00.123456789Z"
    line = cri_line(ts, "hello world\r")
    assert line == "2026-01-01T00:00:00.123456789Z stdout F hello world\n"
    assert parse_cri_line(line) == ("2026-01-01T00:00:00.123456789Z", "stdout", "F", "hello world")


def test_embedded_time() -> None:
    istio = embedded_time("2026-01-01T00:00:01.500000Z\tinfo\twasm\tfetching")
    assert istio == 1_767_225_601_500_000_000
    envoy = embedded_time("[2026-01-01 00:00:02.250][12][info][main] starting")
    local = datetime(2026, 1, 1, 0, 0, 2, 250000).astimezone()
    assert envoy == int(local.timestamp()) * 1_000_000_000 + 250_000_000
    assert embedded_time("    at frame 3") is None
    assert embedded_time("") is None


def test_merge_lines_interleaves_by_time_and_keeps_continuations() -> None:
    utc = datetime(2026, 1, 1, tzinfo=UTC)
    envoy_t = datetime(2026, 1, 1, 0, 0, 2).astimezone()
    shift = int((envoy_t - utc).total_seconds())  # envoy lines are in local time
    assert shift == 2
    agent = [
        "2026-01-01T00:00:01.000000Z\terror\twasm\tfetch failed",
        "2026-01-01T00:00:03.000000Z\tinfo\twasm\tretrying",
    ]
    envoy = [
        "[2026-01-01 00:00:02.000][1][critical][wasm] panic",
        "  stack frame 1",
        "[2026-01-01 00:00:04.000][1][info][main] ok",
    ]
    last: list[int | None] = [None, None]
    merged = merge_lines([envoy, agent], now=10**19, last=last)
    assert [line for _, line in merged] == [agent[0], envoy[0], envoy[1], agent[1], envoy[2]]
    assert merged[1][0] == merged[2][0]  # the continuation takes its head line's time
    # Lines without any time get `now`; later ones without time take the source's last time.
    assert merge_lines([["plain"], []], now=5, last=[None, None]) == [(5, "plain")]
    assert merge_lines([["cont"], []], now=99, last=[7, None]) == [(7, "cont")]
    # Untimed lines at a source's very start (Envoy's command echo) go with its first timed
    # line, not to `now`, and do not drag the rest of that source behind the other one.
    echo = ["$ envoy -c bootstrap.json", "[2026-01-01 00:00:02.000][1][info][main] init"]
    merged = merge_lines([echo, agent], now=10**19, last=[None, None])
    assert [line for _, line in merged] == [agent[0], *echo, agent[1]]


def test_pod_log_merger_appends_in_cri_format(tmp_path: Path) -> None:
    d = tmp_path / "shop" / "web-1"
    d.mkdir(parents=True)
    (d / "agent.log").write_text("2026-01-01T00:00:01.000000Z\tinfo\tads\tconnected\n")
    (d / "envoy.log").write_text("no timestamp here\n")
    (d / "istio-proxy.cri.log").write_text("stale from a previous run\n")
    merger = PodLogMerger(PodDir("shop", "web-1", d))
    now = 1_767_225_700_000_000_000
    assert merger.step(now) == 2
    assert merger.step(now) == 0
    with (d / "envoy.log").open("a") as f:
        f.write("[2026-01-01 00:00:05.000][1][info][main] later\npartial")
    assert merger.step(now + 1) == 1
    rows = [parse_cri_line(r) for r in (d / "istio-proxy.cri.log").read_text().splitlines()]
    contents = [r[3] for r in rows]
    assert contents == [
        "2026-01-01T00:00:01.000000Z\tinfo\tads\tconnected",
        "no timestamp here",
        "[2026-01-01 00:00:05.000][1][info][main] later",
    ]
    assert all(r[1:3] == ("stdout", "F") for r in rows)
    stamps = [r[0] for r in rows]
    assert stamps == sorted(stamps)  # never decreasing, so --since works
    assert stamps[0] == "2026-01-01T00:00:01.000000000Z"


def test_kwok_manifests() -> None:
    cfg = yaml.safe_load(KWOK_CONFIG_YAML)
    assert cfg["kind"] == "KwokConfiguration"
    assert cfg["options"]["enableCRDs"] == ["Logs", "PortForward"]
    assert cfg["options"]["podPlayStageParallelism"] == 4
    crd = logs_crd_manifest()
    assert crd["metadata"]["name"] == "logs.kwok.x-k8s.io"
    assert crd["spec"]["scope"] == "Namespaced"
    logs = logs_manifest("shop", "web-1", Path("/w/shop/web-1/istio-proxy.cri.log"))
    assert logs["apiVersion"] == "kwok.x-k8s.io/v1alpha1"
    assert logs["metadata"]["name"] == "web-1"
    assert logs["spec"]["logs"] == [
        {
            "containers": ["istio-proxy"],
            "logsFile": "/w/shop/web-1/istio-proxy.cri.log",
            "follow": True,
        }
    ]
    crd = portforward_crd_manifest()
    assert crd["metadata"]["name"] == "portforwards.kwok.x-k8s.io"
    assert crd["spec"]["names"]["kind"] == "PortForward"
    forward = portforward_manifest("shop", "web-1", 40123)
    assert forward["metadata"] == {
        "name": "web-1",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "meshtraffic"},
    }
    assert forward["spec"]["forwards"] == [
        {"ports": [15000], "target": {"address": "127.0.0.1", "port": 40123}}
    ]


# -- load generator bookkeeping ----------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else Nagle + delayed ACK add 40 ms per response

    def do_GET(self) -> None:
        code = 503 if self.path == "/fail" else 200
        body = b"ok"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-server-port", str(self.server.server_address[1]))  # type: ignore[index]
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[list[int]]:
    started = []
    try:
        for _ in range(2):
            srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}).start()
            started.append(srv)
        yield [int(s.server_address[1]) for s in started]
    finally:
        for srv in started:
            srv.shutdown()
            srv.server_close()


def test_loadgen_round_robin_counts_and_callback(servers: list[int]) -> None:
    eps = [Endpoint("shop", f"web-{i}", port) for i, port in enumerate(servers)]
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_response(resp: Any) -> None:
        with lock:
            seen.append((resp.endpoint.pod, int(resp.headers["x-server-port"])))

    gen = LoadGenerator(static_endpoints(eps), rate=200, count=40, on_response=on_response)
    result = gen.run()
    gen.stop()
    assert gen.done
    assert result.sent == {("shop", "web-0"): 20, ("shop", "web-1"): 20}
    assert result.responses == {("shop", "web-0"): {200: 20}, ("shop", "web-1"): {200: 20}}
    assert result.total_errors == 0
    assert result.no_endpoint == 0
    assert len(seen) == 40
    assert all(port == servers[int(pod[-1])] for pod, port in seen)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and while the test runs no other
    # process can take the port (a port merely closed again could be listened on meanwhile).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_loadgen_counts_codes_and_connection_errors(
    servers: list[int], refusing_port: int, tmp_path: Path
) -> None:
    # A pod whose port nothing listens on: its requests fail to connect.
    for name, port in (("a", servers[0]), ("b", refusing_port)):
        (tmp_path / "shop" / name).mkdir(parents=True)
        (tmp_path / "shop" / name / "port").write_text(f"{port}\n")
    source = workdir_endpoints(tmp_path, "shop", pods=["a", "b", "not-up"])
    assert [e.pod for e in source()] == ["a", "b"]
    with LoadGenerator(source, rate=100, count=10, path="/fail") as gen:
        result = gen.wait(30)
    assert gen.done
    assert result.sent == {("shop", "a"): 5, ("shop", "b"): 5}
    assert result.responses == {("shop", "a"): {503: 5}}
    assert result.errors == {("shop", "b"): {"ConnectionRefusedError": 5}}
    assert result.by_code() == {503: 5}


def test_loadgen_stops_by_duration_and_paces(servers: list[int]) -> None:
    """20 req/s for 1 s: request n has its slot at (n - 1) / 20 s, so there are at most 20, and
    none is sent before its slot. How many slots a busy machine fills before the second is over
    is not asserted (a slot reached too late is skipped, by design); that none is early is."""
    eps = static_endpoints([Endpoint("shop", "web", servers[0])])
    left_at: dict[int, float] = {}
    lock = threading.Lock()

    def on_response(resp: Any) -> None:
        # When the request left: its latency back from now (never later than the real time).
        left = time.monotonic() - resp.latency_s
        with lock:
            left_at[resp.seq] = left

    before = time.monotonic()
    gen = LoadGenerator(eps, rate=20, duration=1.0, on_response=on_response)
    result = gen.run()
    assert gen.done  # without a count only its duration can have ended it
    assert 1 <= result.total_sent <= 20
    assert result.total_responses == result.total_sent
    assert sorted(left_at) == list(range(1, result.total_sent + 1))
    rounding = 1e-3  # of the float clock readings: no time is allowed here
    early = {n: t - before for n, t in left_at.items() if t < before + (n - 1) / 20 - rounding}
    assert not early, early


def test_loadgen_without_endpoints_and_bounds() -> None:
    result = LoadGenerator(static_endpoints([]), rate=100, count=5).run()
    assert result.no_endpoint == 5
    assert result.total_sent == 0
    with pytest.raises(ValueError, match="stop by itself"):
        LoadGenerator(static_endpoints([]), rate=1)
    with pytest.raises(ValueError, match="rate"):
        LoadGenerator(static_endpoints([]), rate=0, count=1)
    with pytest.raises(ValueError, match="count"):
        LoadGenerator(static_endpoints([]), rate=1, count=10**9)


def test_workdir_endpoints_selector_from_pod_json(tmp_path: Path) -> None:
    for name, app in (("w1", "web"), ("w2", "web"), ("d1", "db")):
        d = tmp_path / "shop" / name
        d.mkdir(parents=True)
        (d / "port").write_text("1000\n")
        (d / "pod.json").write_text(json.dumps({"metadata": {"labels": {"app": app}}}))
    source = workdir_endpoints(tmp_path, "shop", selector={"app": "web"})
    assert [e.pod for e in source()] == ["w1", "w2"]
    listed = workdir_endpoints(
        tmp_path, "shop", selector={"app": "x"}, list_pods=lambda ns, sel: ["d1"]
    )
    assert [e.pod for e in listed()] == ["d1"]
