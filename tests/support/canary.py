"""Whole canary rollouts on a MeshCluster with the operator running (test_canary_e2e,
test_canary_faults, test_failover and bench/canary_rollback): the mesh, the release and its
status, and steady traffic recording which filter versions answered every response."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.install import OPERATOR_NAMESPACE, install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster.mesh import MeshCluster, meshed_deployment
from meshtraffic.loadgen import LoadGenerator, Response, workdir_endpoints
from tests.support.mesh import list_pods
from tests.support.polling import poll

NS = "shop"


RELEASE = "headers"


PODS = 4


CHAIN = "x-filter-chain"


@dataclass
class Mesh:
    cluster: MeshCluster
    operator: OperatorProcess
    modules: dict[str, str] = field(default_factory=dict)  # name → pinned oci:// URL


@contextmanager
def operated_mesh(
    workdir: Path, operator_env: Mapping[str, str] | None = None
) -> Iterator[tuple[MeshCluster, OperatorProcess]]:
    """A MeshCluster with the operator running under its own RBAC (analysis against the
    cluster's Prometheus) and a meshed Deployment of PODS pods serving in NS."""
    with MeshCluster(workdir / "cluster", nodes=2) as cluster:
        kubeconfig = install_filterrelease(cluster)
        env = {
            "FILTERRELEASE_PROMETHEUS_URL": cluster.mesh.prometheus.url,
            "FILTERRELEASE_PROMETHEUS_SCRAPE_SECONDS": "1",
            "FILTERRELEASE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
            **(operator_env or {}),
        }
        operator = OperatorProcess(
            kubeconfig, workdir / "operator.log", resync_seconds=5, extra_env=env
        )
        with operator:
            cluster.kubectl("create", "namespace", NS)
            cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
            web = meshed_deployment("web", NS, PODS)
            cluster.kubectl("apply", "-f", "-", input=json.dumps(web))
            poll(
                lambda: len(serving(cluster)) == PODS or None,
                timeout=120,
                what=f"{PODS} sidecars serving",
            )
            yield cluster, operator


def report(mesh: Mesh) -> None:
    """The operator's log and the namespace's events, for the test output."""
    print(f"\n--- operator log ---\n{mesh.operator.log_tail(60)}")
    events = mesh.cluster.kubectl(
        "get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False
    )
    print(f"\n--- events in {NS} ---\n{events.stdout[-6000:]}")


def serving(cluster: MeshCluster) -> list[str]:
    return sorted(p for ns, p in cluster.mesh.exporter.pods if ns == NS)


ANALYSIS = {
    "metrics": [
        {
            "name": "success-rate",
            "interval": "5s",
            "count": 3,
            # Low traffic right after a Prometheus outage (its data has a gap) is inconclusive,
            # not bad: tolerate a couple of such measurements rather than stop for a person.
            "inconclusiveLimit": 2,
            "provider": {"istio": {"successRate": {"minPercent": 99}, "minRequests": 5}},
        },
        {
            "name": "latency",
            "interval": "5s",
            "count": 3,
            # Low traffic right after a Prometheus outage (its data has a gap) is inconclusive,
            # not bad: tolerate a couple of such measurements rather than stop for a person.
            "inconclusiveLimit": 2,
            "provider": {"istio": {"latencyP99": {"maxMilliseconds": 250}, "minRequests": 5}},
        },
    ]
}


STEPS = [{"setWeight": 25}, {"analysis": ANALYSIS}, {"setWeight": 50}, {"analysis": ANALYSIS}]


def release(mesh: Mesh, module: str, config: dict[str, Any], steps: Any = None) -> None:
    body = {
        "apiVersion": "filterrelease.dev/v1alpha1",
        "kind": "FilterRelease",
        "metadata": {"name": RELEASE, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "phase": "AUTHN",
            "priority": 10,
            "failStrategy": "FAIL_CLOSE",
            "module": {"url": mesh.modules[module]},
            "pluginConfig": config,
            "strategy": {"canary": {"steps": steps or STEPS}},
        },
    }
    mesh.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def status(mesh: Mesh) -> dict[str, Any]:
    out = mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, "-o", "json")
    return dict(json.loads(out.stdout).get("status") or {})


def brief(mesh: Mesh) -> str:
    """The status without the WasmPlugin contents, for failure messages."""
    current = status(mesh)
    for key in ("applied", "stable", "canary", "module"):
        current.pop(key, None)
    return json.dumps(current, indent=1)[:4000]


def wait_phase(mesh: Mesh, phase: str, timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = status(mesh)
        return current if current.get("phase") == phase else None

    return poll(reached, timeout=timeout, what=f"phase {phase}",
                on_timeout=lambda: brief(mesh))  # fmt: skip


class Traffic:
    """Steady load through every sidecar; every response's versions, with the time it came."""

    def __init__(
        self,
        mesh: Mesh,
        rate: float = 40,
        namespace: str = NS,
        selector: dict[str, str] | None = None,
    ) -> None:
        endpoints = workdir_endpoints(mesh.cluster.mesh.agent_dir, namespace,
                                      selector=selector or {"app": "web"},
                                      list_pods=list_pods(mesh.cluster))  # fmt: skip
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str, int, str]] = []  # (time, pod, status, chain)
        self.started: list[tuple[float, str, str]] = []  # (when sent, pod, chain)
        self.load = LoadGenerator(
            endpoints, rate=rate, duration=540, concurrency=8, on_response=self._record
        )

    def _record(self, response: Response) -> None:
        chain = response.headers.get(CHAIN, "")
        with self.lock:
            now = time.monotonic()
            self.seen.append((now, response.endpoint.pod, response.status, chain))
            self.started.append((now - response.latency_s, response.endpoint.pod, chain))

    def __enter__(self) -> Traffic:
        self.load.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.load.stop()

    def since(self, t0: float) -> list[tuple[float, str, int, str]]:
        with self.lock:
            return [s for s in self.seen if s[0] >= t0]


def events(mesh: Mesh, reason: str) -> list[str]:
    """The messages of the current release object's Events of one reason (a release deleted
    and recreated under the same name has a new uid, and its old Events stay around)."""
    uid = json.loads(mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, "-o", "json").stdout)[
        "metadata"
    ]["uid"]
    out = mesh.cluster.kubectl(
        "get", "events", "-n", NS,
        "--field-selector", f"reason={reason},involvedObject.uid={uid}",
        "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}",
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if line]


def explain(mesh: Mesh, samples: list[tuple[float, str, int, str]]) -> str:
    """For a failed one-version check: the offending responses, and for each pod that served one
    its labels now and its agent's last lines (when its sidecar started, which filters it got)."""
    lines = [f"{len(samples)} responses: {samples[:10]}"]
    for pod in sorted({s[1] for s in samples}):
        labels = mesh.cluster.kubectl(
            "get", "pod", pod, "-n", NS, "-o", "jsonpath={.metadata.labels}", check=False
        ).stdout
        log = mesh.cluster.mesh.agent_dir / NS / pod / "agent.log"
        tail = log.read_text().splitlines()[-25:] if log.exists() else ["(no agent.log)"]
        lines += [f"--- {pod} labels {labels}", *tail]
    return "\n".join(lines)


def versions_of(chain: str) -> list[str]:
    return [v.strip() for v in chain.split(",") if v.strip()]


def lately_all_on(traffic: Traffic, version: str, pods: int = PODS, seconds: float = 2) -> bool:
    """Every one of `pods` sidecars answered in the last `seconds`, each time with `version`
    alone: a check that needs traffic to pass, never one that passes for want of it."""
    recent = traffic.since(time.monotonic() - seconds)
    return len({s[1] for s in recent}) == pods and all(
        versions_of(s[3]) == [version] for s in recent
    )


def install_v1(mesh: Mesh) -> None:
    """A fresh release of v1: the first release of a FilterRelease goes to every pod at once."""
    mesh.cluster.kubectl("delete", "frel", RELEASE, "-n", NS, "--ignore-not-found", "--wait")
    poll(
        lambda: not mesh.cluster.kubectl("get", "wasmplugins", "-n", NS, "-o", "name").stdout,
        timeout=60,
        what="the old release's WasmPlugins garbage-collected",
    )
    release(mesh, "security-headers", {"version": "v1"})
    wait_phase(mesh, "Healthy")
    poll(lambda: all_on(mesh, "v1") or None, timeout=60, what="every sidecar on v1")


def all_on(mesh: Mesh, version: str) -> bool:
    with Traffic(mesh, rate=40) as traffic:
        t0 = time.monotonic()
        poll(lambda: len({s[1] for s in traffic.since(t0)}) == PODS or None, timeout=10,
             what="a response from every sidecar")  # fmt: skip
        return all(versions_of(s[3]) == [version] for s in traffic.since(t0))
