"""meshtraffic end to end: a real Prometheus scraping the per-pod Istio metrics derived from
access logs (synthetic ones, and real Envoy sidecars' under load from the load generator),
`kubectl logs <pod> -c istio-proxy` served by kwok from the merged CRI log files, and all of it
together on the mesh agent's sidecars for a Deployment in a local cluster."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterrelease.providers.envoy import EnvoyProcess
from filterrelease.providers.envoy_bootstrap import bootstrap_config
from localcluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.prometheus import Prometheus, file_sd_job
from meshagent.agent import MeshAgent
from meshagent.layout import ACCESS_LOG_FIELDS
from meshtraffic.accesslog import parse_line
from meshtraffic.exporter import MeshMetricsExporter
from meshtraffic.loadgen import LoadGenerator, Response, workdir_endpoints
from meshtraffic.metrics import (
    BYTES_BUCKETS,
    REQUEST_BYTES,
    REQUESTS_TOTAL,
    RESPONSE_BYTES,
    RequestMetrics,
    identity_from_name,
    parse_exposition,
)
from meshtraffic.podlogs import (
    CONTAINER,
    PodLogWriter,
    kubectl_registrar,
)
from tests.support.mesh import by_pod_code, list_pods, meshed_pod
from tests.support.polling import poll

pytestmark = pytest.mark.integration

TESTBED = Path(__file__).resolve().parents[2] / "testbed"


def access_line(
    code: int, duration_ms: int = 4, request_bytes: int | None = 90, response_bytes: int = 150
) -> str:
    return json.dumps(
        {
            "start_time": "2026-01-01T00:00:00.000Z",
            "method": "GET",
            "path": "/",
            "protocol": "HTTP/1.1",
            "response_code": code,
            "response_flags": "-" if code < 500 else "UF",
            "duration_ms": duration_ms,
            "upstream_host": "127.0.0.1:1",
            "request_id": "r",
            "x_filter_version": None,
            "downstream_wire_bytes_received": request_bytes,
            "downstream_wire_bytes_sent": response_bytes,
        }
    )


def pod_object(namespace: str, name: str, workload: str, app: str, version: str) -> dict[str, Any]:
    template_hash = "7d4b9c8f6d"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": app, "version": version, "pod-template-hash": template_hash},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{workload}-{template_hash}",
                    "uid": "00000000-0000-0000-0000-000000000000",
                    "controller": True,
                }
            ],
        },
    }


def append(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)


# -- byte histograms (pure: no process) ---------------------------------------------------------


def test_request_and_response_bytes_histograms_from_access_log_lines() -> None:
    metrics = RequestMetrics()
    identity = identity_from_name("shop", "web-7d4b9c8f6d-aaaaa")
    lines = [
        access_line(200, request_bytes=120, response_bytes=300),
        access_line(200, request_bytes=1500, response_bytes=7000),
        access_line(503, request_bytes=80, response_bytes=95),
        # No bytes meter value: counted as a request, not observed in the byte histograms.
        access_line(200, request_bytes=None, response_bytes=40),
    ]
    for line in lines:
        entry = parse_line(line)
        assert entry is not None
        metrics.observe(identity, entry)
    samples = parse_exposition(metrics.render())

    def value(name: str, code: str, **labels: str) -> float:
        hits = [
            v
            for (n, ls), v in samples.items()
            if n == name
            and ("response_code", code) in ls
            and all((k, val) in ls for k, val in labels.items())
        ]
        assert len(hits) == 1, (name, code, labels, hits)
        return hits[0]

    assert value(REQUESTS_TOTAL, "200") == 3
    assert value(f"{REQUEST_BYTES}_count", "200") == 2
    assert value(f"{REQUEST_BYTES}_sum", "200") == 120 + 1500
    assert value(f"{REQUEST_BYTES}_bucket", "200", le="100") == 0
    assert value(f"{REQUEST_BYTES}_bucket", "200", le="250") == 1
    assert value(f"{REQUEST_BYTES}_bucket", "200", le="2500") == 2
    assert value(f"{REQUEST_BYTES}_bucket", "200", le="+Inf") == 2
    assert value(f"{RESPONSE_BYTES}_count", "200") == 3
    assert value(f"{RESPONSE_BYTES}_sum", "200") == 300 + 7000 + 40
    assert value(f"{RESPONSE_BYTES}_bucket", "200", le="50") == 1
    assert value(f"{RESPONSE_BYTES}_bucket", "200", le="5000") == 2
    assert value(f"{RESPONSE_BYTES}_bucket", "200", le="10000") == 3
    assert value(f"{RESPONSE_BYTES}_sum", "503", response_flags="UF") == 95
    # Envoy's default buckets, as for the duration, and the same labels as the request count.
    bounds = {dict(ls)["le"] for (n, ls) in samples if n == f"{RESPONSE_BYTES}_bucket"} - {"+Inf"}
    assert sorted(float(b) for b in bounds) == sorted(BYTES_BUCKETS)
    count_labels = {ls for (n, ls) in samples if n == REQUESTS_TOTAL}
    for name in (f"{REQUEST_BYTES}_count", f"{RESPONSE_BYTES}_count"):
        assert {ls for (n, ls) in samples if n == name} <= count_labels
    assert f"# TYPE {REQUEST_BYTES} histogram" in metrics.render()
    assert f"# TYPE {RESPONSE_BYTES} histogram" in metrics.render()


# -- Prometheus on synthetic access logs -------------------------------------------------------


def test_prometheus_scrapes_istio_metrics_from_access_logs(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    pods = {"web-7d4b9c8f6d-aaaaa": "v1", "web-7d4b9c8f6d-bbbbb": "v2"}
    first = {"web-7d4b9c8f6d-aaaaa": {200: 2, 503: 1}, "web-7d4b9c8f6d-bbbbb": {200: 1, 503: 1}}
    second = {"web-7d4b9c8f6d-aaaaa": {200: 10, 503: 5}, "web-7d4b9c8f6d-bbbbb": {200: 7, 503: 2}}
    for pod, version in pods.items():
        d = agent / "shop" / pod
        d.mkdir(parents=True)
        (d / "pod.json").write_text(json.dumps(pod_object("shop", pod, "web", "web", version)))
        append(d / "access.log", [access_line(c) for c, n in first[pod].items() for _ in range(n)])
        (d / "port").write_text("1\n")  # the sidecar "serves"; nothing dials it here

    def expected(*batches: dict[str, dict[int, int]]) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for batch in batches:
            for pod, codes in batch.items():
                for code, n in codes.items():
                    out[(pod, str(code))] = out.get((pod, str(code)), 0) + n
        return out

    totals = "sum by (pod, response_code) (istio_requests_total)"
    with (
        MeshMetricsExporter(agent, tmp_path / "targets.json", poll_interval=0.2) as exporter,
        Prometheus(tmp_path / "prometheus", exporter.targets_file) as prom,
    ):
        assert prom.started_in is not None
        print(f"prometheus ready in {prom.started_in:.2f}s")
        t0 = time.monotonic()
        targets = prom.wait_for_targets(2, timeout=30)
        print(f"targets healthy {time.monotonic() - t0:.1f}s after start")
        assert {(t["labels"]["namespace"], t["labels"]["pod"]) for t in targets} == {
            ("shop", p) for p in pods
        }
        poll(
            lambda: by_pod_code(prom.query(totals)) == expected(first),
            timeout=15,
            what="the first batch in Prometheus",
        )
        # A few flat scrapes before and after the second batch, so the window below holds
        # the whole step of every counter.
        poll(
            lambda: all(
                s.value >= 3 for s in prom.query("count_over_time(istio_requests_total[1m])")
            ),
            timeout=15,
            what="three scrapes of the first batch",
        )
        for pod, codes in second.items():
            append(
                agent / "shop" / pod / "access.log",
                [access_line(c, 30) for c, n in codes.items() for _ in range(n)],
            )
        before, after = expected(first), expected(first, second)

        def scraped_after_the_step() -> dict[tuple[str, str], list[tuple[float, float]]] | None:
            """Every series' samples once each has three scrapes of the second batch."""
            series = {
                (s.labels["pod"], s.labels["response_code"]): s.values
                for s in prom.query("istio_requests_total[1m]")
            }
            done = set(series) == set(after) and all(
                sum(v == after[key] for _, v in values) >= 3 for key, values in series.items()
            )
            return series if done else None

        series = poll(scraped_after_the_step, timeout=20, what="three scrapes of the 2nd batch")
        # The window of each pod is cut from Prometheus's own scrape times (its clock and its
        # phase, not this process's): from just before its last scrape of the first batch to
        # its latest scrape, which both increase() and rate() then see in full.
        increase: dict[tuple[str, str], float] = {}
        rate: dict[tuple[str, str], float] = {}
        window_s: dict[str, float] = {}
        for pod in pods:
            keys = [key for key in series if key[0] == pod]
            last_before = min(max(t for t, v in series[key] if v == before[key]) for key in keys)
            at = max(t for key in keys for t, _ in series[key])
            window_ms = round((at - last_before) * 1000) + 1
            window_s[pod] = window_ms / 1000
            selector = f'istio_requests_total{{pod="{pod}"}}[{window_ms}ms]'
            for fn, out in (("increase", increase), ("rate", rate)):
                query = f"sum by (pod, response_code) ({fn}({selector}))"
                out.update(by_pod_code(prom.query(query, at=at)))
        want = expected(second)
        assert set(increase) == set(want) == set(rate)
        for key, n in want.items():
            # increase() extrapolates to the window's edges: here over the 1 ms before the
            # first sample, so a hair above the true step, never below it.
            assert n <= increase[key] <= n * 1.2 + 0.5, (key, increase[key], n)
            assert rate[key] * window_s[key[0]] == pytest.approx(increase[key], rel=1e-6)

        # Istio's labels, from the pod object (owner ReplicaSet -> Deployment "web").
        (sample,) = prom.query(
            'istio_requests_total{pod="web-7d4b9c8f6d-bbbbb", response_code="503"}'
        )
        labels = sample.labels
        assert labels["namespace"] == "shop"
        assert labels["job"] == "kubernetes-pods"
        assert labels["reporter"] == "destination"
        assert labels["destination_workload"] == "web"
        assert labels["destination_workload_namespace"] == "shop"
        assert labels["destination_app"] == "web"
        assert labels["destination_version"] == "v2"
        assert labels["destination_canonical_revision"] == "v2"
        assert labels["destination_service"] == "web.shop.svc.cluster.local"
        assert labels["source_workload"] == "unknown"
        assert labels["response_flags"] == "UF"
        assert labels["connection_security_policy"] == "none"
        assert labels["request_protocol"] == "http"

        # The histogram: every request observed once; the second batch's 30 ms are <= 50.
        counts = by_pod_code(
            prom.query("sum by (pod, response_code) (istio_request_duration_milliseconds_count)")
        )
        assert counts == expected(first, second)
        (le50,) = prom.query(
            'sum(istio_request_duration_milliseconds_bucket{le="50"})'
            ' - sum(istio_request_duration_milliseconds_bucket{le="25"})'
        )
        assert le50.value == sum(sum(c.values()) for c in second.values())
        (p99,) = prom.query(
            "histogram_quantile(0.99, sum by (le) (istio_request_duration_milliseconds_bucket))"
        )
        assert 25 < p99.value <= 50

        # Sizes: every request observed once, 90 bytes in and 150 out on the wire.
        total = sum(expected(first, second).values())
        sizes = by_pod_code(prom.query("sum by (pod, response_code) (istio_request_bytes_count)"))
        assert sizes == expected(first, second)
        (le100,) = prom.query('sum(istio_request_bytes_bucket{le="100"})')
        assert le100.value == total
        (sent,) = prom.query("sum(istio_response_bytes_sum)")
        assert sent.value == 150 * total
        (bytes_sample,) = prom.query(
            'istio_response_bytes_count{pod="web-7d4b9c8f6d-bbbbb", response_code="503"}'
        )
        assert bytes_sample.labels == {**labels, "__name__": "istio_response_bytes_count"}

        # A pod whose sidecar stops leaves the targets.
        (agent / "shop" / "web-7d4b9c8f6d-bbbbb" / "port").unlink()
        poll(
            lambda: (
                [t for t in prom.targets() if t["labels"]["pod"] == "web-7d4b9c8f6d-bbbbb"] == []
            ),
            timeout=20,
            what="the stopped pod's target to go",
        )


# -- real Envoy sidecars under load ------------------------------------------------------------


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.do_GET()

    def do_GET(self) -> None:
        code = 503 if self.path.startswith("/fail") else 200
        body = b"ok\n"
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", "yes")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def sidecar_config(upstream_port: int, access_log: Path) -> dict[str, Any]:
    """The operator's pre-flight Envoy bootstrap, with the mesh agent's JSON access log."""
    config = bootstrap_config(listener_port=0, upstream_port=upstream_port, access_log=access_log)
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["log_format"] = {"json_format": ACCESS_LOG_FIELDS}
    return config


@pytest.mark.envoy
def test_load_through_real_sidecars_matches_prometheus(tmp_path: Path, upstream_port: int) -> None:
    agent = tmp_path / "agent"
    names = ["api-58b7c9d6f4-ccccc", "api-58b7c9d6f4-ddddd"]
    with (
        EnvoyProcess(
            sidecar_config(upstream_port, agent / "shop" / names[0] / "access.log"),
            agent / "shop" / names[0],
        ) as envoy_a,
        EnvoyProcess(
            sidecar_config(upstream_port, agent / "shop" / names[1] / "access.log"),
            agent / "shop" / names[1],
        ) as envoy_b,
    ):
        for name, envoy in zip(names, (envoy_a, envoy_b), strict=True):
            (agent / "shop" / name / "access.log").touch()
            (agent / "shop" / name / "port").write_text(f"{envoy.listener_port()}\n")
        sampled: list[Response] = []
        lock = threading.Lock()

        def sample(resp: Response) -> None:
            with lock:
                if len(sampled) < 5:
                    sampled.append(resp)

        endpoints = workdir_endpoints(agent, "shop", pods=names)
        with (
            # No pod.json here: count at once under the identity guessed from the pod name.
            MeshMetricsExporter(
                agent, tmp_path / "targets.json", poll_interval=0.2, identity_grace_s=0
            ) as exporter,
            Prometheus(tmp_path / "prometheus", exporter.targets_file) as prom,
        ):
            ok = LoadGenerator(endpoints, rate=50, count=40, on_response=sample).run()
            failing = LoadGenerator(endpoints, rate=50, count=10, path="/fail").run()
            posted = LoadGenerator(
                endpoints, rate=50, count=10, method="POST", body=b"x" * 1000
            ).run()
            assert ok.sent == {("shop", n): 20 for n in names}
            assert ok.responses == {("shop", n): {200: 20} for n in names}
            assert failing.responses == {("shop", n): {503: 5} for n in names}
            assert posted.responses == {("shop", n): {200: 5} for n in names}
            assert ok.total_errors == failing.total_errors == posted.total_errors == 0
            assert sampled
            assert all(r.headers.get("x-upstream") == "yes" for r in sampled)

            want = {(n, "200"): 25.0 for n in names} | {(n, "503"): 5.0 for n in names}
            prom.wait_for_targets(2, timeout=30)
            poll(
                lambda: (
                    by_pod_code(prom.query("sum by (pod, response_code) (istio_requests_total)"))
                    == want
                ),
                timeout=20,
                what="Prometheus to count what the load generator got back",
            )
            (s,) = prom.query(f'istio_requests_total{{pod="{names[0]}", response_code="200"}}')
            assert s.labels["destination_workload"] == "api"  # guessed from the pod name
            assert s.labels["response_flags"] == "-"

            # Sizes as Envoy's downstream bytes meter saw them: headers included, so more than
            # the body (0 for a GET, 1000 for each POST; "ok\n" back), and exactly what the
            # access log says, summed per pod in Prometheus.
            wire: dict[str, tuple[int, int]] = {}
            for name in names:
                entries = [
                    json.loads(line)
                    for line in (agent / "shop" / name / "access.log").read_text().splitlines()
                ]
                assert len(entries) == 30
                for e in entries:
                    body_in = 1000 if e["method"] == "POST" else 0
                    assert e["bytes_received"] == body_in
                    assert body_in < e["downstream_wire_bytes_received"] < body_in + 400
                    assert e["bytes_sent"] < e["downstream_wire_bytes_sent"]
                wire[name] = (
                    sum(e["downstream_wire_bytes_received"] for e in entries),
                    sum(e["downstream_wire_bytes_sent"] for e in entries),
                )

            def sums(metric: str) -> dict[str, float]:
                return {
                    s.labels["pod"]: s.value for s in prom.query(f"sum by (pod) ({metric}_sum)")
                }

            assert sums(REQUEST_BYTES) == {n: float(w[0]) for n, w in wire.items()}
            assert sums(RESPONSE_BYTES) == {n: float(w[1]) for n, w in wire.items()}
            # The GETs' requests are all headers (< 1000 bytes), the POSTs' above 1000.
            (le1000,) = prom.query('sum(istio_request_bytes_bucket{le="1000"})')
            (le2500,) = prom.query('sum(istio_request_bytes_bucket{le="2500"})')
            assert (le1000.value, le2500.value) == (50, 60)

            # The same generator as a process of its own (what the benchmark runs), its
            # result as JSON when it ends.
            out = tmp_path / "loadgen.json"
            subprocess.run(
                [sys.executable, "-m", "meshtraffic.loadgen", "--workdir", str(agent),
                 "--namespace", "shop", "--pod", names[0], "--pod", names[1],
                 "--rate", "50", "--count", "10", "--path", "/fail", "--out", str(out)],
                env={**os.environ, "PYTHONPATH": str(TESTBED)},
                check=True,
                timeout=60,
            )  # fmt: skip
            summary = json.loads(out.read_text())
            assert (summary["sent"], summary["by_code"], summary["pods"]) == (10, {"503": 10}, 2)
            assert summary["errors"] == {}
            assert summary["latency_ms"]["p50"] is not None


# -- kubectl logs -c istio-proxy ---------------------------------------------------------------


def test_kubectl_logs_istio_proxy_merges_envoy_and_agent_lines(
    logs_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = logs_cluster
    agent = tmp_path / "agent"
    cluster.kubectl("create", "namespace", "shop")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(meshed_pod("shop", "web-1")))
    d = agent / "shop" / "web-1"
    append(
        d / "agent.log",
        ["2026-01-01T00:00:01.000000Z\terror\twasm\terror in converting the wasm config"],
    )
    append(
        d / "envoy.log",
        [
            "[2026-01-01 00:00:00.500][1][info][main] starting main dispatch loop",
            "[2026-01-01 00:00:02.000][1][info][upstream] lds: add/update listener",
        ],
    )

    def logs(*args: str, pod: str = "web-1") -> str | None:
        result = cluster.kubectl("logs", pod, "-n", "shop", "-c", CONTAINER, *args, check=False)
        return result.stdout if result.returncode == 0 else None

    with PodLogWriter(
        agent, register=kubectl_registrar(cluster.kubectl), poll_interval=0.2
    ) as writer:
        assert ("shop", "web-1") in writer.registered

        def merged() -> str | None:
            text = logs()
            return text if text is not None and "lds: add/update" in text else None

        text = poll(merged, timeout=60, what="kubectl logs -c istio-proxy to serve merged lines")
        assert text.splitlines() == [
            "[2026-01-01 00:00:00.500][1][info][main] starting main dispatch loop",
            "2026-01-01T00:00:01.000000Z\terror\twasm\terror in converting the wasm config",
            "[2026-01-01 00:00:02.000][1][info][upstream] lds: add/update listener",
        ]
        # New lines show up (kwok reads the file on every request), --tail and --timestamps
        # work on the CRI file.
        append(d / "agent.log", ["2026-01-01T00:00:03.000000Z\tinfo\tads\tADS: new connection"])
        poll(
            lambda: (t := logs()) and "ADS: new connection" in t,
            timeout=20,
            what="an appended line",
        )
        assert logs("--tail=1") == "2026-01-01T00:00:03.000000Z\tinfo\tads\tADS: new connection\n"
        stamped = logs("--timestamps")
        assert stamped is not None
        assert stamped.splitlines()[1].startswith("2026-01-01T00:00:01")

        # A pod meshed after the writer started gets its rule too; the app container of a pod
        # with a rule has none.
        cluster.kubectl("apply", "-f", "-", input=json.dumps(meshed_pod("shop", "web-2")))
        append(agent / "shop" / "web-2" / "envoy.log", ["second pod's envoy"])
        poll(
            lambda: logs(pod="web-2") == "second pod's envoy\n",
            timeout=30,
            what="the second pod's logs",
        )
        app = cluster.kubectl("logs", "web-1", "-n", "shop", "-c", "app", check=False)
        assert app.returncode != 0


# -- everything on the mesh agent's sidecars ---------------------------------------------------


@pytest.mark.envoy
def test_mesh_agent_sidecars_metrics_and_logs(logs_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = logs_cluster
    install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
    cluster.kubectl("create", "namespace", "mesh")
    cluster.kubectl("label", "namespace", "mesh", "istio-injection=enabled")
    labels = {"app": "web", "version": "v3"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "mesh"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.local/app:1",
                            "ports": [{"containerPort": 8080}],
                        },
                        # No injector here: the pod template declares the sidecar container,
                        # so `kubectl logs -c istio-proxy` names a container that exists.
                        {"name": CONTAINER, "image": "registry.local/proxyv2:1"},
                    ],
                },
            },
        },
    }
    agent_dir = tmp_path / "agent"
    with (
        MeshAgent(agent_dir, cluster.admin_kubeconfig, istio_version=DEFAULT_ISTIO_VERSION),
        MeshMetricsExporter(
            agent_dir,
            tmp_path / "targets.json",
            agent_targets_file=tmp_path / "agent-targets.json",
            poll_interval=0.2,
        ) as exporter,
        PodLogWriter(agent_dir, register=kubectl_registrar(cluster.kubectl)) as writer,
        Prometheus(
            tmp_path / "prometheus",
            exporter.targets_file,
            extra_jobs=[
                file_sd_job("meshagent", tmp_path / "agent-targets.json", honor_labels=True)
            ],
        ) as prom,
    ):
        # The workload comes after the mesh, as with istiod running before any deployment.
        cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))
        pods = poll(
            lambda: sorted(exporter.pods) if len(exporter.pods) == 2 else None,
            timeout=60,
            what="two sidecars serving",
            on_timeout=lambda: (
                cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout
                + (agent_dir / "agent.log").read_text()
            ),
        )
        names = [pod for _, pod in pods]
        result = LoadGenerator(
            workdir_endpoints(
                agent_dir, "mesh", selector={"app": "web"}, list_pods=list_pods(cluster)
            ),
            rate=40,
            count=40,
        ).run()
        assert result.responses == {("mesh", n): {200: 20} for n in names}
        prom.wait_for_targets(2, timeout=30)
        want = {(n, "200"): 20.0 for n in names}
        poll(
            lambda: (
                by_pod_code(prom.query("sum by (pod, response_code) (istio_requests_total)"))
                == want
            ),
            timeout=30,
            what="Prometheus to count the load",
        )
        # One series per pod, all under the identity from the pod object the agent keeps in
        # pod.json: owner ReplicaSet -> Deployment "web", version from the pod's labels.
        series = prom.query('istio_requests_total{namespace="mesh"}')
        assert len(series) == 2
        # The byte histograms observe every request, from the access log the agent configures.
        sized = prom.query('sum by (pod) (istio_response_bytes_count{namespace="mesh"})')
        assert {(s.labels["pod"], s.value) for s in sized} == {(n, 20.0) for n in names}
        assert {s.labels["destination_workload"] for s in series} == {"web"}
        assert {s.labels["destination_version"] for s in series} == {"v3"}
        # The agent's own series (namespace/pod labels honoured) are in the same Prometheus.
        prom.wait_for_targets(1, job="meshagent", timeout=30)
        up = prom.query('meshagent_sidecar_up{namespace="mesh"}')
        assert sorted(s.labels["pod"] for s in up) == names

        def istio_proxy_log() -> str | None:
            r = cluster.kubectl("logs", names[0], "-n", "mesh", "-c", CONTAINER, check=False)
            return r.stdout if r.returncode == 0 and "[info][main]" in r.stdout else None

        text = poll(istio_proxy_log, timeout=30, what="the sidecar's log via kubectl logs")
        assert ("mesh", names[0]) in writer.registered
        assert f"starting sidecar for pod mesh/{names[0]}" in text  # the agent's line
        assert "[info][main]" in text  # Envoy's own lines
