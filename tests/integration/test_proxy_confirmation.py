"""Proxy-acknowledged releases on the local mesh: Ready, a canary step and a rollback decided by
what each sidecar's real Envoy reports it runs, read by the operator through the API server
(pods/portforward to port 15000, served by kwok's PortForward to the sidecar's admin).

The same real parts as test_canary_faults: the operator under its own ServiceAccount (deploy/'s
RBAC, which grants pods/portforward), a real Envoy per pod running the real filters, the real
registry, steady traffic through every sidecar.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshagent.sidecar import SLOW_LOAD_ANNOTATION
from tests.support.canary import (
    NS,
    PODS,
    RELEASE,
    Traffic,
    brief,
    install_v1,
    status,
    versions_of,
)
from tests.support.canary_faults import (
    FaultMesh,
    Gate,
    Watcher,
    faulty_mesh,
    faulty_release,
    lose_blob,
    publish_module,
    wait_rolled_back,
)
from tests.support.polling import poll

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

LOAD_WORKERS = 8  # Traffic's concurrency: one keep-alive connection per worker and pod


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, filter_modules: dict[str, bytes]
) -> Iterator[FaultMesh]:
    with faulty_mesh(tmp_path_factory.mktemp("proxy-confirmation"), filter_modules) as found:
        yield found


def condition(current: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in current.get("conditions", []) if c["type"] == kind), {})


def fresh_release(mesh: FaultMesh, config: dict[str, Any]) -> None:
    mesh.cluster.kubectl("delete", "frel", RELEASE, "-n", NS, "--ignore-not-found", "--wait")
    poll(
        lambda: not mesh.cluster.kubectl("get", "wasmplugins", "-n", NS, "-o", "name").stdout,
        timeout=60,
        what="the old release's WasmPlugins garbage-collected",
    )
    faulty_release(mesh, "security-headers", config, steps=[{"setWeight": 50}, {"pause": {}}])


@pytest.mark.timeout(300)
def test_a_first_release_is_ready_only_once_every_sidecar_runs_it(mesh: FaultMesh) -> None:
    with Traffic(mesh) as traffic:
        t0 = time.monotonic()
        fresh_release(mesh, {"version": "v1"})

        def ready() -> dict[str, Any] | None:
            current = status(mesh)
            return current if condition(current, "Ready").get("status") == "True" else None

        # Polled as fast as kubectl answers: the moment seen is at or after the real one.
        at_ready = poll(ready, timeout=120, interval=0.05, what="Ready",
                        on_timeout=lambda: brief(mesh))  # fmt: skip
        seen_ready = time.monotonic()

        def answered_enough() -> bool:
            recent = [s[1] for s in traffic.since(seen_ready)]
            return all(recent.count(pod) >= 20 for pod in set(recent)) and len(set(recent)) == PODS

        poll(lambda: answered_enough() or None, timeout=60,
             what="20 responses from every sidecar after Ready")  # fmt: skip
        with traffic.lock:
            started = list(traffic.started)
    proxies = at_ready["proxies"]
    assert proxies["ready"] == f"{PODS}/{PODS}", proxies
    assert proxies["confirmed"] == proxies["stable"] == PODS
    assert not proxies.get("lagging"), proxies
    assert condition(at_ready, "ProxiesConfirmed")["status"] == "True"
    assert at_ready["stable"]["pluginConfig"] == {"version": "v1"}
    # Before Ready the release said it was waiting for the proxies, not that it was done.
    assert at_ready["history"][0]["outcome"] == "Released"
    # Every request sent once Ready was seen was answered by v1, except at most the one that
    # closes each keep-alive connection opened on the listener before the filter was added
    # (Envoy drains it: its next response says Connection: close).
    after = [(pod, chain) for when, pod, chain in started if when >= seen_ready]
    stale = [(pod, chain) for pod, chain in after if versions_of(chain) != ["v1"]]
    per_pod = {pod: sum(1 for p, _ in stale if p == pod) for pod, _ in stale}
    assert all(n <= LOAD_WORKERS for n in per_pod.values()), per_pod
    before = [(pod, chain) for when, pod, chain in started if t0 <= when < seen_ready]
    print(
        f"first release: {len(before)} requests before Ready, {len(after)} after, of which "
        f"{len(stale)} on draining connections ({per_pod})"
    )
    table = mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS).stdout
    header, row = table.splitlines()[:2]
    assert "PROXIES" in header.split(), table
    assert f"{PODS}/{PODS}" in row.split(), table


@pytest.mark.timeout(300)
def test_a_resync_of_a_confirmed_release_reads_no_proxy(mesh: FaultMesh) -> None:
    install_v1(mesh)
    confirmed = status(mesh)["proxies"]
    # Several resyncs (every 5 s here) later, the status is the same object: nothing re-read
    # and nothing rewritten (the confirmation time would have moved).
    rv = json.loads(mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, "-o", "json").stdout)
    time_to_wait = 3 * mesh.operator.resync_seconds
    deadline = time.monotonic() + time_to_wait
    while time.monotonic() < deadline:
        now = json.loads(
            mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, "-o", "json").stdout
        )
        assert now["metadata"]["resourceVersion"] == rv["metadata"]["resourceVersion"]
        time.sleep(0.5)
    assert status(mesh)["proxies"] == confirmed


@pytest.mark.timeout(600)
def test_a_canary_its_proxies_cannot_load_is_rolled_back_on_their_report(mesh: FaultMesh) -> None:
    """The module is lost from the registry after pre-flight verified it: the canary pods'
    agents install the deny-all fallback. With the Wasm fast-fail off and a pause step (no
    analysis), only the proxies' own report can catch it."""
    install_v1(mesh)
    url, layer = publish_module(mesh, "security-headers", f"lost-{time.time_ns()}")
    mesh.modules["lost"] = url
    with Gate() as gate, Watcher(mesh) as watcher, Traffic(mesh) as traffic:
        body = json.loads(
            mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, "-o", "json").stdout
        )
        spec = body["spec"]
        spec["module"] = {"url": url}
        spec["pluginConfig"] = {"version": "bad"}
        spec["strategy"]["canary"] = {
            "steps": [{"setWeight": 25}, {"pause": {}}],
            "wasmFastFail": False,
            "webhooks": [{"name": "hold", "type": "pre-rollout", "url": gate.url}],
        }
        mesh.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        # The gate is asked once pre-flight verified the module; lose it then.
        poll(lambda: gate.calls or None, timeout=120, what="the pre-rollout gate asked",
             on_timeout=lambda: brief(mesh))  # fmt: skip
        assert not watcher.canary_pods
        lose_blob(mesh.cluster.registry, "filters/security-headers", layer)
        gate.opened.set()
        final = wait_rolled_back(mesh, traffic)
    aborted = final["rollout"]["aborted"]
    assert "proxies report the canary not loaded" in aborted, aborted
    assert "deny-all fallback" in aborted, aborted
    assert final["stable"]["pluginConfig"] == {"version": "v1"}
    assert 0 < len(watcher.canary_pods) < PODS
    print(f"rolled back on the proxies' report: {aborted}")


SLOW_S = 8  # the slow-load fault: each conversion on a pod waits this long


@pytest.mark.timeout(600)
def test_a_step_holds_while_its_proxies_are_slow_to_load_the_canary(mesh: FaultMesh) -> None:
    install_v1(mesh)
    url, _ = publish_module(mesh, "security-headers", f"v2-{time.time_ns()}")
    mesh.modules["v2"] = url
    annotate = ("annotate", "pods", "-n", NS, "-l", "app=web", "--overwrite")
    mesh.cluster.kubectl(*annotate, f"{SLOW_LOAD_ANNOTATION}={SLOW_S}")
    try:
        # Wasm fast-fail off: its window on a pod can still count the failed fetches an earlier
        # test's lost module caused there, and what this test is about is the proxies' own
        # report (which still rolls a canary that did not load back).
        faulty_release(
            mesh,
            "v2",
            {"version": "v2"},
            steps=[{"setWeight": 50}, {"pause": {"duration": "1s"}}],
            wasm_fast_fail=False,
        )

        def holding() -> dict[str, Any] | None:
            current = status(mesh)
            proxies = current.get("proxies") or {}
            rollout = current.get("rollout") or {}
            waiting = rollout.get("weight") == 50 and proxies.get("pending", 0) > 0
            return current if waiting else None

        # The canary pods' agents take SLOW_S to load it: the step shows it waiting meanwhile.
        held = poll(holding, timeout=120, what="the first step holding for slow proxies",
                    on_timeout=lambda: brief(mesh))  # fmt: skip

        def promoted() -> dict[str, Any] | None:
            current = status(mesh)
            top = (current.get("history") or [{}])[0]
            return current if top.get("outcome") == "Promoted" else None

        final = poll(promoted, timeout=240, what="promoted", on_timeout=lambda: brief(mesh))
    finally:
        mesh.cluster.kubectl(*annotate, f"{SLOW_LOAD_ANNOTATION}-")
    rollout = held["rollout"]
    assert rollout["step"] == 0, rollout  # the setWeight step did not pass
    assert not rollout.get("proxiesConfirmed"), rollout
    assert "holds until the proxies run it" in held["message"], held["message"]
    assert held["proxies"]["stable"] + held["proxies"]["pending"] == PODS, held["proxies"]
    assert condition(held, "ProxiesConfirmed")["reason"] == "ProxiesConverging"
    assert condition(held, "Ready")["status"] == "False"
    assert final["proxies"]["ready"] == f"{PODS}/{PODS}"
    assert final["stable"]["pluginConfig"] == {"version": "v2"}
    print(f"held at step 0: {held['message']}")
