"""Undo: every proxy back to an earlier good version at once, driven decision by decision on
the same in-memory world as the canary tests (tests/unit/test_canary.py)."""

from __future__ import annotations

import copy

from filterrelease.core.module import ModuleFailure
from filterrelease.core.rollout_state import Phase, RolloutState
from filterrelease.core.status import ConditionType
from tests.unit.test_canary import NAME, World, check_safe, run_until, spec, steady_v1, verified

QUICK = [{"setWeight": 50}, {"pause": {}}]


def promoted(world: World, tag: str, history_limit: int = 5) -> None:
    world.release(tag, steps=QUICK)
    world.spec = world.spec.model_copy(update={"revision_history_limit": history_limit})
    for _ in range(100):
        world.tick()
        if world.status.phase == Phase.PAUSED:
            world.request = "promote"
        stable = world.status.stable
        if world.status.phase == Phase.HEALTHY and stable is not None and stable.version == tag:
            return
    raise AssertionError(f"{tag} never promoted: {world.status.message}")


def settle(world: World, limit: int = 50) -> None:
    for _ in range(limit):
        decision = world.tick()
        if not [a for a in decision.actions if type(a).__name__ != "EmitEvent"]:
            return
    raise AssertionError(f"never settled: {world.status.message}")


def test_history_numbers_revisions_and_keeps_content_of_the_newest_good_ones() -> None:
    world = steady_v1()
    for tag in ("v2", "v3"):
        promoted(world, tag, history_limit=2)
    history = world.status.history
    assert [(h.revision, h.version, h.outcome) for h in history] == [
        (3, "v3", "Promoted"),
        (2, "v2", "Promoted"),
        (1, "v1", "Released"),
    ]
    assert [h.content is not None for h in history] == [True, True, False]
    assert history[0].content == world.plugins[NAME]["spec"]


def test_undo_mid_canary_moves_every_pod_back_at_once_and_holds_until_the_spec_changes() -> None:
    world = steady_v1()
    good = copy.deepcopy(world.plugins[NAME])
    world.release("v2", steps=[{"setWeight": 50}, {"pause": {}}, {"setWeight": 75}])
    run_until(world, Phase.PAUSED)
    assert world.all_versions() == {"v1", "v2"}
    world.request = "undo"
    first = world.tick()
    assert world.request is None  # consumed
    assert first.state is RolloutState.UNDONE
    settle(world)
    check_safe(world)
    assert world.plugins == {NAME: good}  # exactly v1's content, on every pod
    assert world.status.phase == Phase.DEGRADED
    ready = world.status.condition(ConditionType.READY)
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "UndoneFromSpec")
    assert world.status.undone is not None
    assert world.status.undone.revision == 1
    assert world.status.history[0].outcome == "Undone"
    assert world.status.history[0].content == good["spec"]
    assert world.reasons().count("Undone") == 2  # asked for, then every proxy runs it
    assert world.status.rollout is None
    assert world.status.canary is None
    # Resyncs and other requests change nothing while the spec stays.
    world.request = "promote"
    for _ in range(5):
        world.tick()
    assert world.plugins == {NAME: good}
    assert world.status.phase == Phase.DEGRADED
    assert world.reasons()[-1] == "RequestIgnored"
    # A new spec ends the undo: its rollout canaries from the version the undo went back to.
    world.release("v3", steps=QUICK)
    for _ in range(5):
        world.tick()
    assert world.status.undone is None
    assert world.all_versions() == {"v1", "v3"}
    assert world.status.stable is not None
    assert world.status.stable.version == "v1"


def test_undo_to_a_revision_puts_back_that_exact_content() -> None:
    world = steady_v1()
    v1 = copy.deepcopy(world.plugins[NAME])
    promoted(world, "v2")
    promoted(world, "v3")
    world.request = "undo:1"
    settle(world)
    assert world.plugins == {NAME: v1}
    assert world.status.undone is not None
    assert world.status.undone.version == "v1"
    # `undo` alone from there goes to the newest good version other than the one running.
    world.request = "undo"
    settle(world)
    assert world.all_versions() == {"v3"}
    assert world.status.undone is not None
    assert world.status.undone.revision == 3


def test_an_undo_works_while_the_spec_module_fails_pre_flight() -> None:
    world = steady_v1()
    v1 = copy.deepcopy(world.plugins[NAME])
    promoted(world, "v2")
    world.spec = spec("v3")
    world.generation += 1
    world.module = ModuleFailure(reason="NotFound", message="manifest unknown", transient=False)
    world.tick()
    assert world.status.phase == Phase.DEGRADED
    world.request = "undo:1"
    settle(world)
    assert world.plugins == {NAME: v1}
    assert world.status.undone is not None
    world.module = verified("v3")  # the registry has it after all: the undo still holds
    for _ in range(3):
        world.tick()
    assert world.plugins == {NAME: v1}


def test_an_undo_that_cannot_be_done_says_why_and_changes_nothing() -> None:
    world = steady_v1()
    before = copy.deepcopy(world.plugins)
    world.request = "undo"  # only v1 ever ran: nothing earlier
    world.tick()
    assert world.request is None
    assert world.plugins == before
    assert world.status.phase == Phase.HEALTHY
    refused = world.events[-1]
    assert refused.reason == "RequestIgnored"
    assert "no earlier good version" in refused.message
    world.request = "undo:9"
    world.tick()
    assert "revision 9 is not in the history (revisions an undo can go to: 1)" in (
        world.events[-1].message
    )
    world.request = "undo:x"
    world.tick()
    assert "names no revision" in world.events[-1].message
