"""The pod admission webhook on the real API server, served by the real operator subprocess.

While a release is split (a canary rollout in progress: status.split), a pod it selects that is
created in a meshed namespace must join the stable track; everything else passes unchanged.
Polls use server-side dry runs, which go through mutating webhooks without creating anything.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from devcluster.install import OPERATOR_NAMESPACE
from devcluster.operator_process import OperatorProcess
from filterrelease.core.tracks import track_label
from localcluster import LocalCluster
from tests.support.kubectl import get_json
from tests.support.releases import condition, example
from tests.support.wasm import Published

pytestmark = [pytest.mark.integration]

# Generous: the first release of a session runs pre-flight's Envoy dry run on a cold cache,
# on 2 shared cores.
TIMEOUT = 60.0
RELEASE = "security-headers"  # the example's name; it selects app=frontend
TRACK = track_label(RELEASE)
WEBHOOK = "pod-tracks.filterrelease.dev"

_counter = iter(range(1_000_000))


def wait_default_serviceaccount(cluster: LocalCluster, namespace: str) -> None:
    # Pods are refused until the controller manager has made the namespace's ServiceAccount.
    cluster.wait_for(
        lambda: get_json(cluster, "serviceaccount", "default", "-n", namespace) is not None,
        timeout=TIMEOUT,
        what=f"ServiceAccount {namespace}/default",
    )


@pytest.fixture
def meshed(istio_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace labelled for sidecar injection, as Istio's users label theirs."""
    name = f"adm{next(_counter)}"
    istio_cluster.kubectl("create", "namespace", name)
    istio_cluster.kubectl("label", "namespace", name, "istio-injection=enabled")
    wait_default_serviceaccount(istio_cluster, name)
    yield name
    istio_cluster.kubectl("delete", "namespace", name, "--wait=false")


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
    }


def create_pod(
    cluster: LocalCluster, namespace: str, manifest: dict[str, Any], *, dry_run: bool = False
) -> tuple[dict[str, str] | None, str]:
    """Create a pod; (its labels as admitted, kubectl's stderr); labels None when refused."""
    args = ["create", "-n", namespace, "-f", "-", "-o", "json"]
    if dry_run:
        args.append("--dry-run=server")
    result = cluster.kubectl(*args, input=json.dumps(manifest), check=False)
    if result.returncode != 0:
        return None, result.stderr
    return dict(json.loads(result.stdout)["metadata"].get("labels") or {}), result.stderr


def track_when_created(cluster: LocalCluster, namespace: str, labels: dict[str, str]) -> Any:
    """The track label a pod with `labels` would get if created now (server-side dry run)."""
    admitted, stderr = create_pod(cluster, namespace, pod("probe", labels), dry_run=True)
    assert admitted is not None, stderr
    return admitted.get(TRACK)


def split(cluster: LocalCluster, namespace: str) -> Any:
    body = get_json(cluster, "filterrelease", RELEASE, "-n", namespace)
    return (body or {}).get("status", {}).get("split")


def release_with_canary(
    cluster: LocalCluster, namespace: str, published: Published
) -> dict[str, Any]:
    """v1.1.0 released, with a canary strategy that pauses until promoted; the manifest."""
    manifest = example(namespace, registry=published.registry)
    manifest["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def ready() -> bool:
        c = condition(get_json(cluster, "filterrelease", RELEASE, "-n", namespace), "Ready")
        return c is not None and c["status"] == "True"

    cluster.wait_for(ready, timeout=TIMEOUT, what=f"FilterRelease {namespace}/{RELEASE} Ready")
    return manifest


def roll_out_canary(cluster: LocalCluster, manifest: dict[str, Any], published: Published) -> None:
    """v1.2.0 as a canary: the operator marks the release split (and tells admission) before
    it narrows anything."""
    manifest["spec"]["module"]["url"] = published.url("v1.2.0")
    manifest["spec"]["pluginConfig"]["version"] = "v1.2.0"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    namespace = manifest["metadata"]["namespace"]
    cluster.wait_for(
        lambda: split(cluster, namespace) is True,
        timeout=TIMEOUT,
        what=f"FilterRelease {namespace}/{RELEASE} split",
    )


def wait_track(cluster: LocalCluster, namespace: str, want: str | None) -> None:
    cluster.wait_for(
        lambda: track_when_created(cluster, namespace, {"app": "frontend"}) == want,
        timeout=TIMEOUT,
        what=f"new frontend pods in {namespace} to get track {want}",
    )


@pytest.mark.usefixtures("operator")
def test_new_pods_of_a_split_release_join_the_stable_track(
    istio_cluster: LocalCluster, meshed: str, published: Published
) -> None:
    manifest = release_with_canary(istio_cluster, meshed, published)
    # Not split (one version everywhere): nothing to add.
    assert track_when_created(istio_cluster, meshed, {"app": "frontend"}) is None

    roll_out_canary(istio_cluster, manifest, published)
    # The operator told admission before it wrote status.split: no waiting from here on.
    assert track_when_created(istio_cluster, meshed, {"app": "frontend"}) == "stable"

    labels, stderr = create_pod(istio_cluster, meshed, pod("frontend-1", {"app": "frontend"}))
    assert labels == {"app": "frontend", TRACK: "stable"}, stderr
    # Created by a controller: no name yet at admission, only generateName.
    generated = pod("", {"app": "frontend", "pod-template-hash": "7d4b9"})
    del generated["metadata"]["name"]
    generated["metadata"]["generateName"] = "frontend-7d4b9-"
    labels, stderr = create_pod(istio_cluster, meshed, generated)
    assert labels is not None, stderr
    assert labels[TRACK] == "stable"
    # Not selected by the release: untouched.
    labels, _ = create_pod(istio_cluster, meshed, pod("cart-1", {"app": "cart"}))
    assert labels == {"app": "cart"}
    # Already on a track (moved by the operator, or made by hand): it stays there.
    labels, _ = create_pod(
        istio_cluster, meshed, pod("frontend-2", {"app": "frontend", TRACK: "canary"})
    )
    assert labels == {"app": "frontend", TRACK: "canary"}

    # Rolled back: the split ends, and new pods are left as they come.
    istio_cluster.kubectl(
        "annotate", "filterrelease", RELEASE, "-n", meshed, "filterrelease.dev/request=abort"
    )
    istio_cluster.wait_for(
        lambda: split(istio_cluster, meshed) is None,
        timeout=TIMEOUT,
        what="the split to end after the abort",
    )
    wait_track(istio_cluster, meshed, None)


@pytest.mark.usefixtures("operator")
def test_unmeshed_namespaces_are_not_sent_through_the_webhook(
    istio_cluster: LocalCluster, namespace: str, published: Published
) -> None:
    # A split release in a namespace without sidecar injection: its pods are not sent to the
    # webhook (no WasmPlugin acts on a pod without a sidecar anyway).
    wait_default_serviceaccount(istio_cluster, namespace)
    roll_out_canary(
        istio_cluster, release_with_canary(istio_cluster, namespace, published), published
    )
    labels, stderr = create_pod(istio_cluster, namespace, pod("frontend-1", {"app": "frontend"}))
    assert labels == {"app": "frontend"}, stderr


def test_the_webhook_configuration_is_ours(
    istio_cluster: LocalCluster, operator: OperatorProcess
) -> None:
    config = get_json(istio_cluster, "mutatingwebhookconfiguration", WEBHOOK)
    assert config is not None
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["url"] == f"https://127.0.0.1:{operator.webhook_port}/pod-tracks"
    assert hook["failurePolicy"] == "Fail"
    assert hook["rules"][0]["resources"] == ["pods"]
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["namespaceSelector"]["matchLabels"] == {"istio-injection": "enabled"}
    exempt = hook["namespaceSelector"]["matchExpressions"][0]
    assert exempt["operator"] == "NotIn"
    assert set(exempt["values"]) == {"kube-system", OPERATOR_NAMESPACE}
    # Owned by the operator's namespace: uninstalling removes the webhook with it.
    owner_ns = get_json(istio_cluster, "namespace", OPERATOR_NAMESPACE)
    assert config["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "name": OPERATOR_NAMESPACE,
            "uid": owner_ns["metadata"]["uid"],
        }
    ]
    # The caBundle is the CA of the certificate the operator serves: a TLS client that trusts
    # only it, as the API server does, completes a handshake with the webhook for 127.0.0.1.
    ca = base64.b64decode(hook["clientConfig"]["caBundle"]).decode()
    context = ssl.create_default_context(cadata=ca)
    with (
        socket.create_connection(("127.0.0.1", operator.webhook_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() is not None


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_pod_creation_while_the_operator_is_down(
    istio_cluster: LocalCluster,
    namespace: str,
    meshed: str,
    operator: OperatorProcess,
    how: str,
) -> None:
    """Fail closed in meshed namespaces, only there, and back as soon as the operator is."""
    wait_default_serviceaccount(istio_cluster, namespace)
    if how == "stop":
        operator.stop()  # a clean shutdown (SIGTERM), as for an upgrade or a drained node
    else:
        operator.kill()  # a crash, or a node lost
    try:
        # The configuration stays either way: kopf's managed one would be withdrawn on a clean
        # shutdown, and pods created meanwhile would skip the label.
        assert get_json(istio_cluster, "mutatingwebhookconfiguration", WEBHOOK) is not None
        labels, stderr = create_pod(istio_cluster, meshed, pod("frontend-1", {"app": "frontend"}))
        assert labels is None
        assert f'failed calling webhook "{WEBHOOK}"' in stderr
        assert get_json(istio_cluster, "pod", "frontend-1", "-n", meshed) is None
        # Elsewhere the cluster does not notice.
        labels, stderr = create_pod(istio_cluster, namespace, pod("other", {"app": "frontend"}))
        assert labels == {"app": "frontend"}, stderr
    finally:
        operator.start()
    # Back up (new self-signed certificate, configuration rewritten): pods are admitted again.
    frontend = pod("frontend-1", {"app": "frontend"})
    istio_cluster.wait_for(
        lambda: create_pod(istio_cluster, meshed, frontend)[0] is not None,
        timeout=TIMEOUT,
        what="pod creation in a meshed namespace after the operator's restart",
    )


# -- a deleted release's track labels -----------------------------------------------------------


def tracks(cluster: LocalCluster, namespace: str) -> dict[str, str]:
    """Pod name → its value of the release's track label, for the pods that carry one."""
    pods = get_json(cluster, "pods", "-n", namespace) or {"items": []}
    return {
        p["metadata"]["name"]: p["metadata"]["labels"][TRACK]
        for p in pods["items"]
        if TRACK in (p["metadata"].get("labels") or {})
    }


def split_four_pods(cluster: LocalCluster, namespace: str, published: Published) -> None:
    """Four frontend pods, then the release at v1.1.0 and v1.2.0 on half of them (the pause)."""
    for i in range(4):
        labels, stderr = create_pod(cluster, namespace, pod(f"frontend-{i}", {"app": "frontend"}))
        assert labels is not None, stderr
    roll_out_canary(cluster, release_with_canary(cluster, namespace, published), published)
    cluster.wait_for(
        lambda: sorted(tracks(cluster, namespace).values()) == ["canary"] * 2 + ["stable"] * 2,
        timeout=TIMEOUT,
        what="two of the four pods on the canary, two on the stable track",
    )


@pytest.mark.usefixtures("operator")
def test_a_release_deleted_mid_canary_takes_its_track_labels_off_the_pods(
    istio_cluster: LocalCluster, meshed: str, published: Published
) -> None:
    split_four_pods(istio_cluster, meshed, published)
    istio_cluster.kubectl("delete", "filterrelease", RELEASE, "-n", meshed)
    istio_cluster.wait_for(
        lambda: tracks(istio_cluster, meshed) == {},
        timeout=TIMEOUT,
        what="the deleted release's track labels to be gone from its pods",
    )
    # The name is free again: a new release of it is one plugin over every pod, unsplit.
    release_with_canary(istio_cluster, meshed, published)
    plugin = get_json(istio_cluster, "wasmplugin", RELEASE, "-n", meshed)
    assert plugin["spec"]["selector"]["matchLabels"] == {"app": "frontend"}
    istio_cluster.wait_for(  # the old release's, removed by the garbage collector
        lambda: get_json(istio_cluster, "wasmplugin", f"{RELEASE}-canary", "-n", meshed) is None,
        timeout=TIMEOUT,
        what="the deleted release's canary WasmPlugin to be collected",
    )
    assert tracks(istio_cluster, meshed) == {}
    assert split(istio_cluster, meshed) is None


def test_track_labels_of_a_release_deleted_while_the_operator_was_down_are_removed_at_start(
    istio_cluster: LocalCluster, meshed: str, published: Published, operator: OperatorProcess
) -> None:
    split_four_pods(istio_cluster, meshed, published)
    operator.stop()
    try:
        istio_cluster.kubectl("delete", "filterrelease", RELEASE, "-n", meshed)
        assert len(tracks(istio_cluster, meshed)) == 4  # nobody took them off
    finally:
        operator.start()
    istio_cluster.wait_for(
        lambda: tracks(istio_cluster, meshed) == {},
        timeout=TIMEOUT,
        what="the track labels of the release deleted while the operator was down to be gone",
    )


@pytest.mark.usefixtures("operator")
def test_a_release_of_the_same_name_created_right_after_the_deletion_starts_clean(
    istio_cluster: LocalCluster, meshed: str, published: Published
) -> None:
    """Deleted mid-canary and applied again at once (as `kubectl replace --force` or an Argo
    CD re-create does): whichever the operator sees first, every pod ends under the new
    release's one plugin, without a track label."""
    split_four_pods(istio_cluster, meshed, published)
    manifest = example(meshed, registry=published.registry)
    istio_cluster.kubectl("delete", "filterrelease", RELEASE, "-n", meshed)
    istio_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def settled() -> bool:
        body = get_json(istio_cluster, "filterrelease", RELEASE, "-n", meshed)
        ready = condition(body, "Ready")
        return (
            ready is not None
            and ready["status"] == "True"
            and body["status"].get("observedGeneration") == body["metadata"]["generation"]
            and tracks(istio_cluster, meshed) == {}
        )

    try:
        istio_cluster.wait_for(settled, timeout=TIMEOUT, what="the new release Ready, no tracks")
    except TimeoutError as err:
        body = get_json(istio_cluster, "filterrelease", RELEASE, "-n", meshed)
        plugins = istio_cluster.kubectl("get", "wasmplugins", "-n", meshed, "-o", "yaml").stdout
        raise AssertionError(
            f"{err}\nrelease: {json.dumps(body, indent=1)}\ntracks: "
            f"{tracks(istio_cluster, meshed)}\nplugins: {plugins}"
        ) from err
    plugin = get_json(istio_cluster, "wasmplugin", RELEASE, "-n", meshed)
    assert plugin["spec"]["selector"]["matchLabels"] == {"app": "frontend"}
    istio_cluster.wait_for(  # the old release's, removed by the garbage collector
        lambda: get_json(istio_cluster, "wasmplugin", f"{RELEASE}-canary", "-n", meshed) is None,
        timeout=TIMEOUT,
        what="the deleted release's canary WasmPlugin to be collected",
    )
