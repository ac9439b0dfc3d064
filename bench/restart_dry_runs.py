"""Benchmark: what an operator restart costs in Envoy dry runs (a seed of issue 13's scale bench).

N releases on N selectors share K distinct pluginConfigs of one module. Once all are Ready, the
operator is killed (SIGKILL) and started again. Prints, for the first start and the restart:
the Envoy dry runs the process ran (its own filterrelease_dry_runs_total), and how long until
every release was reconciled by it (filterrelease_reconcile_total per release). A restart
should run no dry run for a verdict the releases' status already holds.

Run: PYTHONPATH=testbed:. uv run python bench/restart_dry_runs.py --releases 40 --configs 4
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from devcluster.demo import build_filters
from devcluster.install import install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.oci_publish import publish

NS = "bench"


def release(i: int, url: str, configs: int) -> dict[str, Any]:
    return {
        "apiVersion": "filterrelease.dev/v1alpha1",
        "kind": "FilterRelease",
        "metadata": {"name": f"r{i}", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": f"a{i}"}},
            "priority": 10,
            "module": {"url": url},
            "pluginConfig": {"version": f"c{i % configs}"},
        },
    }


def reconciled(operator: OperatorProcess) -> set[str]:
    """The releases this operator process has reconciled at least once."""
    return set(
        re.findall(r'filterrelease_reconcile_total\{[^}]*name="([^"]+)"', operator.metrics())
    )


def all_ready(cluster: LocalCluster, count: int) -> bool:
    out = cluster.kubectl("get", "frel", "-n", NS, "-o", "json").stdout
    items = json.loads(out)["items"]
    ready = [
        i for i in items
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in i.get("status", {}).get("conditions", []))
    ]  # fmt: skip
    return len(ready) == count


def wait(what: str, check: Any, timeout: float) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(0.2)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--releases", type=int, default=40)
    parser.add_argument("--configs", type=int, default=4)
    args = parser.parse_args()
    n = args.releases
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        workdir = Path(tmp)
        with LocalCluster(workdir / "cluster", nodes=1) as cluster:
            install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
            kubeconfig = install_filterrelease(cluster)
            wasm = build_filters()["security-headers"]
            digest = publish(cluster.registry.host, "filters/security-headers", "v1", wasm)
            url = f"oci://{cluster.registry.host}/filters/security-headers@{digest}"
            cluster.kubectl("create", "namespace", NS)
            operator = OperatorProcess(kubeconfig, workdir / "operator.log", resync_seconds=300)
            operator.start()
            try:
                items = [release(i, url, args.configs) for i in range(n)]
                document = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
                t0 = time.monotonic()
                cluster.kubectl("apply", "-f", "-", input=document)
                wait("all Ready", lambda: all_ready(cluster, n), 600)
                first = (time.monotonic() - t0, operator.metric("filterrelease_dry_runs_total"))
                operator.kill()
                t1 = time.monotonic()
                operator.start()
                took = wait("every release reconciled", lambda: len(reconciled(operator)) >= n, 600)
                again = time.monotonic() - t1
                dry_runs = operator.metric("filterrelease_dry_runs_total")
            finally:
                operator.stop()
    print(f"\n{n} releases, {args.configs} distinct pluginConfigs of one module:")
    print(f"  first start: all Ready in {first[0]:.1f}s, {first[1]:.0f} dry runs")
    print(f"  restart: every release reconciled in {took:.1f}s after healthy "
          f"({again:.1f}s after the kill), {dry_runs:.0f} dry runs")  # fmt: skip


if __name__ == "__main__":
    main()
