"""Fixtures on the real local control plane: one cluster per Istio CRD version, the operator as
a real subprocess authenticated as its own ServiceAccount, a fresh namespace per test."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.install import OPERATOR_NAMESPACE, install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from localcluster.istio import ISTIO_VERSIONS, install_istio_crds
from meshtraffic.podlogs import KWOK_CONFIG_YAML, logs_crd_manifest
from tests.support.wasm import Published, built_filters

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
        # As in deploy/: the namespace owns the pod webhook's configuration and is exempt from it.
        extra_env={"FILTERRELEASE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE},
    )
    with proc:
        yield proc
        if request.session.testsfailed:
            print(f"\n--- operator log ({proc.log_path}) ---\n{proc.log_tail(200)}")


_counter = itertools.count()


@pytest.fixture
def namespace(istio_cluster: LocalCluster) -> Iterator[str]:
    name = f"t{next(_counter)}"
    istio_cluster.kubectl("create", "namespace", name)
    yield name
    istio_cluster.kubectl("delete", "namespace", name, "--wait=false")


# -- real modules in the real registry ---------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def filter_modules() -> dict[str, bytes]:
    """Every filter of filters/, built from source (cached), by name."""
    return built_filters()


@pytest.fixture(scope="session")
def published(istio_cluster: LocalCluster, filter_modules: dict[str, bytes]) -> Published:
    return Published(istio_cluster.registry.host, filter_modules)


@pytest.fixture(scope="module")
def logs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A one-node cluster whose kwok serves `kubectl logs` from files named by its Logs objects
    (one per pod), as the mesh's pod log writer creates them."""
    workdir = tmp_path_factory.mktemp("logs-cluster")
    kwok_config = workdir / "kwok-logs.yaml"
    kwok_config.write_text(KWOK_CONFIG_YAML)
    with LocalCluster(
        workdir / "cluster", nodes=1, kwok_configs=[kwok_config], registries=False
    ) as cluster:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(logs_crd_manifest()))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/logs.kwok.x-k8s.io", "--timeout=30s"
        )
        yield cluster
