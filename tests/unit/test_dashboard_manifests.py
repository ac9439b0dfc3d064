"""deploy/dashboard/: the in-cluster dashboard's manifests parse and agree with each other, with
the operator's install (image, namespace, Pod Security) and with the dashboard's options; its
RBAC only reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from filterrelease.plugin.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "deploy" / "dashboard"
Obj = dict[str, Any]


def _load(directory: Path) -> list[Obj]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    # Only plain resources: no generator or patch this test would have to imitate.
    assert set(kustomization) == {"apiVersion", "kind", "resources"}
    objects: list[Obj] = []
    for resource in kustomization["resources"]:
        objects += [d for d in yaml.safe_load_all((directory / resource).read_text()) if d]
    return objects


OBJECTS = _load(DIRECTORY)
OPERATOR = [d for d in yaml.safe_load_all((ROOT / "deploy/operator/deployment.yaml").read_text())]


def _one(objects: list[Obj], kind: str) -> Obj:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


DEPLOYMENT = _one(OBJECTS, "Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
[CONTAINER] = POD["containers"]
OPERATOR_DEPLOYMENT = _one(OPERATOR, "Deployment")


def test_the_objects() -> None:
    assert sorted(f"{o['kind']}/{o['metadata']['name']}" for o in OBJECTS) == [
        "ClusterRole/filterrelease-dashboard",
        "ClusterRoleBinding/filterrelease-dashboard",
        "Deployment/filterrelease-dashboard",
        "Service/filterrelease-dashboard",
        "ServiceAccount/filterrelease-dashboard",
    ]
    namespace = OPERATOR_DEPLOYMENT["metadata"]["namespace"]
    for obj in OBJECTS:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard"


def test_it_runs_the_operators_image_read_only_on_the_port_it_declares() -> None:
    assert (
        CONTAINER["image"]
        == OPERATOR_DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    command = CONTAINER["command"]
    assert command[0] == "kubectl-filterrelease"
    # The plugin's own parser: a flag it does not know would stop the pod at start.
    args = build_parser().parse_args(command[1:])
    assert args.command == "dashboard"
    assert args.all_namespaces is True
    assert args.read_only is True
    assert args.no_browser is True
    assert args.address == "0.0.0.0"
    [port] = CONTAINER["ports"]
    assert port["containerPort"] == args.port
    assert CONTAINER["readinessProbe"]["httpGet"]["port"] == port["name"]


def test_the_service_selects_the_dashboard_and_no_operator_pod() -> None:
    service = _one(OBJECTS, "Service")
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert labels.items() >= service["spec"]["selector"].items()
    assert service["spec"]["ports"][0]["targetPort"] == CONTAINER["ports"][0]["name"]
    # The operator's Services (its webhook among them) must never route to the dashboard.
    operator_labels = OPERATOR_DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert not operator_labels.items() >= service["spec"]["selector"].items()
    for operator_service in (o for o in OPERATOR if o["kind"] == "Service"):
        assert not labels.items() >= operator_service["spec"]["selector"].items()


def test_the_role_only_reads_what_the_dashboard_shows() -> None:
    rules = _one(OBJECTS, "ClusterRole")["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {verb for _, _, verb in granted} == {"get", "list", "watch"}
    for group, resource in [
        ("filterrelease.dev", "filterreleases"),
        ("", "pods"),
        ("", "events"),
        ("extensions.istio.io", "wasmplugins"),
    ]:
        for verb in ("get", "list", "watch"):
            assert (group, resource, verb) in granted
    assert not any(
        resource == "secrets" or "*" in (group, resource) for group, resource, _ in granted
    )


def test_the_binding_gives_the_role_to_the_pods_account() -> None:
    binding = _one(OBJECTS, "ClusterRoleBinding")
    account = _one(OBJECTS, "ServiceAccount")
    assert binding["roleRef"]["name"] == _one(OBJECTS, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert POD["serviceAccountName"] == account["metadata"]["name"]


def test_the_pod_meets_restricted_pod_security_like_the_operator() -> None:
    operator_pod = OPERATOR_DEPLOYMENT["spec"]["template"]["spec"]
    assert POD["securityContext"] == operator_pod["securityContext"]
    security = CONTAINER["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
