"""`kubectl filterrelease lint`, offline: a FilterRelease manifest checked against the CRD's
schema and the operator's own spec model. Pure: text and schema in, problems out.

Offline lint cannot run the CRD's CEL rules; the operator's spec model checks the same
cross-field rules (and the ones only the operator knows, such as an analysis step's metrics),
so a manifest clean here is one the server and the operator accept, short of what needs the
cluster (an AnalysisTemplate that does not exist, a module URL nobody serves).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import jsonschema
import yaml

from filterrelease.core.render import API_VERSION, KIND
from filterrelease.core.spec import SpecError, parse_spec


class InputError(ValueError):
    """The file is not YAML, or a document in it is not an object."""


def documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file (`---` separated), in order."""
    try:
        loaded = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {err}") from err
    for i, doc in enumerate(loaded, 1):
        if not isinstance(doc, dict):
            raise InputError(f"document {i} is a {type(doc).__name__}, not an object")
    return loaded


def is_release(doc: dict[str, Any]) -> bool:
    return doc.get("kind") == KIND and str(doc.get("apiVersion", "")).startswith(
        API_VERSION.split("/")[0] + "/"
    )


def title(doc: dict[str, Any], index: int) -> str:
    """How a document is named in lint's output: `document 2 (FilterRelease shop/x)`."""
    meta = doc.get("metadata") or {}
    name = "/".join(str(p) for p in (meta.get("namespace"), meta.get("name")) if p) or "?"
    return f"document {index} ({doc.get('kind', '?')} {name})"


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as a JSON Schema that refuses unknown fields, as the API server does with
    strict field validation (kubectl apply's default): an object with declared properties and
    no x-kubernetes-preserve-unknown-fields admits nothing else."""
    strict = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(strict)
    # metadata is the API server's own (ObjectMeta): the CRD declares it as a bare object.
    strict.get("properties", {}).get("metadata", {}).pop("additionalProperties", None)
    return strict


def field_path(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def schema_problems(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """`field.path: problem` for everything the CRD's schema refuses."""
    validator = jsonschema.Draft4Validator(strict_schema(schema))
    found = [
        f"{field_path(err.absolute_path)}: {err.message}" for err in validator.iter_errors(doc)
    ]
    return sorted(found)


def operator_problems(doc: dict[str, Any]) -> list[str]:
    """What the operator's spec model refuses (the CRD's CEL rules among it). Asked only of a
    document the schema accepts, as the API server runs CEL only on a valid schema: otherwise
    each schema problem would be said twice, in two wordings."""
    if not isinstance(doc.get("spec"), dict):
        return []  # the schema says so already
    parsed = parse_spec(doc["spec"])
    return list(parsed.problems) if isinstance(parsed, SpecError) else []


def offline_problems(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: {doc.get('apiVersion')!r} is not {API_VERSION!r}")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("metadata.name: required")
    problems += schema_problems(doc, schema)
    return problems or operator_problems(doc)
