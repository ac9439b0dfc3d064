"""The real Reconciler, tick by tick, against an in-memory cluster: a promotion, a rollback, an
abort, a crash-and-resume and a conflict. What is asserted is the cluster's state and Events."""

from __future__ import annotations

import copy

import pytest

from filterrelease.core.requests import REQUEST_ANNOTATION
from filterrelease.core.rollout_state import Phase
from tests.shell.shell import NAME, NS, Shell, release

EVERY_STEP = [f"step {n}/5" for n in range(1, 6)]


def passed_steps(shell: Shell) -> list[str]:
    """The steps the StepPassed Events announce, in order ("step 2/5: paused 10s" → "step 2/5")."""
    return [e.message.split(":")[0] for e in shell.cluster.events if e.reason == "StepPassed"]


def test_a_canary_passes_every_step_in_order_and_is_promoted() -> None:
    shell = Shell()
    shell.steady("v1")
    shell.cluster.put_release(release("v2"))
    on_canary: list[int] = []  # pods on v2 after each tick
    for _ in range(100):
        decision = shell.tick()
        on_canary.append(sum(found == ["v2"] for found in shell.versions().values()))
        if decision is not None and decision.phase is Phase.HEALTHY and not decision.actions:
            break
    # 25% then 50% of the 4 pods, in that order, before all of them.
    assert [n for i, n in enumerate(on_canary) if i == 0 or on_canary[i - 1] != n] == [0, 1, 2, 4]
    assert list(shell.cluster.plugins) == [(NS, NAME)]  # the canary plugin is gone
    assert all(set(labels) == {"app"} for labels in shell.cluster.pods.values())
    assert passed_steps(shell) == EVERY_STEP
    assert "Promoted" in shell.cluster.reasons()
    assert shell.cluster.status(NS, NAME)["phase"] == "Healthy"
    assert shell.measurer.calls >= 2


def test_a_failed_analysis_puts_every_pod_back_on_exactly_the_stable_content() -> None:
    shell = Shell()
    shell.steady("v1")
    stable = copy.deepcopy(shell.cluster.plugins[(NS, NAME)]["spec"])
    shell.measurer.failing = {"success"}  # the analysis step's metric
    shell.cluster.put_release(release("v2"))
    shell.run_until(Phase.DEGRADED)
    assert all(found == ["v1"] for found in shell.versions().values())
    assert list(shell.cluster.plugins) == [(NS, NAME)]
    assert shell.cluster.plugins[(NS, NAME)]["spec"] == stable
    assert all(set(labels) == {"app"} for labels in shell.cluster.pods.values())
    assert {"RollingBack", "RolledBack"} <= set(shell.cluster.reasons())
    assert "Promoted" not in shell.cluster.reasons()
    assert passed_steps(shell) == EVERY_STEP[:3]  # the analysis, step 4, failed


def test_an_abort_request_is_consumed_and_rolls_back() -> None:
    shell = Shell()
    shell.steady("v1")
    stable = copy.deepcopy(shell.cluster.plugins[(NS, NAME)]["spec"])
    shell.cluster.put_release(release("v2"))
    while "v2" not in {v for found in shell.versions().values() for v in found}:
        shell.tick()
    shell.cluster.annotate(NS, NAME, REQUEST_ANNOTATION, "abort")
    shell.run_until(Phase.DEGRADED)
    annotations = shell.cluster.releases[(NS, NAME)]["metadata"].get("annotations") or {}
    assert REQUEST_ANNOTATION not in annotations
    assert all(found == ["v1"] for found in shell.versions().values())
    assert shell.cluster.plugins[(NS, NAME)]["spec"] == stable
    rolling_back = [e.message for e in shell.cluster.events if e.reason == "RollingBack"]
    assert rolling_back == ["aborted by request: rolling back"]
    assert "RolledBack" in shell.cluster.reasons()


def test_a_new_operator_resumes_mid_rollout_and_no_step_passes_twice() -> None:
    shell = Shell()
    shell.steady("v1")
    shell.cluster.put_release(release("v2"))
    while shell.cluster.reasons().count("StepPassed") < 2:
        shell.tick()
    assert shell.cluster.status(NS, NAME)["phase"] == "Progressing"
    shell.restart()
    shell.run_until(Phase.HEALTHY)
    assert passed_steps(shell) == EVERY_STEP
    assert all(found == ["v2"] for found in shell.versions().values())


def test_a_plugin_of_that_name_not_owned_by_the_release_is_a_conflict_and_left_alone() -> None:
    shell = Shell()
    foreign = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"namespace": NS, "name": NAME, "uid": "someone-else"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "pluginConfig": {"version": "x"}},
    }
    shell.cluster.plugins[(NS, NAME)] = copy.deepcopy(foreign)
    pods = copy.deepcopy(shell.cluster.pods)
    shell.cluster.put_release(release("v1"))
    decisions = [shell.tick() for _ in range(3)]
    assert all(d is not None and d.phase is Phase.DEGRADED for d in decisions)
    assert shell.cluster.plugins == {(NS, NAME): foreign}
    assert shell.cluster.pods == pods
    status = shell.cluster.status(NS, NAME)
    assert status["phase"] == "Degraded"
    assert "Conflict" in {c["reason"] for c in status["conditions"]}
    # Only the status was written: one patch, since the decision does not change after it.
    assert shell.cluster.writes == 1


@pytest.mark.parametrize("at_write", [1, 2, 3])
def test_an_operator_killed_between_writes_resumes_and_no_step_passes_twice(
    at_write: int,
) -> None:
    """Killed at every few reconciles, each time at a different write (a plugin, a pod label,
    the status, an Event): a new operator finds what the cluster holds and goes on."""
    shell = Shell()
    shell.steady("v1")
    shell.cluster.put_release(release("v2"))
    crashes = 0
    for tick in range(100):
        if tick % 3 == 0:
            shell.cluster.crash_in = at_write
        decision = shell.tick()
        crashes += decision is None
        if decision is not None and decision.phase is Phase.HEALTHY and not decision.actions:
            break
    assert crashes > 0
    assert all(found == ["v2"] for found in shell.versions().values())
    passed = passed_steps(shell)
    # A crash between the status write and its Events loses an Event, never repeats a step.
    assert passed == sorted(set(passed)), passed
    status = shell.cluster.status(NS, NAME)  # the record, where Events may have been lost
    assert status["phase"] == "Healthy"
    assert status["stable"]["version"] == "v2"
