"""Proxies whose admin cannot be read: pods with an istio-proxy container the operator cannot
port-forward to (on this control-plane-only cluster kwok has no PortForward for them, as a pod
whose proxy has no admin port would be). The release says confirmation is unavailable, and
spec.proxyConfirmation.whenUnreachable decides: trust the write (the default without a canary)
or hold."""

from __future__ import annotations

from typing import Any

import pytest

from devcluster.install import OPERATOR_NAMESPACE, OPERATOR_SERVICEACCOUNT
from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from tests.support.kubectl import apply_json
from tests.support.mesh import meshed_pod
from tests.support.releases import TIMEOUT, condition, example, release, wait_ready
from tests.support.wasm import Published

pytestmark = pytest.mark.integration


def proxied_pods(cluster: LocalCluster, namespace: str, labels: dict[str, str]) -> None:
    for i in range(2):
        manifest = meshed_pod(namespace, f"proxied-{i}")
        manifest["metadata"]["labels"] = labels
        apply_json(cluster, manifest)
    cluster.kubectl(
        "wait", "--for=jsonpath={.status.phase}=Running", "pods", "-n", namespace, "--all",
        "--timeout=60s",
    )  # fmt: skip


def release_for_pods(namespace: str, published: Published, **confirmation: Any) -> dict[str, Any]:
    body = example(namespace, registry=published.registry)
    if confirmation:
        body["spec"]["proxyConfirmation"] = confirmation
    return body


@pytest.mark.usefixtures("operator")
def test_unreadable_proxies_are_trusted_by_default_and_said_so(
    istio_cluster: LocalCluster, namespace: str, published: Published
) -> None:
    body = release_for_pods(namespace, published)
    proxied_pods(istio_cluster, namespace, body["spec"]["selector"]["matchLabels"])
    apply_json(istio_cluster, body)
    ready = wait_ready(istio_cluster, namespace, "security-headers")
    proxies = ready["status"]["proxies"]
    assert proxies["unreachable"] == 2, proxies
    assert proxies["confirmed"] == 0
    confirmed = condition(ready, "ProxiesConfirmed")
    assert confirmed is not None
    assert confirmed["status"] == "Unknown"
    assert confirmed["reason"] == "ConfirmationUnavailable"
    assert "TrustWrite" in confirmed["message"]
    assert "proxied-0" in confirmed["message"]


@pytest.mark.usefixtures("operator")
def test_with_hold_unreadable_proxies_keep_the_release_from_ready_then_time_out(
    istio_cluster: LocalCluster, namespace: str, published: Published
) -> None:
    body = release_for_pods(namespace, published, whenUnreachable="Hold", timeoutSeconds=5)
    proxied_pods(istio_cluster, namespace, body["spec"]["selector"]["matchLabels"])
    apply_json(istio_cluster, body)

    def reason(wanted: str) -> bool:
        current = release(istio_cluster, namespace, "security-headers")
        ready = condition(current, "Ready")
        return ready is not None and ready["reason"] == wanted

    istio_cluster.wait_for(lambda: reason("ProxiesConverging") or reason("ProxiesNotConverged"),
                           timeout=TIMEOUT, what="the release waiting for its proxies")  # fmt: skip
    waiting = release(istio_cluster, namespace, "security-headers")
    assert condition(waiting, "Ready")["status"] == "False"  # type: ignore[index]
    assert waiting["status"]["phase"] in ("Progressing", "Degraded")
    assert "stable" not in waiting["status"]  # nothing is the last known good yet
    istio_cluster.wait_for(lambda: reason("ProxiesNotConverged"), timeout=TIMEOUT,
                           what="the release past its confirmation timeout")  # fmt: skip
    late = release(istio_cluster, namespace, "security-headers")
    assert late["status"]["phase"] == "Degraded"
    assert "not converged after 5s" in late["status"]["message"]
    assert "proxied-" in late["status"]["message"]


def test_the_operator_may_port_forward_to_pods_and_nothing_more(
    istio_cluster: LocalCluster, operator: OperatorProcess, namespace: str
) -> None:
    """deploy/'s RBAC grants pods/portforward (create, get) and not pods/exec or pods/attach."""
    user = ["--as", f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICEACCOUNT}"]
    for subresource, allowed in (("portforward", "yes"), ("exec", "no"), ("attach", "no")):
        out = istio_cluster.kubectl(
            "auth", "can-i", "create", "pods", f"--subresource={subresource}", "-n", namespace,
            *user, check=False,
        )  # fmt: skip
        assert out.stdout.strip() == allowed, (subresource, out.stdout, out.stderr)
    assert operator.pid is not None
