"""A release deleted mid-canary leaves no track label behind: on the deletion, after a restart
(the sweep), and with a release of the same name created right after."""

from __future__ import annotations

import asyncio

from filterrelease.core.rollout_state import Phase
from filterrelease.core.tracks import track_label
from filterrelease.release_locks import ReleaseLocks
from filterrelease.tracks import sweep
from tests.shell.shell import NAME, NS, Shell, release

KEY = track_label(NAME)


def mid_canary() -> Shell:
    """v1 stable, v2 on a canary share of the pods: every pod carries the track label."""
    shell = Shell()
    shell.steady("v1")
    shell.cluster.put_release(release("v2"))
    while "v2" not in {v for found in shell.versions().values() for v in found}:
        shell.tick()
    assert all(KEY in labels for labels in shell.cluster.pods.values())
    return shell


def tracked(shell: Shell) -> dict[str, str]:
    return {pod: labels[KEY] for (_, pod), labels in shell.cluster.pods.items() if KEY in labels}


def test_the_reconcile_that_finds_the_release_gone_takes_its_labels_off() -> None:
    shell = mid_canary()
    shell.cluster.delete_release(NS, NAME)
    assert asyncio.run(shell.reconciler.reconcile(NS, NAME)) is None
    assert tracked(shell) == {}
    assert all(labels == {"app": "web"} for labels in shell.cluster.pods.values())
    assert len(shell.reconciler.locks) == 0  # nothing kept for a release that is gone


def test_a_sweep_after_a_restart_cleans_up_releases_deleted_while_no_operator_ran() -> None:
    shell = mid_canary()
    other = release("v1")
    other["metadata"]["name"] = "limits"
    other["status"] = {"split": True}  # mid-canary too: its labels are its own
    shell.cluster.put_release(other)
    shell.cluster.pods[(NS, "web-0")][track_label("limits")] = "stable"  # a live release's
    shell.cluster.delete_release(NS, NAME)
    shell.restart()
    releases = asyncio.run(shell.cluster.list_releases(NS))
    removed = asyncio.run(sweep(shell.cluster, shell.reconciler.locks, NS, releases))
    assert removed == 4
    assert tracked(shell) == {}
    assert shell.cluster.pods[(NS, "web-0")] == {"app": "web", track_label("limits"): "stable"}
    # Nothing left to do: a second sweep writes nothing.
    writes = shell.cluster.writes
    assert asyncio.run(sweep(shell.cluster, shell.reconciler.locks, None, releases)) == 0
    assert shell.cluster.writes == writes


def test_a_sweep_leaves_a_new_release_of_the_same_name_alone() -> None:
    """The sweep's release list predates the new release; under the lock it looks again."""
    shell = mid_canary()
    shell.cluster.delete_release(NS, NAME)
    stale_list = asyncio.run(shell.cluster.list_releases(NS))  # listed before the new one
    assert stale_list == []
    shell.restart()
    shell.cluster.put_release(release("v3"))
    shell.run_until(Phase.HEALTHY)
    shell.cluster.put_release(release("v4"))
    while "v4" not in {v for found in shell.versions().values() for v in found}:
        shell.tick()
    split = tracked(shell)
    assert sorted(split.values()) == ["canary", "stable", "stable", "stable"]
    assert asyncio.run(sweep(shell.cluster, ReleaseLocks(), NS, stale_list)) == 0
    assert tracked(shell) == split
    shell.run_until(Phase.HEALTHY)
    assert all(found == ["v4"] for found in shell.versions().values())


def test_a_new_release_of_the_same_name_created_before_the_deletion_was_seen() -> None:
    """Deleted mid-canary and created again at once (kubectl replace --force): its first
    reconcile finds the old labels, puts every pod under its one plugin and drops them."""
    shell = mid_canary()
    shell.cluster.delete_release(NS, NAME)
    shell.cluster.put_release(release("v3"))
    shell.run_until(Phase.HEALTHY)  # the one-version check runs after every tick
    assert all(found == ["v3"] for found in shell.versions().values())
    assert tracked(shell) == {}


def test_a_new_release_without_a_canary_does_not_keep_the_old_labels() -> None:
    """Created again at once without a canary strategy (its pods are never listed): it is
    released to every pod, and the next sweep takes the old incarnation's labels off, since a
    release that never split owns no track label."""
    shell = mid_canary()
    shell.cluster.delete_release(NS, NAME)
    direct = release("v3")
    del direct["spec"]["strategy"]
    shell.cluster.put_release(direct)
    shell.run_until(Phase.HEALTHY)
    assert len(tracked(shell)) == 4
    releases = asyncio.run(shell.cluster.list_releases(NS))
    assert asyncio.run(sweep(shell.cluster, shell.reconciler.locks, NS, releases)) == 4
    assert tracked(shell) == {}
    shell.run_until(Phase.HEALTHY)
    assert all(found == ["v3"] for found in shell.versions().values())
