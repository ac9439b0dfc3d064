"""What only the operator can refuse: a spec the installed CRD accepts but this operator cannot
honour (here: a CRD newer than the operator, which lets a canary strategy through). The operator
reports InvalidSpec and leaves the running WasmPlugin exactly as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from localcluster import LocalCluster
from tests.integration.conftest import Published, apply_json, get_json
from tests.integration.test_operator import (
    TIMEOUT,
    condition,
    events,
    example,
    plugin,
    release,
    wait_ready,
)
from tests.unit.conftest import ROOT

pytestmark = pytest.mark.integration

CRD_PATH = ROOT / "crds" / "filterreleases.filterrelease.dev.yaml"


@pytest.fixture
def crd_without_canary_rule(istio_cluster: LocalCluster) -> Iterator[None]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    canary = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["strategy"]["properties"]["canary"]
    del canary["x-kubernetes-validations"]
    istio_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd)
    )
    try:
        yield
    finally:
        istio_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))


@pytest.mark.usefixtures("operator", "crd_without_canary_rule")
def test_unimplemented_canary_is_reported_and_the_plugin_kept(
    istio_cluster: LocalCluster, namespace: str, published: Published
) -> None:
    assert (
        apply_json(istio_cluster, example(namespace, registry=published.registry)).returncode == 0
    )
    wait_ready(istio_cluster, namespace, "security-headers")
    before = plugin(istio_cluster, namespace, "security-headers")

    canary = example(namespace, registry=published.registry)
    canary["spec"]["module"]["url"] = published.url("v1.2.0")
    canary["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 10}, {"pause": {}}]}}
    # The API server may take a moment to use the loosened CRD: retry the apply until it does.
    istio_cluster.wait_for(
        lambda: apply_json(istio_cluster, canary).returncode == 0,
        timeout=TIMEOUT,
        what="the API server to accept a canary strategy",
    )

    def invalid() -> bool:
        c = condition(release(istio_cluster, namespace, "security-headers"), "Degraded")
        return bool(c and c["reason"] == "InvalidSpec")

    istio_cluster.wait_for(invalid, timeout=TIMEOUT, what="Degraded/InvalidSpec")
    body = release(istio_cluster, namespace, "security-headers")
    assert body["status"]["phase"] == "Degraded"
    assert body["status"]["observedGeneration"] == 2
    assert "spec.strategy.canary is not implemented yet" in body["status"]["message"]
    assert "the proxies keep version v1.1.0" in body["status"]["message"]
    assert condition(body, "Ready")["status"] == "False"  # type: ignore[index]
    assert body["status"]["stable"]["version"] == "v1.1.0"
    after = get_json(istio_cluster, "wasmplugin", "security-headers", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    warnings = [
        e for e in events(istio_cluster, namespace, "security-headers") if e[0] == "Warning"
    ]
    assert [e[1] for e in warnings] == ["InvalidSpec"]
