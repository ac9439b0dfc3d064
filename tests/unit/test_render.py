"""Rendering: the exact WasmPlugin, explicit priority, no copied metadata, stable hashes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from filterrelease.core.render import (
    ReleaseRef,
    config_hash,
    needs_write,
    render_spec,
    render_wasmplugin,
    version_label,
)
from filterrelease.core.spec import FilterReleaseSpec, parse_spec

GOLDEN = Path(__file__).parent / "golden"
REF = ReleaseRef(
    namespace="shop",
    name="security-headers",
    uid="0d5c4a4e-1111-4c0e-9a57-3b7a0e8f0001",
    generation=1,
)


def spec_of(raw: dict[str, Any]) -> FilterReleaseSpec:
    spec = parse_spec(raw)
    assert isinstance(spec, FilterReleaseSpec), spec
    return spec


def test_security_headers_renders_exactly_the_golden_wasmplugin(
    security_headers: dict[str, Any],
) -> None:
    rendered = render_wasmplugin(REF, spec_of(security_headers["spec"]))
    golden = yaml.safe_load((GOLDEN / "security-headers.wasmplugin.yaml").read_text())
    golden["metadata"]["annotations"]["filterrelease.dev/config-hash"] = config_hash(
        rendered["spec"]
    )
    assert rendered == golden


def test_priority_is_explicit_even_when_defaulted(security_headers: dict[str, Any]) -> None:
    raw = copy.deepcopy(security_headers["spec"])
    del raw["priority"]
    assert render_spec(spec_of(raw))["priority"] == 0


def test_no_metadata_is_copied_from_the_release(security_headers: dict[str, Any]) -> None:
    # Argo CD's tracking label/annotation on the release must not reach the WasmPlugin, or Argo CD
    # would consider the WasmPlugin part of the app and prune it.
    rendered = render_wasmplugin(REF, spec_of(security_headers["spec"]))
    keys = set(rendered["metadata"]["labels"]) | set(rendered["metadata"]["annotations"])
    assert not {k for k in keys if "argocd" in k or k == "app.kubernetes.io/instance"}
    assert all(k.startswith(("filterrelease.dev/", "app.kubernetes.io/managed-by")) for k in keys)


def test_target_refs_render_instead_of_selector() -> None:
    raw = yaml.safe_load(
        (GOLDEN.parents[2] / "deploy/examples/gateway-ratelimit-headers.yaml").read_text()
    )["spec"]
    spec = render_spec(spec_of(raw))
    assert "selector" not in spec
    assert spec["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "shop-gateway"}
    ]
    assert spec["vmConfig"] == {
        "env": [{"name": "POD_NAME", "valueFrom": "HOST"}, {"name": "TIER", "value": "edge"}]
    }
    assert spec["match"] == [{"mode": "CLIENT", "ports": [{"number": 443}]}]


def test_empty_plugin_config_is_kept() -> None:
    spec = spec_of(
        {
            "selector": {"matchLabels": {"a": "b"}},
            "module": {"url": "oci://r/x:1"},
            "pluginConfig": {},
        }
    )
    assert render_spec(spec)["pluginConfig"] == {}


@pytest.mark.parametrize(
    ("url", "sha", "label"),
    [
        ("oci://r.local/f/sec:v1.1.0", None, "v1.1.0"),
        ("oci://r.local:5000/f/sec:v2", None, "v2"),
        ("oci://r.local:5000/f/sec", None, "latest"),
        ("oci://r.local/f/sec@sha256:" + "ab" * 32, None, "sha256:abababababab"),
        ("https://h/x/mod.wasm", "cd" * 32, "sha256:cdcdcdcdcdcd"),
        ("https://h/x/mod.wasm", None, "mod.wasm"),
    ],
)
def test_version_label(url: str, sha: str | None, label: str) -> None:
    assert version_label(url, sha) == label


def test_config_hash_changes_with_config_only(security_headers: dict[str, Any]) -> None:
    a = render_spec(spec_of(security_headers["spec"]))
    raw = copy.deepcopy(security_headers["spec"])
    raw["pluginConfig"]["frame_options"] = "SAMEORIGIN"
    b = render_spec(spec_of(raw))
    raw2 = copy.deepcopy(security_headers["spec"])
    raw2["progressDeadlineSeconds"] = 900  # not part of the WasmPlugin
    c = render_spec(spec_of(raw2))
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(c)


class TestNeedsWrite:
    def desired(self, security_headers: dict[str, Any]) -> dict[str, Any]:
        return render_wasmplugin(REF, spec_of(security_headers["spec"]))

    def test_missing_plugin_needs_write(self, security_headers: dict[str, Any]) -> None:
        assert needs_write(self.desired(security_headers), None)

    def test_server_added_metadata_does_not(self, security_headers: dict[str, Any]) -> None:
        desired = self.desired(security_headers)
        live = copy.deepcopy(desired)
        live["metadata"].update(resourceVersion="42", uid="x", generation=3)
        live["metadata"]["labels"]["team"] = "edge"  # someone else's label
        live["metadata"]["annotations"]["note"] = "hi"
        live["status"] = {}
        assert not needs_write(desired, live)

    @pytest.mark.parametrize(
        "edit",
        [
            lambda p: p["spec"].update(priority=11),
            lambda p: p["spec"].pop("priority"),
            lambda p: p["metadata"]["labels"].pop("filterrelease.dev/role"),
            lambda p: p["metadata"]["annotations"].update({"filterrelease.dev/version": "x"}),
            lambda p: p["metadata"].update(ownerReferences=[]),
        ],
        ids=["spec-field", "spec-removed", "our-label", "our-annotation", "owner"],
    )
    def test_drift_in_what_we_own_does(self, security_headers: dict[str, Any], edit: Any) -> None:
        desired = self.desired(security_headers)
        live = copy.deepcopy(desired)
        edit(live)
        assert needs_write(desired, live)
