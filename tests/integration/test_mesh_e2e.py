"""The whole data plane as the launcher starts it (MeshCluster): a bad filter version breaks
requests in real Envoy sidecars, and the operator's signals show it: istio_requests_total in
a real Prometheus counts every response exactly, and `kubectl logs -c istio-proxy` carries
the Wasm panic. Stopping the cluster, or failing to start it, leaves no process behind."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import ClusterStartError
from localcluster.mesh import MeshCluster, meshed_deployment
from localcluster.oci_publish import publish
from meshtraffic.loadgen import LoadGenerator, LoadResult, workdir_endpoints
from meshtraffic.podlogs import CONTAINER
from tests.support.mesh import by_pod_code, list_pods
from tests.support.polling import poll
from tests.support.processes import still_running
from tests.support.wasm import with_custom_section

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

NS = "mesh"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCluster]:
    # Module-scoped and private to this file: the last test stops it on purpose.
    with MeshCluster(tmp_path_factory.mktemp("mesh-e2e"), nodes=2) as c:
        yield c


def test_a_panicking_filter_shows_in_prometheus_and_proxy_logs(
    cluster: MeshCluster, filter_modules: dict[str, bytes]
) -> None:
    stack = cluster.mesh
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(meshed_deployment("web", NS, 2)))
    pods = poll(
        lambda: (
            sorted(p for _, p in stack.exporter.pods) if len(stack.exporter.pods) == 2 else None
        ),
        timeout=90,
        what="two sidecars serving",
    )
    module = with_custom_section(filter_modules["panicky"], "e2e", b"1")
    digest = publish(cluster.registry.host, "filters/panicky", "v1", module, "oci-wasm")
    plugin = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "panicky", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "url": f"oci://{cluster.registry.host}/filters/panicky@{digest}",
            "sha256": digest.removeprefix("sha256:"),
            "priority": 10,
            "failStrategy": "FAIL_CLOSE",
            "pluginConfig": {"panic_every": 1},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(plugin))
    endpoints = workdir_endpoints(stack.agent_dir, NS, selector={"app": "web"},
                                  list_pods=list_pods(cluster))  # fmt: skip

    sent: Counter[tuple[str, str]] = Counter()

    def run(count: int) -> LoadResult:
        result = LoadGenerator(endpoints, rate=40, count=count).run()
        for (_, pod), codes in result.responses.items():
            for code, n in codes.items():
                sent[(pod, str(code))] += n
        return result

    def broken() -> bool:
        return all(codes == {503: 2} for codes in run(4).responses.values())

    poll(lambda: broken() or None, timeout=60, what="the panicking filter on both sidecars")
    result = run(40)
    assert result.responses == {(NS, pod): {503: 20} for pod in pods}

    stack.prometheus.wait_for_targets(2, timeout=30)
    query = f'sum by (pod, response_code) (istio_requests_total{{namespace="{NS}"}})'
    poll(
        lambda: by_pod_code(stack.prometheus.query(query)) == dict(sent) or None,
        timeout=60,
        what=f"Prometheus to count exactly what was sent: {dict(sent)}",
    )

    def panic_in_logs() -> str | None:
        out = cluster.kubectl("logs", pods[0], "-n", NS, "-c", CONTAINER, check=False)
        return out.stdout if out.returncode == 0 and "deliberate panic" in out.stdout else None

    text = poll(panic_in_logs, timeout=30, what="the Wasm panic in kubectl logs -c istio-proxy")
    assert "proxy_on_request_headers" in text


def test_stop_leaves_no_process_behind(cluster: MeshCluster) -> None:
    # Runs last in this module, after the test above left two sidecars serving.
    pids = cluster.pids
    envoys = {name for name in pids if name.startswith("envoy ")}
    assert envoys == {f"envoy {NS}/{pod}" for _, pod in cluster.mesh.exporter.pods}
    assert len(envoys) == 2
    assert {"prometheus", "kube-apiserver", "etcd", "kwok", "registry"} <= set(pids)
    cluster.stop()
    cluster.stop()
    leftovers = still_running(pids)
    assert not leftovers, f"still running after stop(): {leftovers}"
    assert not _mesh_threads(), "mesh threads still running after stop()"


def test_a_data_plane_that_fails_to_start_stops_the_cluster(tmp_path: Path) -> None:
    # Prometheus is the data plane's last part: everything before it (control plane, Istio's
    # CRDs, the agent, the exporter, the pod log writer) is up when it fails.
    cluster = MeshCluster(tmp_path, nodes=1, prometheus_binary=tmp_path / "no-prometheus")
    with pytest.raises(ClusterStartError, match="prometheus binary not found"):
        cluster.start()
    pids = cluster.pids
    assert {"kube-apiserver", "etcd", "kwok"} <= set(pids)
    leftovers = still_running(pids)
    assert not leftovers, f"still running after a failed start: {leftovers}"
    assert not _mesh_threads(), "mesh threads still running after a failed start"


def _mesh_threads() -> list[str]:
    """Threads of the agent, its sidecars, the exporter and the pod log writer still alive."""
    prefixes = ("meshagent", "sidecar-", "informer-", "meshtraffic")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]
