"""Fixtures on the real local control plane: one cluster per Istio CRD version, the operator as
a real subprocess authenticated as its own ServiceAccount, a fresh namespace per test."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster
from localcluster.install import ISTIO_VERSIONS, install_filterrelease, install_istio_crds
from localcluster.operator_process import OperatorProcess

# The operator resyncs every release this often in the tests, so a test can watch resyncs happen.
RESYNC_SECONDS = 1.0


@pytest.fixture(scope="session", params=ISTIO_VERSIONS, ids=lambda v: f"istio-{v}")
def istio_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """A started local control plane with Istio's CRDs of one version and ours installed."""
    version: str = request.param
    with LocalCluster(tmp_path_factory.mktemp(f"istio-{version}")) as cluster:
        install_istio_crds(cluster, version)
        yield cluster


@pytest.fixture(scope="session")
def operator_kubeconfig(istio_cluster: LocalCluster) -> Path:
    return install_filterrelease(istio_cluster)


@pytest.fixture(scope="session")
def operator(
    request: pytest.FixtureRequest, istio_cluster: LocalCluster, operator_kubeconfig: Path
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        operator_kubeconfig,
        istio_cluster.workdir / "logs" / "operator.log",
        resync_seconds=RESYNC_SECONDS,
    )
    with proc:
        yield proc
        if request.session.testsfailed:
            print(f"\n--- operator log ({proc.log_path}) ---\n{proc.log_tail(80)}")


_counter = itertools.count()


@pytest.fixture
def namespace(istio_cluster: LocalCluster) -> Iterator[str]:
    name = f"t{next(_counter)}"
    istio_cluster.kubectl("create", "namespace", name)
    yield name
    istio_cluster.kubectl("delete", "namespace", name, "--wait=false")


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def apply_json(cluster: LocalCluster, manifest: dict[str, Any], *args: str) -> Any:
    return cluster.kubectl("apply", "-f", "-", *args, input=json.dumps(manifest), check=False)
