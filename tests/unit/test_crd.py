"""The CRD file: explainable (descriptions everywhere) and in step with the operator's models."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from filterrelease.core.module import VerifiedModule
from filterrelease.core.spec import FilterReleaseSpec
from filterrelease.core.status import Condition, FilterReleaseStatus, ModuleVersion

CRD = Path(__file__).resolve().parents[2] / "crds" / "filterreleases.filterrelease.dev.yaml"


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description() -> None:
    missing = [
        path
        for path, node in walk(schema(), "")
        if "description" not in node and path not in (".metadata",) and not path.endswith("{}")
    ]
    assert missing == []


def _model_fields(model: type[BaseModel]) -> set[str]:
    return {f.alias or n for n, f in model.model_fields.items()}


def test_spec_fields_match_the_model() -> None:
    props = set(schema()["properties"]["spec"]["properties"])
    assert props == _model_fields(FilterReleaseSpec)


def test_status_fields_match_the_model() -> None:
    props = set(schema()["properties"]["status"]["properties"])
    assert props == _model_fields(FilterReleaseStatus)


def test_printer_columns_point_at_status_fields() -> None:
    crd = yaml.safe_load(CRD.read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "Phase",
        "Stable",
        "Canary",
        "Step",
        "Weight",
        "Proxies",
        "Age",
    ]
    status = schema()["properties"]["status"]["properties"]
    for column in columns[:-1]:
        top = column["jsonPath"].split(".")[2]
        assert top in status, column


def test_reference_doc_is_generated_from_the_current_crd() -> None:
    script = CRD.parents[1] / "docs" / "gen_crd_reference.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_nested_status_objects_match_their_models() -> None:
    # A field the CRD does not declare is pruned by the API server: the operator would then see
    # a different status on every reconcile and write it again forever.
    status = schema()["properties"]["status"]["properties"]
    for key in ("applied", "stable", "canary"):
        assert set(status[key]["properties"]) == _model_fields(ModuleVersion), key
    assert set(status["module"]["properties"]) == _model_fields(VerifiedModule)
    assert set(status["conditions"]["items"]["properties"]) == _model_fields(Condition)


def test_analysis_template_metrics_have_the_inline_metric_schema() -> None:
    template = yaml.safe_load((CRD.parent / "analysistemplates.filterrelease.dev.yaml").read_text())
    t_metrics = template["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["metrics"]
    inline = schema()["properties"]["spec"]["properties"]["strategy"]["properties"]["canary"][
        "properties"
    ]["analysis"]["properties"]["metrics"]
    assert t_metrics["items"] == inline["items"]


def test_no_category_shadows_a_resource_name() -> None:
    # `kubectl get filterrelease x` breaks if "filterrelease" is also a category of two kinds.
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CRD.parent.glob("*.yaml"))]
    names = [c["spec"]["names"] for c in crds if c.get("kind") == "CustomResourceDefinition"]
    singulars = {n["singular"] for n in names} | {n["plural"] for n in names}
    for n in names:
        assert not set(n.get("categories", [])) & (singulars - {n["singular"], n["plural"]})
