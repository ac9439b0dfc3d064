"""`kubectl filterrelease lint --offline`: the CRD's schema (from crds/, the one source) and the
operator's spec model, with the field path of every problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from filterrelease.plugin import lint
from filterrelease.plugin.crd import crd_text, release_schema
from tests.unit.conftest import EXAMPLES, ROOT, load_example


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return release_schema()


def test_the_schema_is_the_crds_file() -> None:
    assert crd_text() == (ROOT / "crds" / "filterreleases.filterrelease.dev.yaml").read_text()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Any, schema: dict[str, Any]) -> None:
    for doc in lint.documents(path.read_text()):
        if lint.is_release(doc):
            assert lint.offline_problems(doc, schema) == []


def canary() -> dict[str, Any]:
    return copy.deepcopy(load_example("security-headers-canary.yaml"))


def test_schema_problems_name_the_field(schema: dict[str, Any]) -> None:
    doc = canary()
    doc["spec"]["strategy"]["canary"]["steps"][0] = {"setWeight": 150}
    doc["spec"]["priority"] = "high"
    doc["spec"]["unknownField"] = True
    problems = lint.offline_problems(doc, schema)
    assert "spec.strategy.canary.steps[0].setWeight: 150 is greater than the maximum of 100" in (
        problems
    )
    assert "spec.priority: 'high' is not of type 'integer'" in problems
    assert "spec: Additional properties are not allowed ('unknownField' was unexpected)" in (
        problems
    )


def test_the_operators_rules_catch_what_only_cel_would(schema: dict[str, Any]) -> None:
    doc = canary()
    doc["spec"]["targetRefs"] = [{"kind": "Gateway", "name": "gw"}]
    problems = lint.offline_problems(doc, schema)
    assert problems == ["spec: exactly one of selector or targetRefs must be set"]
    doc = canary()
    doc["spec"]["strategy"]["canary"]["steps"][1] = {"setWeight": 10, "pause": {}}
    assert lint.offline_problems(doc, schema) == [
        "spec.strategy.canary.steps[1]: each canary step must have exactly one of setWeight, "
        "pause, analysis"
    ]


def test_identity_is_checked(schema: dict[str, Any]) -> None:
    doc = canary()
    doc["apiVersion"] = "filterrelease.dev/v2"
    del doc["metadata"]["name"]
    problems = lint.offline_problems(doc, schema)
    assert problems[:2] == [
        "apiVersion: 'filterrelease.dev/v2' is not 'filterrelease.dev/v1alpha1'",
        "metadata.name: required",
    ]


def test_metadata_may_carry_anything_kubernetes_allows(schema: dict[str, Any]) -> None:
    doc = canary()
    doc["metadata"]["labels"] = {"team": "edge"}
    doc["metadata"]["annotations"] = {"a": "b"}
    assert lint.offline_problems(doc, schema) == []


def test_documents_reads_every_document_and_refuses_what_is_not_yaml() -> None:
    text = "---\n" + yaml.safe_dump(canary()) + "---\n# empty\n---\nkind: ConfigMap\n"
    docs = lint.documents(text)
    assert [d["kind"] for d in docs] == ["FilterRelease", "ConfigMap"]
    assert [lint.is_release(d) for d in docs] == [True, False]
    assert lint.title(docs[0], 1) == "document 1 (FilterRelease shop/security-headers)"
    assert lint.title(docs[1], 2) == "document 2 (ConfigMap ?)"
    with pytest.raises(lint.InputError, match="not valid YAML"):
        lint.documents("a: [b")
    with pytest.raises(lint.InputError, match="document 1 is a list, not an object"):
        lint.documents("- a\n- b\n")


def test_field_paths_read_as_kubectl_explain() -> None:
    assert lint.field_path(["spec", "strategy", "canary", "steps", 2, "pause"]) == (
        "spec.strategy.canary.steps[2].pause"
    )
    assert lint.field_path([]) == "(document)"
