"""The local control plane behaves like a real cluster in the ways our operator relies on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster
from tests.support.processes import still_running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Module-scoped and private to this file: the last test stops it on purpose.
    with LocalCluster(tmp_path_factory.mktemp("localcluster"), nodes=3) as c:
        yield c


def _json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _deployment(name: str, namespace: str, replicas: int) -> str:
    labels = {"app": name}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
                },
            },
        }
    )


def _running_pods(cluster: LocalCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    pods = _json(cluster, "get", "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]


def test_all_nodes_ready(cluster: LocalCluster) -> None:
    nodes = _json(cluster, "get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [
        "kwok-node-0",
        "kwok-node-1",
        "kwok-node-2",
    ]
    for node in nodes:
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", node["metadata"]["name"]
        assert not node["spec"].get("taints"), node["spec"]["taints"]


def test_nodes_renew_their_leases(cluster: LocalCluster) -> None:
    # Without renewed Leases the node lifecycle controller marks every node NotReady once its
    # grace period passes (and NodeNotReady on the pods): nodes flapped every ~55 s that way.
    def renewals() -> dict[str, str]:
        leases = _json(cluster, "get", "leases", "-n", "kube-node-lease")["items"]
        return {lease["metadata"]["name"]: lease["spec"].get("renewTime", "") for lease in leases}

    cluster.wait_for(
        lambda: set(renewals()) == {"kwok-node-0", "kwok-node-1", "kwok-node-2"},
        timeout=60,
        what="a Lease for every node in kube-node-lease",
    )
    first = renewals()
    cluster.wait_for(
        lambda: all(renewals()[node] > first[node] for node in first),
        timeout=90,
        what="every node Lease renewed",
    )


def test_server_version(cluster: LocalCluster) -> None:
    version = _json(cluster, "version")
    assert version["serverVersion"]["gitVersion"] == "v1.36.4"


def test_deployment_pods_run_with_distinct_ips(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "deploy-test")
    cluster.kubectl("apply", "-f", "-", input=_deployment("web", "deploy-test", replicas=2))
    cluster.wait_for(
        lambda: len(_running_pods(cluster, "deploy-test", "web")) == 2,
        timeout=30,
        what="2 Running pods of deployment web",
    )
    ips = {p["status"]["podIP"] for p in _running_pods(cluster, "deploy-test", "web")}
    assert len(ips) == 2


def test_garbage_collection_removes_replicaset_and_pods(cluster: LocalCluster) -> None:
    ns = "gc-test"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("apply", "-f", "-", input=_deployment("doomed", ns, replicas=2))
    cluster.wait_for(
        lambda: len(_running_pods(cluster, ns, "doomed")) == 2, timeout=30, what="doomed pods"
    )
    assert _json(cluster, "get", "replicasets", "-n", ns)["items"]

    # Default propagation for kubectl delete is background: the Deployment goes at once and
    # the garbage collector must remove the ReplicaSet, then the pods, on its own.
    cluster.kubectl("delete", "deployment", "doomed", "-n", ns, "--wait=false")
    cluster.wait_for(
        lambda: (
            not _json(cluster, "get", "replicasets", "-n", ns)["items"]
            and not _json(cluster, "get", "pods", "-n", ns)["items"]
        ),
        timeout=30,
        what="garbage collection of the ReplicaSet and pods",
    )


def test_serviceaccount_kubeconfig_is_authenticated_and_rbac_limited(
    cluster: LocalCluster,
) -> None:
    kubeconfig = cluster.serviceaccount_kubeconfig("sa-test", "robot")
    assert "client-certificate" not in kubeconfig.read_text()

    whoami = _json_with(cluster, kubeconfig, "auth", "whoami")
    assert whoami["status"]["userInfo"]["username"] == "system:serviceaccount:sa-test:robot"

    can = cluster.kubectl(
        "auth", "can-i", "list", "secrets", "--all-namespaces", kubeconfig=kubeconfig, check=False
    )
    assert can.stdout.strip() == "no"
    assert can.returncode != 0
    forbidden = cluster.kubectl(
        "get", "secrets", "--all-namespaces", kubeconfig=kubeconfig, check=False
    )
    assert forbidden.returncode != 0
    assert "forbidden" in forbidden.stderr.lower()


def _json_with(cluster: LocalCluster, kubeconfig: Path, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)


def test_stop_leaves_no_process_behind(cluster: LocalCluster) -> None:
    # Runs last in this module: the fixture's own stop() afterwards is a no-op (idempotent).
    pids = cluster.pids
    assert set(pids) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "registry",
        "auth-registry",
    }
    cluster.stop()
    cluster.stop()
    # stop() has reaped every leader, so nothing may answer a signal any more: neither the
    # component itself nor anything left in its process group.
    leftovers = still_running(pids)
    assert not leftovers, f"still running after stop(): {leftovers}"
