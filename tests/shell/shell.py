"""The real Reconciler over the fakes, one reconcile per tick, with the one-version invariant
checked after every tick."""

from __future__ import annotations

import asyncio
from typing import Any

from filterrelease.core.decision import Decision
from filterrelease.core.rollout_state import Phase
from filterrelease.reconcile import Reconciler
from filterrelease.telemetry import Metrics
from tests.shell.fakes import (
    Clock,
    Crash,
    FakeCluster,
    FakeMeasurer,
    FakeProxies,
    FakeVerifier,
    no_gates,
)

NS = "shop"
NAME = "headers"
PODS = 4
STEPS: list[dict[str, Any]] = [
    {"setWeight": 25},
    {"pause": {"duration": "10s"}},
    {"setWeight": 50},
    {"analysis": {"metrics": [{"name": "success", "interval": "5s", "count": 2,
                               "provider": {"istio": {"successRate": {"minPercent": 99}}}}]}},
    {"setWeight": 100},
]  # fmt: skip


def release(tag: str) -> dict[str, Any]:
    return {
        "apiVersion": "filterrelease.dev/v1alpha1",
        "kind": "FilterRelease",
        "metadata": {"namespace": NS, "name": NAME},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "phase": "AUTHN",
            "module": {"url": f"oci://registry.local/filters/headers:{tag}"},
            "pluginConfig": {"version": tag},
            "strategy": {"canary": {"steps": STEPS}},
        },
    }


class Shell:
    """A fake cluster with one release's pods, and the Reconciler that runs it."""

    def __init__(self, *, proxies: bool = False) -> None:
        """proxies: every pod has a proxy the operator reads (FakeProxies) before it counts a
        version as running there."""
        self.cluster = FakeCluster(sidecars=proxies)
        for i in range(PODS):
            self.cluster.pods[(NS, f"web-{i}")] = {"app": "web"}
        self.clock = Clock()
        self.measurer = FakeMeasurer()
        self.proxies = FakeProxies(self.cluster) if proxies else None
        self.reconciler = self.restart()

    def restart(self) -> Reconciler:
        """A new operator process: nothing carried over but what the cluster holds."""
        self.reconciler = Reconciler(
            self.cluster,
            FakeVerifier(),
            Metrics(),
            self.clock,
            measurer=self.measurer,
            proxies=self.proxies,
            ask_gate=no_gates,
        )
        return self.reconciler

    def tick(self, seconds: float = 5.0) -> Decision | None:
        """One reconcile; None when the operator crashed in it (a new one is started)."""
        try:
            decision = asyncio.run(self.reconciler.reconcile(NS, NAME))
            assert decision is not None
        except Crash:
            self.restart()
            decision = None
        check_one_version(self.cluster)
        self.clock.advance(seconds)
        return decision

    def run_until(self, phase: Phase, limit: int = 100) -> Decision:
        """Ticks until a decision in `phase` that has nothing left to write."""
        for _ in range(limit):
            decision = self.tick()
            if decision is not None and decision.phase is phase and not decision.actions:
                return decision
        raise AssertionError(f"never reached {phase}: {self.cluster.status(NS, NAME)}")

    def versions(self) -> dict[str, list[str]]:
        """Which plugins' versions select each pod, as istiod would compute it."""
        return versions(self.cluster)

    def steady(self, tag: str) -> None:
        self.cluster.put_release(release(tag))
        self.run_until(Phase.HEALTHY)
        assert all(found == [tag] for found in self.versions().values())


def versions(cluster: FakeCluster) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {pod: [] for (ns, pod) in cluster.pods if ns == NS}
    for (ns, _), plugin in cluster.plugins.items():
        match = plugin["spec"]["selector"]["matchLabels"]
        for (pod_ns, pod), labels in cluster.pods.items():
            if ns == pod_ns and all(labels.get(k) == v for k, v in match.items()):
                found[pod].append(plugin["spec"]["pluginConfig"]["version"])
    return found


def check_one_version(cluster: FakeCluster) -> None:
    """Once there is a plugin, every selected pod is under exactly one."""
    if not cluster.plugins:
        return
    for pod, found in versions(cluster).items():
        assert len(found) == 1, (pod, found, sorted(cluster.plugins))
