"""Benchmark: what losing the leader costs, with deploy/'s Lease timings (15 s / 10 s / 2 s).

Two operator replicas on the local cluster, both webhooks behind one TCP balancer (the real
Envoy, as in tests/integration/test_failover.py), one FilterRelease Healthy. Each run:
  - crash: SIGKILL the leader and at the same moment change the release's pluginConfig; measure
    kill → the follower holds the Lease, and kill → the WasmPlugin carries the change (the new
    leader's catch-up reconcile, with pre-flight's Envoy dry run of the new config in it);
  - clean stop: SIGTERM the leader (a rolling update, a drained node); measure stop → the
    follower holds the Lease (the leader releases it, so nobody waits out its duration).
The stopped replica is started again after each measure, as its pod would be, and follows.

Prints medians with min/max over the runs (the machines are shared and noisy).
Run: make bench   (or PYTHONPATH=testbed:. uv run python bench/failover.py --runs 5)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from release_latency import release, security_headers  # beside this script

from devcluster.install import OPERATOR_NAMESPACE, install_filterrelease
from devcluster.operator_process import OperatorProcess
from filterrelease.providers.envoy import find_envoy
from localcluster import LocalCluster
from localcluster.balancer import TcpBalancer
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.oci_publish import publish

NS, NAME, LEASE = "bench", "failover", "filterrelease-operator"


def wait(fn: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until fn() holds; the monotonic time it was first seen to hold."""
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def holder(cluster: LocalCluster) -> str | None:
    out = cluster.kubectl(
        "get", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False
    )
    if out.returncode != 0:
        return None
    return (json.loads(out.stdout).get("spec") or {}).get("holderIdentity") or None


def plugin_version(cluster: LocalCluster) -> str | None:
    out = cluster.kubectl("get", "wasmplugin", NAME, "-n", NS, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    version = json.loads(out.stdout)["spec"].get("pluginConfig", {}).get("version")
    return str(version) if version is not None else None


def one_run(
    cluster: LocalCluster, procs: dict[str, OperatorProcess], body: dict[str, Any], run: int
) -> tuple[float, float, float]:
    """(SIGKILL → takeover, SIGKILL → change applied, SIGTERM → handover), in seconds."""
    wait(lambda: holder(cluster) is not None, 60, "a leader")
    leader = holder(cluster) or ""
    follower = next(n for n in procs if n != leader)
    version = f"v{run}"
    body["spec"]["pluginConfig"] = {"version": version}
    t0 = time.monotonic()
    procs[leader].kill()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    took = wait(lambda: holder(cluster) == follower, 60, "takeover") - t0
    done = wait(lambda: plugin_version(cluster) == version, 120, "the change applied") - t0
    procs[leader].start()  # its pod restarted: it follows now
    t0 = time.monotonic()
    procs[follower].stop()
    handed = wait(lambda: holder(cluster) == leader, 60, "handover") - t0
    procs[follower].start()
    return took, done, handed


def fmt(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):5.2f} s  (min {min(samples):.2f}, "
        f"max {max(samples):.2f}, {len(samples)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    module = security_headers()
    takeover: list[float] = []
    applied: list[float] = []
    handover: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        with LocalCluster(work / "cluster") as cluster:
            install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
            kubeconfig = install_filterrelease(cluster)
            procs = {
                n: OperatorProcess(kubeconfig, work / f"{n}.log", resync_seconds=300)
                for n in ("operator-a", "operator-b")
            }
            with TcpBalancer(
                find_envoy(), [p.webhook_port for p in procs.values()], work / "lb"
            ) as lb:
                for name, proc in procs.items():
                    proc.extra_env = {
                        "FILTERRELEASE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
                        "FILTERRELEASE_POD_NAME": name,
                        "FILTERRELEASE_WEBHOOK_URL": f"https://127.0.0.1:{lb.port}",
                    }
                try:
                    for proc in procs.values():
                        proc.start()
                    digest = publish(cluster.registry.host, "bench/failover", "v1", module)
                    url = f"oci://{cluster.registry.host}/bench/failover@{digest}"
                    cluster.kubectl("create", "namespace", NS)
                    body = release(NS, NAME, url, "v0")
                    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
                    wait(lambda: plugin_version(cluster) == "v0", 120, "the release applied")
                    for run in range(1, args.runs + 1):
                        took, done, handed = one_run(cluster, procs, body, run)
                        takeover.append(took)
                        applied.append(done)
                        handover.append(handed)
                        print(
                            f"run {run}: SIGKILL → Lease {took:.2f} s, → change applied "
                            f"{done:.2f} s; SIGTERM → Lease {handed:.2f} s",
                            flush=True,
                        )
                finally:
                    for proc in procs.values():
                        proc.stop()
    print("\nFailover with deploy/'s Lease timings (duration 15 s, renew 10 s, retry 2 s):")
    print(f"  leader SIGKILLed → follower holds the Lease:     {fmt(takeover)}")
    print(f"  leader SIGKILLed → a spec change is applied:     {fmt(applied)}")
    print(f"  leader stopped cleanly → follower holds the Lease: {fmt(handover)}")


if __name__ == "__main__":
    main()
