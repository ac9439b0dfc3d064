"""The real Reconciler with proxies to confirm (FakeProxies: each pod runs what the cluster's
WasmPlugins give it, unless it is slow or its module did not load): Ready, a canary step and
a promotion wait for them; a canary its proxies cannot load rolls back."""

from __future__ import annotations

from filterrelease.core.rollout_state import Phase, Trigger
from filterrelease.core.timestamps import parse_timestamp
from filterrelease.core.tracks import CANARY, track_label
from tests.shell.shell import NAME, Shell, release


def canary_pods(shell: Shell) -> set[str]:
    key = track_label(NAME)
    return {pod for (_, pod), labels in shell.cluster.pods.items() if labels.get(key) == CANARY}


def test_a_release_is_healthy_only_once_every_proxy_runs_it() -> None:
    shell = Shell(proxies=True)
    assert shell.proxies is not None
    shell.proxies.slow = {"web-2"}
    shell.cluster.put_release(release("v1"))
    for _ in range(5):
        ticked = shell.tick()
        assert ticked is not None
        assert ticked.phase is not Phase.HEALTHY
        decision = ticked
    assert decision.trigger is Trigger.CONVERGING
    assert decision.status.proxies is not None
    assert decision.status.proxies.ready == "3/4"
    assert [p.pod for p in decision.status.proxies.lagging] == ["web-2"]
    shell.proxies.slow = set()
    done = shell.run_until(Phase.HEALTHY)
    assert done.status.proxies is not None
    assert done.status.proxies.ready == "4/4"
    assert done.status.stable is not None


def test_a_resync_of_a_confirmed_release_reads_no_proxy() -> None:
    """Without a canary strategy a confirmed release lists no pod and asks no proxy (with one,
    its pods are listed and the reader answers from what the proxies confirmed before)."""
    shell = Shell(proxies=True)
    direct = release("v1")
    del direct["spec"]["strategy"]
    shell.cluster.put_release(direct)
    shell.run_until(Phase.HEALTHY)
    assert shell.proxies is not None
    reads, writes = shell.proxies.reads, shell.cluster.writes
    for _ in range(3):
        shell.tick()
    assert shell.proxies.reads == reads
    assert shell.cluster.writes == writes


def test_a_step_holds_for_a_slow_canary_proxy_and_its_analysis_starts_once_it_runs() -> None:
    shell = Shell(proxies=True)
    shell.steady("v1")
    assert shell.proxies is not None
    shell.proxies.slow = {f"web-{i}" for i in range(4)}  # nobody loads anything new
    shell.cluster.put_release(release("v2"))
    for _ in range(10):
        decision = shell.tick()
        if canary_pods(shell):
            break
    held = [shell.tick() for _ in range(4)]
    last = held[-1]
    assert last is not None
    assert last.status.rollout is not None
    assert last.status.rollout.step == 0  # setWeight 25 has not passed
    assert not last.status.rollout.proxies_confirmed
    assert "holds until the proxies run it" in (last.status.message or "")
    shell.proxies.slow = set()
    confirmed_at = shell.clock()
    for _ in range(5):
        decision = shell.tick()
        assert decision is not None
        rollout = decision.status.rollout
        if rollout is not None and rollout.step > 0:
            break
    assert rollout is not None
    assert rollout.step == 1
    assert rollout.canary_since is not None
    assert parse_timestamp(rollout.canary_since) >= confirmed_at.replace(microsecond=0)


def test_a_canary_whose_proxy_runs_the_deny_all_fallback_rolls_back() -> None:
    shell = Shell(proxies=True)
    shell.steady("v1")
    assert shell.proxies is not None
    shell.cluster.put_release(release("v2"))
    for _ in range(10):
        shell.tick()
        if canary_pods(shell):
            break
    shell.proxies.denied = canary_pods(shell)
    done = shell.run_until(Phase.DEGRADED)
    assert done.trigger is Trigger.ROLLED_BACK
    rollout = done.status.rollout
    assert rollout is not None
    assert "proxies report the canary not loaded" in (rollout.aborted or "")
    assert "deny-all fallback" in (rollout.aborted or "")
    shell.proxies.denied = set()
    assert all(found == ["v1"] for found in shell.versions().values())
