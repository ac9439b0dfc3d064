"""The canary part of `make demo`: a new version moved onto the frontend's pods step by step
and promoted, then a faulty build rolled back, each under steady traffic whose every response
is checked for exactly one filter version, with a readable timeline of what happened and why."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import yaml

from devcluster.install import REPO
from localcluster.cluster import LocalCluster
from localcluster.mesh import MeshCluster
from meshtraffic.loadgen import LoadGenerator, Response, workdir_endpoints

CANARY_EXAMPLE = REPO / "deploy" / "examples" / "security-headers-canary.yaml"
CHAIN_HEADER = "x-filter-chain"  # every filter instance appends its version to it

# The example's analysis at demo scale: 5 s intervals instead of 30 s, a 5 s pause instead of
# 5 min, and request minimums for the demo's traffic (about 10 requests/s per pod).
DEMO_ANALYSIS = {
    "metrics": [
        {
            "name": "success-rate",
            "interval": "5s",
            "count": 2,
            "inconclusiveLimit": 1,
            "provider": {"istio": {"minRequests": 10, "successRate": {"minPercent": 99}}},
        },
        {
            "name": "latency",
            "interval": "5s",
            "count": 2,
            "inconclusiveLimit": 1,
            "provider": {"istio": {"minRequests": 10, "latencyP99": {"maxMilliseconds": 300}}},
        },
    ]
}
DEMO_STEPS = [
    {"setWeight": 34},
    {"analysis": DEMO_ANALYSIS},
    {"setWeight": 67},
    {"pause": {"duration": "5s"}},
    {"analysis": DEMO_ANALYSIS},
]


def canary_manifest(registry: str, tag: str, config: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(
        CANARY_EXAMPLE.read_text().replace("registry.local", registry)
    )
    manifest["spec"]["module"]["url"] = f"oci://{registry}/filters/security-headers:{tag}"
    manifest["spec"]["pluginConfig"] = config
    canary = manifest["spec"]["strategy"]["canary"]
    canary["steps"] = DEMO_STEPS
    canary["analysis"]["metrics"][0]["interval"] = "5s"
    return manifest


class Responses:
    """Steady load over the frontend's sidecars; which versions answered every response."""

    def __init__(self, cluster: MeshCluster, namespace: str, rate: float = 30) -> None:
        endpoints = workdir_endpoints(
            cluster.mesh.agent_dir, namespace, selector={"app": "frontend"}
        )
        self.lock = threading.Lock()
        self.by_version: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.unfiltered = 0  # answered 200 without any version of the filter having run
        self.load = LoadGenerator(
            endpoints, rate=rate, duration=600, concurrency=6, on_response=self._record
        )

    def _record(self, response: Response) -> None:
        versions = [v.strip() for v in response.headers.get(CHAIN_HEADER, "").split(",")]
        key = "+".join(v for v in versions if v) or "(none)"
        with self.lock:
            self.by_version[key] += 1
            self.by_status[response.status] += 1
            self.unfiltered += response.status == 200 and key == "(none)"

    def __enter__(self) -> Responses:
        self.load.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.load.stop()

    def summary(self) -> str:
        with self.lock:
            total = sum(self.by_version.values())
            versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.by_version.items()))
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.by_status.items()))
            two = sum(n for v, n in self.by_version.items() if "+" in v)
        return (
            f"{total} responses; by filter version {{{versions}}} ((none): a local error reply "
            f"of Envoy); by status {{{codes}}}; served by two versions at once: {two}, served "
            f"without the filter: {self.unfiltered}"
        )


def status_of(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "frel", name, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def follow(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 240,
) -> dict[str, Any]:
    """Print a line whenever the rollout's phase, step, weight or message changes, until done."""
    t0 = time.monotonic()
    last: tuple[Any, ...] = ()
    print(f"  {'time':>6}  {'phase':<11} {'step':<5} {'canary pods':<28} message")
    while True:
        status = status_of(cluster, namespace, name)
        pods = ",".join(p.rsplit("-", 1)[-1] for p in status.get("canaryPods", [])) or "-"
        line = (status.get("phase"), status.get("currentStep"), pods, status.get("message"))
        if line != last:
            last = line
            elapsed = time.monotonic() - t0
            message = str(status.get("message", ""))[:150]
            print(f"  {elapsed:5.1f}s  {line[0]!s:<11} {line[1] or '-':<5} {pods:<28} {message}",
                  flush=True)  # fmt: skip
        if done(status):
            return status
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"the rollout did not finish in {timeout:g}s: {status}")
        time.sleep(0.3)  # sampling the status for the timeline, not waiting for one event


def rollout_events(cluster: LocalCluster, namespace: str) -> None:
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=FilterRelease",
        "--sort-by=.lastTimestamp", "-o",
        "jsonpath={range .items[*]}{.lastTimestamp} {.type} {.reason}: {.message}{'\\n'}{end}",
    )  # fmt: skip
    print(f"$ kubectl get events -n {namespace} --field-selector involvedObject.kind=FilterRelease")
    for line in out.stdout.splitlines()[-14:]:
        print(f"  {line[:220]}")
