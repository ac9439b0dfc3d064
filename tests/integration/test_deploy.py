"""`kubectl apply -k deploy/ --server-side`, as a platform team installs the operator, on the real
local control plane, with the API server's built-in PodSecurity admission enforcing the namespace's
`restricted` label (kube-apiserver runs with its default admission plugins, PodSecurity among them).

The cluster is this module's own, not the session's `istio_cluster`: there, devcluster has put
the namespace and RBAC in place for the tests' operator subprocess (client-side apply), which
runs as that ServiceAccount and writes the webhook configuration. Installing the Deployment, its
Services and a PDB beside it, and deleting them afterwards, would share (and on cleanup remove)
what that operator stands on; a throwaway cluster needs no --force-conflicts, proves the install
works on a cluster that has never seen filterrelease, and is cleaned up by stopping it, also when
a test fails.

kwok plays the kubelets: it runs no container and no probe. Its pod stage (localcluster/kwok.py)
turns a scheduled pod Running and Ready at once, so readiness here is kwok's, not /readyz's; what
these tests prove is admission (Pod Security, RBAC, the API's validation), scheduling over several
nodes, the Deployment/ReplicaSet/PDB/EndpointSlice controllers' view of the manifests, and
idempotent re-application. No operator process is started here.

On the replicas landing on different nodes: the default scheduler spreads a Deployment's pods
over nodes by itself (its default topology spreading scores), and does so here with the
anti-affinity removed too; so that check shows the anti-affinity is valid and does not get in the
way, while tests/unit/test_deploy_manifests.py checks the term itself.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.kwok import NODE_ANNOTATION, NODE_ANNOTATION_VALUE

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NAMESPACE = "filterrelease-system"
DEPLOYMENT = "filterrelease-operator"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:filterrelease-operator"
SELECTOR = "app.kubernetes.io/name=filterrelease,app.kubernetes.io/instance=filterrelease"
RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
PSA_REFUSAL = 'violates PodSecurity "restricted:latest"'
# Three nodes, so the two replicas (and a surge pod) each have a node to themselves.
NODES = 3
TIMEOUT = 90.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Istio's CRDs as a real cluster has them before filterrelease is installed; the module's
    # registries are not needed (no module is pulled).
    with LocalCluster(
        tmp_path_factory.mktemp("deploy"), nodes=NODES, registries=False
    ) as local_cluster:
        install_istio_crds(local_cluster, DEFAULT_ISTIO_VERSION)
        yield local_cluster


def apply_deploy(cluster: LocalCluster, *extra: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-k", str(DEPLOY), "--server-side", *extra, check=False)


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster) -> LocalCluster:
    """deploy/ applied as is, once, and the operator's Deployment rolled out."""
    result = apply_deploy(cluster)
    assert result.returncode == 0, result.stderr
    # A pod template the namespace's level would refuse is only a warning on the Deployment
    # (the refusal comes later, per pod): catch it here by name.
    assert "PodSecurity" not in result.stderr, result.stderr
    cluster.wait_for(
        lambda: rolled_out(get(cluster, "deployment", DEPLOYMENT, "-n", NAMESPACE)),
        timeout=TIMEOUT,
        what="the operator's Deployment to have 2 ready, available, updated replicas",
    )
    return cluster


def get(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def rolled_out(deployment: Any) -> bool:
    if deployment is None:
        return False
    status = deployment.get("status", {})
    return bool(
        status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("replicas") == 2
        and status.get("updatedReplicas") == 2
        and status.get("readyReplicas") == 2
        and status.get("availableReplicas") == 2
    )


def rendered(cluster: LocalCluster) -> list[dict[str, Any]]:
    """What deploy/ holds, rendered by kubectl's own kustomize."""
    out = cluster.kubectl("kustomize", str(DEPLOY)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def live(cluster: LocalCluster, obj: dict[str, Any]) -> Any:
    kind = obj["kind"]
    namespace = obj["metadata"].get("namespace")
    scope = ("-n", namespace) if namespace else ()
    resource = f"{kind}.{obj['apiVersion'].split('/')[0]}" if "/" in obj["apiVersion"] else kind
    return get(cluster, resource, obj["metadata"]["name"], *scope)


def events(cluster: LocalCluster, kind: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    found = get(cluster, "events", "-n", NAMESPACE, "--field-selector", selector)
    return list(found["items"]) if found else []


def replicasets_of(cluster: LocalCluster, deployment: str) -> list[dict[str, Any]]:
    uid = get(cluster, "deployment", deployment, "-n", NAMESPACE)["metadata"]["uid"]
    return [
        rs
        for rs in get(cluster, "replicasets", "-n", NAMESPACE)["items"]
        if any(ref["uid"] == uid for ref in rs["metadata"].get("ownerReferences", []))
    ]


def replicaset_of(cluster: LocalCluster, deployment: str) -> dict[str, Any]:
    [replicaset] = replicasets_of(cluster, deployment)
    return replicaset


# -- before the install: a server-side dry run ---------------------------------------------------


def test_a_server_side_dry_run_passes_admission_and_writes_nothing(cluster: LocalCluster) -> None:
    """What a careful first install (or upgrade) does first. A dry run persists nothing, so the
    objects in the namespace can only be checked once the namespace exists: it comes first. The
    namespace's restricted level then already judges the Deployment's pod template."""
    namespace = cluster.kubectl(
        "apply", "--server-side", "-f", str(DEPLOY / "operator" / "namespace.yaml"), check=False
    )
    assert namespace.returncode == 0, namespace.stderr
    before = deployment_generation(cluster)
    result = apply_deploy(cluster, "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    assert result.stdout.count("(server dry run)") == len(rendered(cluster)), result.stdout
    assert deployment_generation(cluster) == before


def deployment_generation(cluster: LocalCluster) -> int | None:
    """None before the install: the dry run must not have created the Deployment either."""
    found = get(cluster, "deployment", DEPLOYMENT, "-n", NAMESPACE)
    return None if found is None else int(found["metadata"]["generation"])


# -- the install -----------------------------------------------------------------------------


def test_every_installed_object_carries_the_recommended_labels(installed: LocalCluster) -> None:
    objects = rendered(installed)
    assert len(objects) == 12
    for obj in objects:
        found = live(installed, obj)
        assert found is not None, f"{obj['kind']}/{obj['metadata']['name']} not installed"
        labels = found["metadata"].get("labels", {})
        missing = [key for key in RECOMMENDED if not labels.get(key)]
        assert not missing, (obj["kind"], obj["metadata"]["name"], missing)
    namespace = get(installed, "namespace", NAMESPACE)["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespace["pod-security.kubernetes.io/enforce-version"] == "latest"


def test_pod_security_admits_the_operator_pods_on_separate_kwok_nodes(
    installed: LocalCluster,
) -> None:
    pods = get(installed, "pods", "-n", NAMESPACE, "-l", SELECTOR)["items"]
    assert len(pods) == 2
    nodes = {pod["spec"]["nodeName"] for pod in pods}
    assert len(nodes) == 2, "the replicas share a node"
    for node in nodes:
        annotations = get(installed, "node", node)["metadata"]["annotations"]
        assert annotations.get(NODE_ANNOTATION) == NODE_ANNOTATION_VALUE, node
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["podIP"]
        # As written in deploy/: no admission plugin had to change the security settings.
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # Every pod the ReplicaSet asked for was admitted: creations, and no refusal.
    replicaset = replicaset_of(installed, DEPLOYMENT)["metadata"]["name"]
    reasons = [e["reason"] for e in events(installed, "ReplicaSet", replicaset)]
    assert reasons.count("SuccessfulCreate") == 2, reasons
    assert "FailedCreate" not in reasons


def test_the_pdb_and_the_webhook_service_select_the_operator_pods(
    installed: LocalCluster,
) -> None:
    pod_ips = {
        pod["status"]["podIP"]
        for pod in get(installed, "pods", "-n", NAMESPACE, "-l", SELECTOR)["items"]
    }

    def pdb_counts_both() -> bool:
        status = get(installed, "pdb", DEPLOYMENT, "-n", NAMESPACE).get("status", {})
        return bool(
            status.get("expectedPods") == 2
            and status.get("currentHealthy") == 2
            and status.get("desiredHealthy") == 1
            and status.get("disruptionsAllowed") == 1
        )

    installed.wait_for(pdb_counts_both, timeout=TIMEOUT, what="the PDB to count both replicas")

    def webhook_endpoints() -> set[str]:
        slices = get(
            installed,
            "endpointslices",
            "-n",
            NAMESPACE,
            "-l",
            "kubernetes.io/service-name=filterrelease-webhook",
        )["items"]
        return {
            address
            for piece in slices
            for endpoint in piece.get("endpoints") or []
            if endpoint.get("conditions", {}).get("ready")
            for address in endpoint["addresses"]
        }

    installed.wait_for(
        lambda: webhook_endpoints() == pod_ips,
        timeout=TIMEOUT,
        what=f"both replicas ({sorted(pod_ips)}) as ready endpoints of the webhook Service",
    )


# -- Pod Security is enforced, not just declared --------------------------------------------------


def root_pod(name: str, namespace: str) -> dict[str, Any]:
    """A pod that violates `restricted` (and `baseline`): privileged, as root."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "registry.local/pause:1",
                    "securityContext": {"privileged": True, "runAsUser": 0},
                }
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def test_a_privileged_root_pod_is_refused_in_the_namespace(installed: LocalCluster) -> None:
    # The refusal comes from the namespace's label, not from elsewhere: the same pod passes
    # admission in a namespace without one (a server-side dry run creates nothing).
    installed.wait_for(
        lambda: get(installed, "serviceaccount", "default", "-n", "default") is not None,
        timeout=TIMEOUT,
        what="ServiceAccount default/default",
    )
    accepted = installed.kubectl(
        "create", "--dry-run=server", "-f", "-",
        input=json.dumps(root_pod("root", "default")), check=False,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr

    installed.wait_for(
        lambda: get(installed, "serviceaccount", "default", "-n", NAMESPACE) is not None,
        timeout=TIMEOUT,
        what=f"ServiceAccount {NAMESPACE}/default",
    )
    refused = installed.kubectl(
        "create", "-f", "-", input=json.dumps(root_pod("root", NAMESPACE)), check=False
    )
    assert refused.returncode != 0
    assert PSA_REFUSAL in refused.stderr, refused.stderr
    assert "privileged" in refused.stderr
    assert "runAsUser=0" in refused.stderr
    assert get(installed, "pod", "root", "-n", NAMESPACE) is None


def test_a_deployment_with_a_root_pod_gets_failed_create_events(installed: LocalCluster) -> None:
    """The other side of 'no FailedCreate' above: a pod template the level forbids is warned
    about at apply time, and every pod its ReplicaSet tries is refused, with the reason."""
    name = "violator"
    labels = {"app": name}
    pod = root_pod(name, NAMESPACE)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod["spec"]},
        },
    }
    try:
        applied = installed.kubectl("apply", "-f", "-", input=json.dumps(deployment))
        assert "would violate PodSecurity" in applied.stderr, applied.stderr
        installed.wait_for(
            lambda: replicasets_of(installed, name) != [],
            timeout=TIMEOUT,
            what="the violator's ReplicaSet",
        )
        replicaset = replicaset_of(installed, name)["metadata"]["name"]

        def refusals() -> list[str]:
            return [
                e["message"]
                for e in events(installed, "ReplicaSet", replicaset)
                if e["reason"] == "FailedCreate"
            ]

        installed.wait_for(
            lambda: bool(refusals()), timeout=TIMEOUT, what="a FailedCreate event of the violator"
        )
        assert all(PSA_REFUSAL in message for message in refusals()), refusals()
        assert not get(installed, "pods", "-n", NAMESPACE, "-l", f"app={name}")["items"]
    finally:
        installed.kubectl("delete", "deployment", name, "-n", NAMESPACE, "--ignore-not-found")


# -- RBAC: what the operator's ServiceAccount may do in its namespace ----------------------------


def as_operator(
    cluster: LocalCluster, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl as the operator's ServiceAccount (impersonated by the admin: the API server
    authorizes the request for that identity, as for the pod's own token)."""
    return cluster.kubectl(*args, "--as", SERVICE_ACCOUNT, input=input, check=False)


def lease(name: str, holder: str) -> str:
    return json.dumps(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
        }
    )


def secret(name: str, value: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "type": "Opaque",
            "stringData": {"value": value},
        }
    )


def can(cluster: LocalCluster, verb: str, resource: str, namespace: str = NAMESPACE) -> bool:
    answer = as_operator(cluster, "auth", "can-i", verb, resource, "-n", namespace)
    return bool(answer.stdout.strip() == "yes")


def read_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    """One object as the admin reads it."""
    found: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return found


def test_the_service_account_can_elect_a_leader_on_its_lease_only(
    installed: LocalCluster,
) -> None:
    name = "filterrelease-operator"
    try:
        created = as_operator(installed, "create", "-f", "-", input=lease(name, "pod-a"))
        assert created.returncode == 0, created.stderr
        read = as_operator(installed, "get", "lease", name, "-n", NAMESPACE, "-o", "json")
        assert read.returncode == 0, read.stderr
        # Renewing and taking over are updates (a PUT of the object read, as the election does).
        taken = json.loads(read.stdout)
        taken["spec"]["holderIdentity"] = "pod-b"
        replaced = as_operator(installed, "replace", "-f", "-", input=json.dumps(taken))
        assert replaced.returncode == 0, replaced.stderr
        assert read_json(installed, "lease", name, "-n", NAMESPACE)["spec"]["holderIdentity"] == (
            "pod-b"
        )
        # Nothing beyond that Lease: create is by nature unnamed, but another Lease it cannot
        # change, and no Lease outside its namespace (kube-system's belong to the control plane).
        other = as_operator(installed, "create", "-f", "-", input=lease("other", "pod-a"))
        assert other.returncode == 0, other.stderr
        foreign = read_json(installed, "lease", "other", "-n", NAMESPACE)
        foreign["spec"]["holderIdentity"] = "pod-b"
        refused = as_operator(installed, "replace", "-f", "-", input=json.dumps(foreign))
        assert refused.returncode != 0
        assert "forbidden" in refused.stderr
        assert not can(installed, "delete", "leases")
        assert not can(installed, "list", "leases")
        assert not can(installed, "create", "leases", "kube-system")
    finally:
        installed.kubectl(
            "delete", "lease", name, "other", "-n", NAMESPACE, "--ignore-not-found"
        )  # fmt: skip


def test_the_service_account_can_share_the_webhook_certificate_secret_only(
    installed: LocalCluster,
) -> None:
    name = "filterrelease-webhook-tls"
    try:
        created = as_operator(installed, "create", "-f", "-", input=secret(name, "one"))
        assert created.returncode == 0, created.stderr
        read = as_operator(installed, "get", "secret", name, "-n", NAMESPACE, "-o", "json")
        assert read.returncode == 0, read.stderr
        renewed = json.loads(read.stdout)
        renewed["stringData"] = {"value": "two"}
        replaced = as_operator(installed, "replace", "-f", "-", input=json.dumps(renewed))
        assert replaced.returncode == 0, replaced.stderr
        # Another Secret it may create (RBAC cannot narrow create by name) but not change.
        other = as_operator(installed, "create", "-f", "-", input=secret("other", "x"))
        assert other.returncode == 0, other.stderr
        foreign = read_json(installed, "secret", "other", "-n", NAMESPACE)
        foreign["stringData"] = {"value": "y"}
        refused = as_operator(installed, "replace", "-f", "-", input=json.dumps(foreign))
        assert refused.returncode != 0
        assert "forbidden" in refused.stderr
        assert not can(installed, "list", "secrets")
        assert not can(installed, "delete", "secrets")
    finally:
        installed.kubectl(
            "delete", "secret", name, "other", "-n", NAMESPACE, "--ignore-not-found"
        )  # fmt: skip


# -- applying again ------------------------------------------------------------------------------


def versions(cluster: LocalCluster) -> dict[str, str]:
    """What a write would change, per installed object: the generation where the object has
    one (its spec), else the resourceVersion. Status writes by controllers move neither of the
    first, and no controller writes the others (Namespace, ServiceAccount, RBAC, Services)."""
    out: dict[str, str] = {}
    for obj in rendered(cluster):
        found = live(cluster, obj)
        meta = found["metadata"]
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        generation = meta.get("generation")
        out[key] = f"generation {generation}" if generation else meta["resourceVersion"]
    return out


def test_a_second_apply_changes_nothing(installed: LocalCluster) -> None:
    before = versions(installed)
    again = apply_deploy(installed)
    assert again.returncode == 0, again.stderr
    assert versions(installed) == before
    # kubectl's own verdict: nothing differs between deploy/ and the cluster (exit code 0).
    diff = installed.kubectl("diff", "-k", str(DEPLOY), "--server-side", check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
