"""Installing filterrelease on a local cluster as on a real one: its CRDs, namespace and RBAC
(Istio's CRDs are the testbed's: localcluster.istio)."""

from __future__ import annotations

from pathlib import Path

from localcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "filterrelease-system"
OPERATOR_SERVICEACCOUNT = "filterrelease-operator"


def install_filterrelease(cluster: LocalCluster) -> Path:
    """The FilterRelease CRD, the operator's namespace and RBAC; returns the operator's kubeconfig.

    The kubeconfig authenticates as the operator's ServiceAccount, so the operator runs with
    exactly the permissions deploy/operator/rbac.yaml grants, as it would in a pod.
    """
    cluster.kubectl("apply", "--server-side", "-k", str(REPO / "crds"))
    # `kubectl wait` fails at once on a CRD that has no conditions yet: retry it until both are
    # established.
    cluster.wait_for(
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/filterreleases.filterrelease.dev", "crd/analysistemplates.filterrelease.dev",
            check=False,
        ).returncode == 0,
        timeout=90,
        what="the filterrelease.dev CRDs established",
    )  # fmt: skip
    cluster.kubectl("apply", "-f", str(REPO / "deploy" / "operator" / "namespace.yaml"))
    cluster.kubectl("apply", "-f", str(REPO / "deploy" / "operator" / "rbac.yaml"))
    return cluster.serviceaccount_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SERVICEACCOUNT)
