"""Static properties of what `kubectl apply -k deploy/` installs, read from the manifests.

What needs an API server (Pod Security admission, scheduling, the apply itself) is in
tests/integration/test_deploy.py; this file checks what the files alone decide: labels, the
PodDisruptionBudget against the Deployment, the rollout strategy, the probes, the pod's security
settings, the env against the operator's settings, and what the RBAC grants.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from filterrelease.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
NAMESPACE = "filterrelease-system"
SERVICE_ACCOUNT = "filterrelease-operator"
RECOMMENDED_LABELS = {
    "app.kubernetes.io/name": "filterrelease",
    "app.kubernetes.io/instance": "filterrelease",
    "app.kubernetes.io/version": VERSION,
    "app.kubernetes.io/part-of": "filterrelease",
    "app.kubernetes.io/managed-by": "kustomize",
}
SELECTOR = {
    "app.kubernetes.io/name": "filterrelease",
    "app.kubernetes.io/instance": "filterrelease",
}

Obj = dict[str, Any]


# -- the objects, as kustomize renders them ------------------------------------------------------

# The only kustomization features deploy/ uses. The loader below implements exactly these, and
# refuses a kustomization with anything else, so it cannot silently drift from kustomize.
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "labels"}


def _kustomize(directory: Path) -> Iterator[Obj]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: this test's loader does not implement {unknown}"
    added: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        # Metadata only: includeSelectors/includeTemplates would change selectors and templates.
        assert set(entry) == {"pairs"}, entry
        added.update(entry["pairs"])
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        docs = _kustomize(path) if path.is_dir() else _documents(path)
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(added)
            yield doc


def _documents(path: Path) -> Iterator[Obj]:
    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


OBJECTS = list(_kustomize(DEPLOY))


def _one(kind: str, name: str | None = None) -> Obj:
    found = [o for o in OBJECTS if o["kind"] == kind]
    if name is not None:
        found = [o for o in found if o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


DEPLOYMENT = _one("Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
SETTINGS_DEFAULTS = Settings()


def _env() -> dict[str, Obj]:
    return {e["name"]: e for e in CONTAINER["env"]}


def _id(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def test_deploy_installs_what_the_operator_needs() -> None:
    kinds = sorted(_id(o) for o in OBJECTS)
    assert kinds == [
        "ClusterRole/filterrelease-operator",
        "ClusterRoleBinding/filterrelease-operator",
        "CustomResourceDefinition/analysistemplates.filterrelease.dev",
        "CustomResourceDefinition/filterreleases.filterrelease.dev",
        "Deployment/filterrelease-operator",
        "Namespace/filterrelease-system",
        "PodDisruptionBudget/filterrelease-operator",
        "Role/filterrelease-operator",
        "RoleBinding/filterrelease-operator",
        "Service/filterrelease-operator-metrics",
        "Service/filterrelease-webhook",
        "ServiceAccount/filterrelease-operator",
    ]
    namespaced = [o for o in OBJECTS if o["kind"] not in _CLUSTER_SCOPED]
    assert {o["metadata"].get("namespace") for o in namespaced} == {NAMESPACE}


_CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}


# -- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", OBJECTS, ids=_id)
def test_every_object_carries_the_recommended_labels(obj: Obj) -> None:
    labels = obj["metadata"]["labels"]
    assert labels.items() >= RECOMMENDED_LABELS.items(), labels
    assert labels.get("app.kubernetes.io/component"), "component names the object's role"


def test_the_pods_carry_the_recommended_labels_and_the_image_is_this_version() -> None:
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert labels.items() >= RECOMMENDED_LABELS.items()
    assert labels["app.kubernetes.io/component"] == "operator"
    # A version bump in pyproject.toml that forgets deploy/ fails here.
    assert CONTAINER["image"].rsplit(":", 1)[1] == VERSION


def test_selectors_are_name_and_instance_and_select_the_pods() -> None:
    """The Deployment's selector is immutable: it must not hold a label an upgrade changes."""
    assert DEPLOYMENT["spec"]["selector"] == {"matchLabels": SELECTOR}
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= SELECTOR.items()
    for service in (o for o in OBJECTS if o["kind"] == "Service"):
        assert service["spec"]["selector"] == SELECTOR, _id(service)


# -- availability --------------------------------------------------------------------------------


def test_the_pdb_keeps_one_of_the_deployments_replicas() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]
    # More replicas than the budget keeps, or no node could ever be drained.
    assert DEPLOYMENT["spec"]["replicas"] == 2 > pdb["spec"]["minAvailable"]


def test_a_rolling_update_never_goes_below_the_replica_count() -> None:
    assert DEPLOYMENT["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_replicas_prefer_different_nodes() -> None:
    anti = POD["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    [term] = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": SELECTOR}


def test_probes_use_the_operators_health_port() -> None:
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    liveness = re.fullmatch(r"http://[^:/]+:(\d+)(/.*)", SETTINGS_DEFAULTS.liveness_endpoint)
    assert liveness is not None
    assert ports["health"] == int(liveness[1])
    assert CONTAINER["livenessProbe"]["httpGet"] == {"path": liveness[2], "port": "health"}
    assert CONTAINER["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert ports["webhook"] == SETTINGS_DEFAULTS.webhook_port
    assert ports["metrics"] == SETTINGS_DEFAULTS.metrics_port
    webhook = _one("Service", "filterrelease-webhook")
    assert webhook["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook"}]


# -- Pod Security --------------------------------------------------------------------------------


def test_the_namespace_enforces_restricted_pod_security() -> None:
    labels = _one("Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"


def test_the_pod_asks_for_nothing_restricted_forbids() -> None:
    """The fields the restricted profile checks (the API server enforces it; see
    tests/integration/test_deploy.py), set explicitly rather than left to the image."""
    pod_sc = POD["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not POD.get(key)
    assert {next(iter(set(v) - {"name"})) for v in POD["volumes"]} == {"emptyDir"}
    assert len(POD["containers"]) == 1
    assert not POD.get("initContainers")
    sc = CONTAINER["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")
    assert all("hostPort" not in p for p in CONTAINER["ports"])


def test_the_pods_uid_is_the_images_user() -> None:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets a numeric USER"
    assert users[-1] == str(POD["securityContext"]["runAsUser"])


# -- the operator's settings ---------------------------------------------------------------------


def _settings_from_pod() -> Settings:
    """Settings as the operator reads them in the pod: literal values, and fieldRefs resolved
    the way the kubelet does for a pod named `pod-a` in the manifest's namespace."""
    field_values = {
        "metadata.name": "pod-a",
        "metadata.namespace": DEPLOYMENT["metadata"]["namespace"],
    }
    env: dict[str, str] = {}
    for name, entry in _env().items():
        if "value" in entry:
            env[name] = entry["value"]
        else:
            env[name] = field_values[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return Settings.from_env(env)


def test_every_env_variable_is_an_operator_setting() -> None:
    """A misspelt variable would be ignored by the operator without a word."""
    for name in _env():
        assert name.startswith(PREFIX), name
        assert name.removeprefix(PREFIX).lower() in Settings.model_fields, name


def test_leader_election_settings_are_the_defaults_written_out() -> None:
    env = _env()
    settings = _settings_from_pod()
    for field in (
        "leader_election",
        "lease_name",
        "lease_duration_seconds",
        "lease_renew_deadline_seconds",
        "lease_retry_period_seconds",
    ):
        assert (PREFIX + field.upper()) in env, field
        assert getattr(settings, field) == getattr(SETTINGS_DEFAULTS, field), field
    assert settings.leader_election is True
    assert settings.lease_namespace == NAMESPACE
    # Each replica is its own candidate: the pod name, not something every replica shares.
    assert env["FILTERRELEASE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert settings.identity == "pod-a"
    assert settings.operator_namespace == NAMESPACE
    assert settings.webhook_service == "filterrelease-system/filterrelease-webhook"


def test_the_grace_period_leaves_time_to_release_the_lease() -> None:
    """A leader that is mid-renewal when SIGTERM comes may need the renew deadline to finish
    before it can release the Lease; killed before that, its follower waits the full Lease."""
    settings = _settings_from_pod()
    assert POD["terminationGracePeriodSeconds"] > settings.lease_renew_deadline_seconds


# -- RBAC ----------------------------------------------------------------------------------------


def _allows(
    rules: list[Obj], verb: str, group: str, resource: str, name: str | None = None
) -> bool:
    """RBAC's rule matching. `name` is None for create (and list/watch of a collection): such
    requests carry no name, so rules narrowed by resourceNames never match them."""
    for rule in rules:
        if (
            _matches(rule.get("apiGroups", []), group)
            and _matches(rule.get("resources", []), resource)
            and _matches(rule["verbs"], verb)
        ):
            names = rule.get("resourceNames")
            if not names or (name is not None and name in names):
                return True
    return False


def _matches(values: list[str], value: str) -> bool:
    return "*" in values or value in values


def _bound_to_the_operator(binding: Obj) -> bool:
    return {
        "kind": "ServiceAccount",
        "name": POD["serviceAccountName"],
        "namespace": DEPLOYMENT["metadata"]["namespace"],
    } in binding["subjects"]


ROLE = _one("Role")
CLUSTER_ROLE = _one("ClusterRole")


def test_the_role_and_cluster_role_are_bound_to_the_pods_service_account() -> None:
    assert POD["serviceAccountName"] == SERVICE_ACCOUNT
    role_binding = _one("RoleBinding")
    assert role_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": ROLE["metadata"]["name"],
    }
    assert role_binding["metadata"]["namespace"] == ROLE["metadata"]["namespace"] == NAMESPACE
    assert _bound_to_the_operator(role_binding)
    cluster_binding = _one("ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == CLUSTER_ROLE["metadata"]["name"]
    assert _bound_to_the_operator(cluster_binding)


def test_the_role_covers_leader_election_on_the_lease_and_nothing_wider() -> None:
    rules = ROLE["rules"]
    lease = _settings_from_pod().lease_name
    # The Lease lives where the Role applies: the Deployment's namespace.
    assert _settings_from_pod().lease_namespace == ROLE["metadata"]["namespace"]
    assert _allows(rules, "create", "coordination.k8s.io", "leases")
    for verb in ("get", "update"):
        assert _allows(rules, verb, "coordination.k8s.io", "leases", lease), verb
        assert not _allows(rules, verb, "coordination.k8s.io", "leases", "kube-scheduler"), verb
    for verb in ("delete", "list", "watch", "patch"):
        assert not _allows(rules, verb, "coordination.k8s.io", "leases", lease), verb
    # Cluster-wide rights on Leases would let the operator take over other components'
    # leader election (kube-system's controller-manager and scheduler hold theirs there).
    assert not any(
        _allows(CLUSTER_ROLE["rules"], verb, "coordination.k8s.io", "leases", lease)
        for verb in ("get", "create", "update", "patch", "delete")
    )


def test_the_role_covers_the_shared_webhook_certificate_secret() -> None:
    rules = ROLE["rules"]
    secret = SETTINGS_DEFAULTS.webhook_secret_name
    assert _allows(rules, "create", "", "secrets")
    for verb in ("get", "update"):
        assert _allows(rules, verb, "", "secrets", secret), verb
        assert not _allows(rules, verb, "", "secrets", "someone-elses-secret"), verb
    assert not _allows(rules, "delete", "", "secrets", secret)


def test_no_rule_lists_or_watches_secrets() -> None:
    """Pull secrets are read one by one, by the name a release gives (get only): with list or
    watch the operator could read every Secret of the cluster."""
    for role in (ROLE, CLUSTER_ROLE):
        for verb in ("list", "watch"):
            assert not _allows(role["rules"], verb, "", "secrets"), (_id(role), verb)
