"""Fixtures on the real local control plane: one cluster per Istio CRD version, the operator as
a real subprocess authenticated as its own ServiceAccount, a fresh namespace per test."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.install import OPERATOR_NAMESPACE, install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from localcluster.istio import ISTIO_VERSIONS, install_istio_crds
from localcluster.oci_publish import publish
from meshtraffic.podlogs import KWOK_CONFIG_YAML, logs_crd_manifest

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


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def apply_json(cluster: LocalCluster, manifest: dict[str, Any], *args: str) -> Any:
    return cluster.kubectl("apply", "-f", "-", *args, input=json.dumps(manifest), check=False)


# -- real modules in the real registry ---------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def with_custom_section(module: bytes, name: str, payload: bytes) -> bytes:
    """The module with a Wasm custom section appended: same code, different bytes and digest."""

    def uleb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    body = uleb(len(name)) + name.encode() + payload
    return module + b"\x00" + uleb(len(body)) + body


@pytest.fixture(scope="session")
def filter_modules() -> dict[str, bytes]:
    """Every filter of filters/, built from source (cached), by name."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "filters" / "build.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    out = Path(result.stdout.strip().splitlines()[-1])
    return {p.stem: p.read_bytes() for p in sorted(out.glob("*.wasm"))}


class Published:
    """Versions of the security-headers filter in the cluster's open registry."""

    def __init__(self, registry: str, modules: dict[str, bytes]) -> None:
        self.registry = registry
        self.modules = modules
        self.digests: dict[str, str] = {}
        for tag in ("v1.1.0", "v1.2.0"):
            wasm = with_custom_section(
                modules["security-headers"], "filterrelease.version", tag.encode()
            )
            self.digests[tag] = publish(registry, "filters/security-headers", tag, wasm, "oci-wasm")

    def url(self, tag: str, repository: str = "filters/security-headers") -> str:
        return f"oci://{self.registry}/{repository}:{tag}"

    def pinned(self, tag: str) -> str:
        return f"oci://{self.registry}/filters/security-headers@{self.digests[tag]}"


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
