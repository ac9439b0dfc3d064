"""Bad FilterReleases are refused by the real API server (schema and CEL) with readable messages,
and nothing is stored. No operator is involved: this is the CRD's own contract."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localcluster import LocalCluster
from tests.support.kubectl import apply_json, get_json
from tests.support.releases import example

pytestmark = pytest.mark.integration

DIGEST = "a" * 64


def _spec(**changes: Any) -> dict[str, Any]:
    """The security-headers example with top-level spec fields replaced (None removes)."""
    spec: dict[str, Any] = copy.deepcopy(example("x")["spec"])
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def _module(**changes: Any) -> dict[str, Any]:
    module = {"url": "oci://registry.local/filters/security-headers:v1.1.0", **changes}
    return {k: v for k, v in module.items() if v is not None}


CANARY = {"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "2m"}}]}}
GATEWAY = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]

BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    (
        "selector and targetRefs",
        _spec(targetRefs=GATEWAY),
        "exactly one of spec.selector or spec.targetRefs must be set",
    ),
    (
        "no target",
        _spec(selector=None),
        "exactly one of spec.selector or spec.targetRefs must be set",
    ),
    (
        "matchExpressions",
        _spec(
            selector={
                "matchLabels": {"app": "a"},
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}],
            }
        ),
        "matchExpressions is not supported: Istio's WasmPlugin selector is equality-only",
    ),
    ("empty matchLabels", _spec(selector={"matchLabels": {}}), "should have at least 1 properties"),
    (
        "reserved track label",
        _spec(selector={"matchLabels": {"filterrelease.dev/track": "canary"}}),
        "must not use filterrelease.dev/track",
    ),
    (
        "bad label key",
        _spec(selector={"matchLabels": {"bad key!": "x"}}),
        "keys must be valid label keys",
    ),
    (
        "bad label value",
        _spec(selector={"matchLabels": {"app": "no spaces"}}),
        "spec.selector.matchLabels.app in body should match",
    ),
    ("no module", _spec(module=None), "spec.module: Required value"),
    (
        "ftp url",
        _spec(module=_module(url="ftp://host/f.wasm")),
        "spec.module.url must start with oci://, https:// or http://",
    ),
    (
        "bad oci reference",
        _spec(module=_module(url="oci://Registry.Local/UPPER:v1")),
        "spec.module.url is not a valid OCI reference",
    ),
    (
        "sha256 not hex",
        _spec(module=_module(sha256="XYZ")),
        "spec.module.sha256 in body should match '^[a-f0-9]{64}$'",
    ),
    (
        "sha256 differs from pinned digest",
        _spec(module=_module(url=f"oci://r.local/f@sha256:{DIGEST}", sha256="b" * 64)),
        "spec.module.sha256 must equal the digest pinned in spec.module.url",
    ),
    (
        "pull secret on https",
        _spec(module=_module(url="https://h/f.wasm", imagePullSecret="creds")),
        "spec.module.imagePullSecret only applies to oci:// modules",
    ),
    (
        "pull policy value",
        _spec(module=_module(imagePullPolicy="Never")),
        'spec.module.imagePullPolicy: Unsupported value: "Never"',
    ),
    ("phase", _spec(phase="LATE"), 'spec.phase: Unsupported value: "LATE"'),
    (
        "failStrategy",
        _spec(failStrategy="FAIL_SOMETIMES"),
        'spec.failStrategy: Unsupported value: "FAIL_SOMETIMES"',
    ),
    (
        "priority over int32",
        _spec(priority=2**31),
        "spec.priority in body should be less than or equal to 2147483647",
    ),
    (
        "targetRef kind",
        _spec(selector=None, targetRefs=[{"kind": "Deployment", "name": "d"}]),
        "spec.targetRefs supports only Gateway and GatewayClass",
    ),
    (
        "canary with targetRefs",
        _spec(selector=None, targetRefs=GATEWAY, strategy=CANARY),
        "a canary strategy needs spec.selector",
    ),
    (
        "unsupported webhook type",
        _spec(
            strategy={
                "canary": {
                    "steps": [{"setWeight": 10}],
                    "webhooks": [{"name": "a", "type": "rollout", "url": "http://hooks.test/"}],
                }
            }
        ),
        'Unsupported value: "rollout"',
    ),
    (
        "step with two actions",
        _spec(strategy={"canary": {"steps": [{"setWeight": 10, "pause": {}}]}}),
        "each canary step must have exactly one of setWeight, pause or analysis",
    ),
    (
        "weight over 100",
        _spec(strategy={"canary": {"steps": [{"setWeight": 150}]}}),
        "setWeight in body should be less than or equal to 100",
    ),
    (
        "pause duration",
        _spec(strategy={"canary": {"steps": [{"pause": {"duration": "2 minutes"}}]}}),
        "duration in body should match",
    ),
    (
        "analysis without metrics",
        _spec(strategy={"canary": {"steps": [{"analysis": {}}]}}),
        "an analysis step needs at least one template or metric",
    ),
    (
        "HOST env with value",
        _spec(vmConfig={"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}),
        "vmConfig.env: value may only be set when valueFrom is INLINE",
    ),
    (
        "duplicate env",
        _spec(vmConfig={"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}),
        "Duplicate value",
    ),
    (
        "port out of range",
        _spec(match=[{"mode": "SERVER", "ports": [{"number": 70000}]}]),
        "less than or equal to 65535",
    ),
    (
        "deadline too short",
        _spec(progressDeadlineSeconds=1),
        "spec.progressDeadlineSeconds in body should be greater than or equal to 10",
    ),
    ("unknown field", _spec(surprise=True), 'unknown field "spec.surprise"'),
]


@pytest.mark.parametrize(
    ("spec", "message"), [(s, m) for _, s, m in BAD_SPECS], ids=[i for i, _, _ in BAD_SPECS]
)
def test_bad_spec_is_refused_with_a_readable_message(
    istio_cluster: LocalCluster, operator_kubeconfig: Any, namespace: str, spec: Any, message: str
) -> None:
    body = {
        "apiVersion": "filterrelease.dev/v1alpha1",
        "kind": "FilterRelease",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec,
    }
    result = apply_json(istio_cluster, body)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert get_json(istio_cluster, "filterrelease", "bad", "-n", namespace) is None


def test_a_bad_update_leaves_the_stored_release_untouched(
    istio_cluster: LocalCluster, operator_kubeconfig: Any, namespace: str
) -> None:
    good = example(namespace)
    assert apply_json(istio_cluster, good).returncode == 0
    stored = get_json(istio_cluster, "filterrelease", "security-headers", "-n", namespace)
    bad = copy.deepcopy(good)
    bad["spec"]["module"]["url"] = "ftp://nowhere/f.wasm"
    assert apply_json(istio_cluster, bad).returncode != 0
    after = get_json(istio_cluster, "filterrelease", "security-headers", "-n", namespace)
    # Not the resourceVersion: a running operator may write the status in between, which
    # moves it. A stored spec change would move the generation.
    assert after["metadata"]["generation"] == stored["metadata"]["generation"]
    assert after["spec"] == stored["spec"]
