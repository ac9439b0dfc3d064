"""The whole data plane as the launcher starts it (MeshStack): a bad filter version breaks
requests in real Envoy sidecars, and the operator's signals show it: istio_requests_total in
a real Prometheus counts every response exactly, and `kubectl logs -c istio-proxy` carries
the Wasm panic."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster import LocalCluster
from localcluster.install import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.mesh import MeshStack, install_mesh_crds, mesh_kwok_config
from localcluster.oci_publish import publish
from meshtraffic.loadgen import LoadGenerator, LoadResult, workdir_endpoints
from meshtraffic.podlogs import CONTAINER
from tests.integration.conftest import with_custom_section
from tests.integration.test_meshtraffic import by_pod_code, list_pods, poll

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

NS = "mesh"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, MeshStack]]:
    workdir = tmp_path_factory.mktemp("mesh-e2e")
    with LocalCluster(workdir / "cluster", nodes=2, kwok_configs=[mesh_kwok_config(workdir)]) as c:
        install_istio_crds(c, DEFAULT_ISTIO_VERSION)
        install_mesh_crds(c)
        with MeshStack(c, workdir / "mesh") as stack:
            yield c, stack


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {"name": "app", "image": "registry.local/app:1"},
                        # No injector: the template declares the sidecar container itself.
                        {"name": CONTAINER, "image": "registry.local/proxyv2:1"},
                    ],
                },
            },
        },
    }


def test_a_panicking_filter_shows_in_prometheus_and_proxy_logs(
    mesh: tuple[LocalCluster, MeshStack], filter_modules: dict[str, bytes]
) -> None:
    cluster, stack = mesh
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment("web", 2)))
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
