"""Which build runs: for --version and the filterrelease_build_info metric."""

from __future__ import annotations

import platform
from importlib import metadata

from pydantic import BaseModel, ConfigDict


class BuildVersions(BaseModel):
    model_config = ConfigDict(frozen=True)
    version: str
    python: str
    kopf: str


def build_versions() -> BuildVersions:
    return BuildVersions(
        version=_installed("filterrelease"),
        python=platform.python_version(),
        kopf=_installed("kopf"),
    )


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
