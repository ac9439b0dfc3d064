"""What the operator benchmarks share (bench/restart_dry_runs.py, bench/scale.py): a local cluster
with Istio's and our CRDs and one module published, and which releases an operator process has
reconciled."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devcluster.demo import build_filters
from devcluster.install import install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.oci_publish import publish


@dataclass(frozen=True)
class BenchCluster:
    cluster: LocalCluster
    kubeconfig: Path  # the operator's (its ServiceAccount)
    workdir: Path
    url: str  # security-headers, pinned by digest


@contextmanager
def bench_cluster(prefix: str) -> Iterator[BenchCluster]:
    """A one-node cluster with filterrelease installed and security-headers published; all of
    it stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        with LocalCluster(workdir / "cluster", nodes=1) as cluster:
            install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
            kubeconfig = install_filterrelease(cluster)
            wasm = build_filters()["security-headers"]
            digest = publish(cluster.registry.host, "filters/security-headers", "v1", wasm)
            url = f"oci://{cluster.registry.host}/filters/security-headers@{digest}"
            yield BenchCluster(cluster, kubeconfig, workdir, url)


def reconciled(operator: OperatorProcess) -> set[str]:
    """The releases this operator process has reconciled at least once."""
    return set(
        re.findall(r'filterrelease_reconcile_total\{[^}]*name="([^"]+)"', operator.metrics())
    )
