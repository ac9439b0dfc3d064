"""The FilterRelease CRD's schema, for linting without a cluster.

One source of truth: crds/filterreleases.filterrelease.dev.yaml. The wheel carries a copy of
that file in this package (pyproject.toml's wheel sources); a source checkout reads it from
crds/ directly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CRD_FILE = "filterreleases.filterrelease.dev.yaml"
SERVED_VERSION = "v1alpha1"


def crd_text() -> str:
    packaged = resources.files("filterrelease.plugin") / CRD_FILE
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[3] / "crds" / CRD_FILE
    try:
        return checkout.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the FilterRelease CRD ({CRD_FILE}) is neither in the installed package nor in a "
            "source checkout: offline lint cannot run"
        ) from None


def release_schema(text: str | None = None, version: str = SERVED_VERSION) -> dict[str, Any]:
    """The openAPIV3Schema of one version of the CRD."""
    crd = yaml.safe_load(text if text is not None else crd_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"the CRD serves no version {version}")
