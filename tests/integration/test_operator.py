"""The operator, as a real subprocess under its least-privilege RBAC, on the real API server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from devcluster.install import OPERATOR_NAMESPACE, OPERATOR_SERVICEACCOUNT
from devcluster.operator_process import OperatorProcess
from filterrelease.core.module import VerifiedModule
from filterrelease.core.render import ReleaseRef, render_wasmplugin
from filterrelease.core.spec import FilterReleaseSpec, parse_spec
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
from tests.unit.conftest import ROOT

pytestmark = pytest.mark.integration


def expected_plugin(body: Any) -> dict[str, Any]:
    """The WasmPlugin the release should have rendered, pinned to the module pre-flight verified."""
    spec = parse_spec(body["spec"])
    assert isinstance(spec, FilterReleaseSpec)
    meta = body["metadata"]
    ref = ReleaseRef(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        generation=meta["generation"],
    )
    module = body.get("status", {}).get("module")
    verified = VerifiedModule.model_validate(module) if module else None
    return render_wasmplugin(ref, spec, verified)


@pytest.mark.usefixtures("operator")
class TestLifecycle:
    def test_create_renders_the_exact_wasmplugin(
        self, istio_cluster: LocalCluster, namespace: str, published: Published
    ) -> None:
        manifest = example(namespace, registry=published.registry)
        manifest["metadata"]["labels"] = {"app.kubernetes.io/instance": "shop-filters"}
        manifest["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "shop:x/y:z"}
        assert apply_json(istio_cluster, manifest).returncode == 0
        body = wait_ready(istio_cluster, namespace, "security-headers")

        live = plugin(istio_cluster, namespace, "security-headers")
        want = expected_plugin(body)
        assert live["spec"] == want["spec"]
        assert live["metadata"]["ownerReferences"] == want["metadata"]["ownerReferences"]
        assert live["metadata"]["labels"] == want["metadata"]["labels"]  # nothing copied
        assert live["metadata"]["annotations"] == want["metadata"]["annotations"]
        assert live["spec"]["priority"] == 10

        status = body["status"]
        assert status["phase"] == "Healthy"
        assert status["applied"]["version"] == "v1.1.0"
        assert status["stable"] == status["applied"]
        assert status["applied"]["url"] == published.pinned("v1.1.0")
        assert status["applied"]["sourceUrl"] == published.url("v1.1.0")
        assert live["spec"]["url"] == published.pinned("v1.1.0")
        assert live["spec"]["sha256"] == published.digests["v1.1.0"].removeprefix("sha256:")
        assert status["module"]["layout"] == "oci-wasm"
        assert condition(body, "ModuleVerified")["status"] == "True"  # type: ignore[index]
        assert status["applied"]["pluginConfig"] == {"frame_options": "DENY", "version": "v1.1.0"}
        assert status["wasmPlugins"] == ["security-headers"]
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Ready": "True",
            "Progressing": "False",
            "Degraded": "False",
            "ModuleVerified": "True",
        }
        found = wait_events(istio_cluster, namespace, "security-headers", "Created")
        assert ("Normal", "Created") in [e[:2] for e in found]
        # The release's own object is untouched by the operator: no finalizer, no annotation.
        assert "finalizers" not in body["metadata"]
        assert set(body["metadata"]["annotations"]) == {
            "argocd.argoproj.io/tracking-id",
            "kubectl.kubernetes.io/last-applied-configuration",
        }

    def test_update_changes_the_wasmplugin_in_place(
        self, istio_cluster: LocalCluster, namespace: str, published: Published
    ) -> None:
        apply_json(istio_cluster, example(namespace, registry=published.registry))
        first = wait_ready(istio_cluster, namespace, "security-headers")
        before = plugin(istio_cluster, namespace, "security-headers")

        manifest = example(namespace, registry=published.registry)
        manifest["spec"]["module"]["url"] = published.url("v1.2.0")
        manifest["spec"]["pluginConfig"]["frame_options"] = "SAMEORIGIN"
        assert apply_json(istio_cluster, manifest).returncode == 0
        body = wait_ready(istio_cluster, namespace, "security-headers", generation=2)

        after = plugin(istio_cluster, namespace, "security-headers")
        assert after["metadata"]["uid"] == before["metadata"]["uid"]  # updated, not recreated
        assert after["spec"] == expected_plugin(body)["spec"]
        assert after["spec"]["pluginConfig"]["frame_options"] == "SAMEORIGIN"
        assert body["status"]["applied"]["version"] == "v1.2.0"
        assert body["status"]["applied"]["generation"] == 2
        # Ready stayed True, so its transition time did not move.
        assert condition(body, "Ready") == {
            **condition(first, "Ready"),  # type: ignore[dict-item]
            "message": condition(body, "Ready")["message"],  # type: ignore[index]
            "observedGeneration": 2,
        }
        found = wait_events(istio_cluster, namespace, "security-headers", "Updated")
        assert ("Normal", "Updated") in [e[:2] for e in found]

    def test_resync_of_an_unchanged_release_writes_nothing(
        self,
        istio_cluster: LocalCluster,
        namespace: str,
        operator: OperatorProcess,
        published: Published,
    ) -> None:
        apply_json(istio_cluster, example(namespace, registry=published.registry))
        body = wait_ready(istio_cluster, namespace, "security-headers")
        wp = plugin(istio_cluster, namespace, "security-headers")
        labels = {"namespace": namespace, "name": "security-headers", "trigger": "InSync"}
        start = operator.metric("filterrelease_reconcile_total", **labels)
        istio_cluster.wait_for(
            lambda: operator.metric("filterrelease_reconcile_total", **labels) >= start + 3,
            timeout=TIMEOUT,
            what="three resyncs of the release",
        )
        after = plugin(istio_cluster, namespace, "security-headers")
        assert after["metadata"]["resourceVersion"] == wp["metadata"]["resourceVersion"]
        again = release(istio_cluster, namespace, "security-headers")
        assert again["metadata"]["resourceVersion"] == body["metadata"]["resourceVersion"]

    def test_delete_garbage_collects_the_wasmplugin(
        self, istio_cluster: LocalCluster, namespace: str, published: Published
    ) -> None:
        apply_json(istio_cluster, example(namespace, registry=published.registry))
        wait_ready(istio_cluster, namespace, "security-headers")
        istio_cluster.kubectl("delete", "filterrelease", "security-headers", "-n", namespace)
        istio_cluster.wait_for(
            lambda: plugin(istio_cluster, namespace, "security-headers") is None,
            timeout=TIMEOUT,
            what="the garbage collector to delete the WasmPlugin",
        )

    def test_a_hand_edit_of_the_wasmplugin_is_put_back(
        self, istio_cluster: LocalCluster, namespace: str, published: Published
    ) -> None:
        apply_json(istio_cluster, example(namespace, registry=published.registry))
        wait_ready(istio_cluster, namespace, "security-headers")
        istio_cluster.kubectl(
            "patch", "wasmplugin", "security-headers", "-n", namespace,
            "--type=merge", "-p", '{"spec": {"priority": 99}}',
        )  # fmt: skip
        istio_cluster.wait_for(
            lambda: plugin(istio_cluster, namespace, "security-headers")["spec"]["priority"] == 10,
            timeout=TIMEOUT,
            what="the operator to restore priority 10",
        )

    def test_a_foreign_wasmplugin_of_the_same_name_is_left_alone(
        self, istio_cluster: LocalCluster, namespace: str, published: Published
    ) -> None:
        foreign = {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "security-headers", "namespace": namespace},
            "spec": {"url": "oci://registry.local/someone/else:v9", "priority": 1},
        }
        assert apply_json(istio_cluster, foreign).returncode == 0
        apply_json(istio_cluster, example(namespace, registry=published.registry))

        def degraded() -> bool:
            c = condition(release(istio_cluster, namespace, "security-headers"), "Degraded")
            return bool(c and c["status"] == "True")

        istio_cluster.wait_for(degraded, timeout=TIMEOUT, what="Degraded=True")
        body = release(istio_cluster, namespace, "security-headers")
        assert condition(body, "Degraded")["reason"] == "Conflict"  # type: ignore[index]
        assert "is not owned by this FilterRelease" in body["status"]["message"]
        live = plugin(istio_cluster, namespace, "security-headers")
        assert live["spec"] == foreign["spec"]
        found = wait_events(istio_cluster, namespace, "security-headers", "Conflict")
        assert ("Warning", "Conflict") in [e[:2] for e in found]


def test_rendered_wasmplugins_of_every_example_pass_istios_crd(
    istio_cluster: LocalCluster, namespace: str
) -> None:
    for path in sorted((ROOT / "deploy" / "examples").glob("*.yaml")):
        body = copy.deepcopy(yaml.safe_load(path.read_text()))
        body["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
        body["metadata"]["generation"] = 1
        rendered = expected_plugin(body)
        result = apply_json(istio_cluster, rendered, "--dry-run=server")
        assert result.returncode == 0, (path.name, result.stderr)


def test_every_example_is_accepted_by_the_api_server(
    istio_cluster: LocalCluster, namespace: str
) -> None:
    for path in sorted((ROOT / "deploy" / "examples").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        body["metadata"]["namespace"] = namespace
        result = apply_json(istio_cluster, body)
        assert result.returncode == 0, (path.name, result.stderr)
        assert release(istio_cluster, namespace, body["metadata"]["name"]) is not None
    for path in sorted((ROOT / "deploy" / "examples" / "templates").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        body["metadata"]["namespace"] = namespace
        result = apply_json(istio_cluster, body)
        assert result.returncode == 0, (path.name, result.stderr)


def test_operator_permissions_are_least_privilege(istio_cluster: LocalCluster) -> None:
    sa = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICEACCOUNT}"

    def can(verb: str, resource: str, *extra: str) -> bool:
        out = istio_cluster.kubectl(
            "auth", "can-i", verb, resource, *extra, "--as", sa, "-A", check=False
        )
        return out.stdout.strip() == "yes"

    assert can("watch", "filterreleases.filterrelease.dev")
    assert can("patch", "filterreleases.filterrelease.dev", "--subresource=status")
    assert can("patch", "wasmplugins.extensions.istio.io")
    assert not can("update", "filterreleases.filterrelease.dev")  # the spec is the user's
    # patch only to remove a consumed manual-request annotation
    assert can("patch", "filterreleases.filterrelease.dev")
    assert not can("delete", "filterreleases.filterrelease.dev")
    assert can("delete", "wasmplugins.extensions.istio.io")  # the canary plugin after a rollout
    assert can("patch", "pods")  # track labels
    assert can("get", "secrets")  # the pull secret a release names, for pre-flight
    assert not can("list", "secrets")
    assert not can("watch", "secrets")
    assert not can("create", "pods")


def test_kubectl_explain_and_printer_columns(
    istio_cluster: LocalCluster, namespace: str, operator: OperatorProcess, published: Published
) -> None:
    out = istio_cluster.kubectl("explain", "filterrelease.spec.module.sha256").stdout
    assert "manifest" in out
    assert "digest" in out
    apply_json(istio_cluster, example(namespace, registry=published.registry))
    wait_ready(istio_cluster, namespace, "security-headers")
    table = istio_cluster.kubectl("get", "frel", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "PHASE", "STABLE", "CANARY", "STEP", "WEIGHT", "PROXIES", "AGE"
    ]  # fmt: skip
    assert table[1].split()[:3] == ["security-headers", "Healthy", "v1.1.0"]
