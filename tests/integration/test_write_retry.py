"""A WasmPlugin write that fails on something transient: here a validating webhook for
WasmPlugins whose endpoint is down (as Istio's own validation webhook is while istiod restarts),
so the real API server answers 500. The release is Progressing, then Degraded with
ProgressDeadlineExceeded; the proxies keep the last good version throughout; and the release
recovers on its own once the webhook is back."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from localcluster import LocalCluster
from tests.support.kubectl import apply_json
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

pytestmark = pytest.mark.integration


class WasmPluginWebhook:
    """A validating webhook for WasmPlugins in one namespace, switched off and on."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.name = f"wasmplugin-validation-{namespace}"
        # Bound but never listening, until close(): the API server's calls are refused, and no
        # other process can start listening on the port meanwhile.
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind(("127.0.0.1", 0))
        closed_port = self._closed.getsockname()[1]
        self.config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [
                {
                    "name": "validation.wasmplugins.test.filterrelease.dev",
                    "clientConfig": {"url": f"https://127.0.0.1:{closed_port}/validate"},
                    "rules": [
                        {
                            "apiGroups": ["extensions.istio.io"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["wasmplugins"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 2,
                }
            ],
        }

    def down(self) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(self.config))

    def up(self) -> None:
        self.cluster.kubectl(
            "delete", "validatingwebhookconfiguration", self.name, "--ignore-not-found"
        )

    def close(self) -> None:
        self._closed.close()


@pytest.fixture
def webhook(istio_cluster: LocalCluster, namespace: str) -> Iterator[WasmPluginWebhook]:
    hook = WasmPluginWebhook(istio_cluster, namespace)
    try:
        yield hook
    finally:
        try:
            hook.up()
        finally:
            hook.close()


@pytest.mark.usefixtures("operator")
def test_transient_write_failure_holds_then_recovers(
    istio_cluster: LocalCluster, namespace: str, webhook: WasmPluginWebhook, published: Published
) -> None:
    assert (
        apply_json(istio_cluster, example(namespace, registry=published.registry)).returncode == 0
    )
    wait_ready(istio_cluster, namespace, "security-headers")
    webhook.down()

    v2 = example(namespace, registry=published.registry)
    v2["spec"]["module"]["url"] = published.url("v1.2.0")
    v2["spec"]["progressDeadlineSeconds"] = 10
    assert apply_json(istio_cluster, v2).returncode == 0

    def reason(type_: str) -> str | None:
        c = condition(release(istio_cluster, namespace, "security-headers"), type_)
        return c["reason"] if c and c["status"] == "True" else None

    istio_cluster.wait_for(
        lambda: reason("Progressing") == "WriteRetrying", timeout=TIMEOUT, what="WriteRetrying"
    )
    body = release(istio_cluster, namespace, "security-headers")
    assert body["status"]["phase"] == "Progressing"
    assert "failed calling webhook" in body["status"]["message"]
    assert plugin(istio_cluster, namespace, "security-headers")["spec"]["url"] == published.pinned(
        "v1.1.0"
    )

    istio_cluster.wait_for(
        lambda: reason("Degraded") == "ProgressDeadlineExceeded",
        timeout=TIMEOUT,
        what="ProgressDeadlineExceeded after 10s",
    )
    body = release(istio_cluster, namespace, "security-headers")
    assert body["status"]["phase"] == "Degraded"
    assert body["status"]["stable"]["version"] == "v1.1.0"
    assert plugin(istio_cluster, namespace, "security-headers")["spec"]["url"] == published.pinned(
        "v1.1.0"
    )
    wait_events(
        istio_cluster, namespace, "security-headers", "WriteRetrying", "ProgressDeadlineExceeded"
    )

    webhook.up()
    body = wait_ready(istio_cluster, namespace, "security-headers", generation=2)
    assert body["status"]["phase"] == "Healthy"
    assert body["status"]["applied"]["version"] == "v1.2.0"
    assert plugin(istio_cluster, namespace, "security-headers")["spec"]["url"] == published.pinned(
        "v1.2.0"
    )
