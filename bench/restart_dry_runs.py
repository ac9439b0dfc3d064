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
import time
from typing import Any

from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from tests.support.operator_bench import bench_cluster, reconciled
from tests.support.polling import poll

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


def all_ready(cluster: LocalCluster, count: int) -> bool:
    out = cluster.kubectl("get", "frel", "-n", NS, "-o", "json").stdout
    items = json.loads(out)["items"]
    ready = [
        i for i in items
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in i.get("status", {}).get("conditions", []))
    ]  # fmt: skip
    return len(ready) == count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--releases", type=int, default=40)
    parser.add_argument("--configs", type=int, default=4)
    args = parser.parse_args()
    n = args.releases
    with bench_cluster("bench-restart-") as bench:
        cluster = bench.cluster
        cluster.kubectl("create", "namespace", NS)
        operator = OperatorProcess(
            bench.kubeconfig, bench.workdir / "operator.log", resync_seconds=300
        )
        operator.start()
        try:
            items = [release(i, bench.url, args.configs) for i in range(n)]
            document = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
            t0 = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=document)
            poll(lambda: all_ready(cluster, n), timeout=600, what="all Ready")
            first = (time.monotonic() - t0, operator.metric("filterrelease_dry_runs_total"))
            operator.kill()
            t1 = time.monotonic()
            operator.start()
            healthy = time.monotonic()
            poll(
                lambda: len(reconciled(operator)) >= n,
                timeout=600,
                what="every release reconciled",
            )
            took = time.monotonic() - healthy
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
