"""What only the operator can refuse: a spec the CRD accepts but the operator cannot honour (a
successCondition that does not parse, an AnalysisTemplate that does not exist). The operator
reports InvalidSpec and changes nothing: the running WasmPlugin stays exactly as it was, no
canary plugin appears and no pod is relabelled."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster import LocalCluster
from tests.support.kubectl import apply_json, get_json
from tests.support.releases import (
    TIMEOUT,
    condition,
    example,
    plugin,
    release,
    wait_events,
    wait_ready,
)
from tests.support.wasm import Published

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]


def _metric(**provider: Any) -> dict[str, Any]:
    return {"name": "m", "interval": "10s", "count": 2, "provider": provider}


@pytest.mark.parametrize(
    ("analysis", "message"),
    [
        (
            {"metrics": [_metric(prometheus={"query": "up", "successCondition": "result <<< 1"})]},
            "successCondition",
        ),
        ({"templates": [{"name": "missing"}]}, "AnalysisTemplate 'missing' not found"),
    ],
    ids=["bad successCondition", "missing template"],
)
def test_a_spec_only_the_operator_can_refuse_changes_nothing(
    istio_cluster: LocalCluster,
    namespace: str,
    published: Published,
    analysis: dict[str, Any],
    message: str,
) -> None:
    assert (
        apply_json(istio_cluster, example(namespace, registry=published.registry)).returncode == 0
    )
    wait_ready(istio_cluster, namespace, "security-headers")
    before = plugin(istio_cluster, namespace, "security-headers")

    canary = example(namespace, registry=published.registry)
    canary["spec"]["module"]["url"] = published.url("v1.2.0")
    canary["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 10}, {"analysis": analysis}]}}
    result = apply_json(istio_cluster, canary)
    assert result.returncode == 0, result.stderr  # the API server accepts it

    def invalid() -> bool:
        c = condition(release(istio_cluster, namespace, "security-headers"), "Degraded")
        return bool(c and c["reason"] == "InvalidSpec")

    istio_cluster.wait_for(invalid, timeout=TIMEOUT, what="Degraded/InvalidSpec")
    body = release(istio_cluster, namespace, "security-headers")
    assert body["status"]["phase"] == "Degraded"
    assert body["status"]["observedGeneration"] == 2
    assert message in body["status"]["message"]
    assert "the proxies keep version v1.1.0" in body["status"]["message"]
    assert condition(body, "Ready")["status"] == "False"  # type: ignore[index]
    assert body["status"]["stable"]["version"] == "v1.1.0"
    assert "split" not in body["status"]
    after = get_json(istio_cluster, "wasmplugin", "security-headers", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    plugins = istio_cluster.kubectl("get", "wasmplugins", "-n", namespace, "-o", "name").stdout
    assert plugins.split() == ["wasmplugin.extensions.istio.io/security-headers"]
    found = wait_events(istio_cluster, namespace, "security-headers", "InvalidSpec")
    assert [e[1] for e in found if e[0] == "Warning"] == ["InvalidSpec"]
