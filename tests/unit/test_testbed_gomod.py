"""testbed/go.mod: the staging replace block is generated and agrees with the pinned Kubernetes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

TESTBED = Path(__file__).resolve().parents[2] / "testbed"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "staging_replaces", TESTBED / "hack" / "staging_replaces.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UPSTREAM = """module k8s.io/kubernetes

require (
\tk8s.io/api v0.0.0
\tgithub.com/x/y v1.2.3
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/x/y => github.com/x/y v1.2.4
)
"""


def test_block_maps_each_staging_module_to_its_published_twin() -> None:
    block = generator().replace_block(UPSTREAM, "v1.36.4")
    assert "\tk8s.io/api => k8s.io/api v0.36.4" in block
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.4" in block
    assert "github.com/x/y" not in block  # only staging modules


def test_committed_gomod_agrees_with_the_pinned_kubernetes() -> None:
    gomod = (TESTBED / "go.mod").read_text()
    [kube] = re.findall(r"^\s*k8s\.io/kubernetes (v1\.\d+\.\d+)", gomod, re.M)
    _, minor, patch = kube.removeprefix("v").split(".")
    replaces = re.findall(r"^\s*(k8s\.io/\S+) => (\S+) (\S+)$", gomod, re.M)
    assert len(replaces) > 25
    for source, target, version in replaces:
        assert source == target
        assert version == f"v0.{minor}.{patch}", source
    assert generator().BEGIN in gomod
