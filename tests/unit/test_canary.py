"""The canary engine driven decision by decision against a simulated cluster, with an injected
clock: steps in order and never twice, rollback to exactly the last good content, holds on
metrics outages, manual requests, and — as a hypothesis property over whole rollouts with pod
churn, crashes and failing analyses — every pod under exactly one WasmPlugin at every moment."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterrelease.core import analysis, rollout_state
from filterrelease.core.actions import (
    ApplyWasmPlugin,
    ConsumeRequest,
    DeleteWasmPlugin,
    EmitEvent,
    LabelPod,
    MarkSplit,
)
from filterrelease.core.analysis import MeasurementPhase, MetricResult
from filterrelease.core.analysis_spec import Metric
from filterrelease.core.decision import Decision
from filterrelease.core.hooks import GateResult, HookType
from filterrelease.core.module import ModuleFailure, VerifiedModule
from filterrelease.core.observation import Observation
from filterrelease.core.render import ReleaseRef, canary_plugin_name, stable_plugin_name
from filterrelease.core.rollout import decide, needs
from filterrelease.core.rollout_state import (
    TRANSITIONS,
    IllegalTransitionError,
    Phase,
    RolloutState,
    Trigger,
)
from filterrelease.core.spec import FilterReleaseSpec, parse_spec
from filterrelease.core.status import FilterReleaseStatus
from filterrelease.core.tracks import STABLE, track_label

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NAME = "headers"
KEY = track_label(NAME)
STEPS: list[dict[str, Any]] = [
    {"setWeight": 25},
    {"pause": {"duration": "10s"}},
    {"setWeight": 50},
    {"analysis": {"metrics": [{"name": "success", "interval": "5s", "count": 2,
                               "provider": {"istio": {"successRate": {"minPercent": 99}}}}]}},
    {"setWeight": 100},
]  # fmt: skip


def spec(tag: str, steps: list[dict[str, Any]] | None = None, **canary: Any) -> FilterReleaseSpec:
    raw = {
        "selector": {"matchLabels": {"app": "web"}},
        "phase": "AUTHN",
        "priority": 10,
        "module": {"url": f"oci://registry.local/filters/headers:{tag}"},
        "pluginConfig": {"version": tag},
        "strategy": {"canary": {"steps": steps or STEPS, **canary}},
    }
    parsed = parse_spec(raw)
    assert isinstance(parsed, FilterReleaseSpec), parsed
    return parsed


def verified(tag: str) -> VerifiedModule:
    digest = f"{tag:0>64}"[-64:].replace("v", "a").replace(".", "b")
    return VerifiedModule(
        source_url=f"oci://registry.local/filters/headers:{tag}",
        url=f"oci://registry.local/filters/headers@sha256:{digest}",
        sha256=digest,
        layout="oci-wasm",
        abi="proxy_abi_version_0_2_1",
        generation=1,
    )


class World:
    """The API server as far as one release goes: its plugins, pods and status."""

    def __init__(self, pods: int = 4) -> None:
        self.now = T0
        self.generation = 1
        self.spec = spec("v1")
        self.module: VerifiedModule | ModuleFailure = verified("v1")
        self.plugins: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, str]] = {f"web-{i}": {"app": "web"} for i in range(pods)}
        self.status = FilterReleaseStatus()
        self.request: str | None = None
        self.events: list[EmitEvent] = []
        self.uids = iter(range(1000))
        self.analysis_phase = MeasurementPhase.SUCCESSFUL
        self.fast_fail_phase = MeasurementPhase.SUCCESSFUL
        self.gates: dict[HookType, GateResult] = {}
        self.admission_split = False  # what the reconciler told the admission webhook

    def release(self, tag: str, **canary: Any) -> None:
        self.spec = spec(tag, **canary)
        self.module = verified(tag)
        self.generation += 1

    def observe(self) -> Observation:
        obs = Observation(
            release=ReleaseRef(
                namespace="shop", name=NAME, uid="uid-1", generation=self.generation
            ),
            spec=self.spec,
            status=self.status,
            live_plugins=copy.deepcopy(self.plugins),
            module=self.module,
            now=self.now,
            pods=copy.deepcopy(self.pods),
            request=self.request,
        )
        need = needs(obs)
        step = tuple(self._measure(m, need.step_results, self.analysis_phase)
                     for m in need.step_metrics)  # fmt: skip
        background = tuple(self._measure(m, need.background_results, self.fast_fail_phase)
                           for m in need.background_metrics)  # fmt: skip
        merged_step = {r.name: r for r in need.step_results} | {r.name: r for r in step}
        merged_bg = {r.name: r for r in need.background_results} | {r.name: r for r in background}
        gates = {k: v for k, v in self.gates.items() if k in (need.gate, HookType.ROLLBACK)}
        return obs.model_copy(
            update={
                "step_results": tuple(merged_step.values()),
                "background_results": tuple(merged_bg.values()),
                "gates": gates,
            }
        )

    def _measure(
        self, metric: Metric, results: tuple[MetricResult, ...], phase: MeasurementPhase
    ) -> MetricResult:
        stamp = self.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        m = analysis.Measurement(
            metric=metric.name, phase=phase, started_at=stamp, finished_at=stamp, value=1.0
        )
        return analysis.record(metric, next((r for r in results if r.name == metric.name), None), m)

    def apply(self, decision: Decision, *, crash_after: int | None = None) -> None:
        """Carry out the actions in order; a crash loses the rest and the status write."""
        for done, action in enumerate(decision.actions):
            if crash_after is not None and done >= crash_after:
                return
            self.act(action)
            check_safe(self)
        self.status = decision.status

    def act(self, action: Any) -> None:
        match action:
            case ApplyWasmPlugin():
                manifest = copy.deepcopy(action.manifest)
                old = self.plugins.get(action.name)
                uid = old["metadata"]["uid"] if old else f"p{next(self.uids)}"
                manifest["metadata"]["uid"] = uid
                self.plugins[action.name] = manifest
            case DeleteWasmPlugin():
                if (
                    action.uid is None
                    or self.plugins.get(action.name, {}).get("metadata", {}).get("uid")
                    == action.uid
                ):
                    self.plugins.pop(action.name, None)
            case LabelPod():
                if action.pod in self.pods:
                    if action.value is None:
                        self.pods[action.pod].pop(action.key, None)
                    else:
                        self.pods[action.pod][action.key] = action.value
            case MarkSplit():
                self.admission_split = action.split
            case ConsumeRequest():
                self.request = None
            case EmitEvent():
                self.events.append(action)

    def tick(self, seconds: float = 1.0, *, crash_after: int | None = None) -> Decision:
        decision = decide(self.observe())
        self.apply(decision, crash_after=crash_after)
        self.now += timedelta(seconds=seconds)
        return decision

    def create_pod(self, name: str) -> None:
        labels = {"app": "web"}
        # The admission webhook: split if the watch (the status) or the reconciler says so.
        if self.status.split or self.admission_split:
            labels[KEY] = STABLE
        self.pods[name] = labels

    def versions(self) -> dict[str, list[str]]:
        """Which plugins' versions select each pod, as istiod would compute it."""
        found: dict[str, list[str]] = {p: [] for p in self.pods}
        for plugin in self.plugins.values():
            match = plugin["spec"]["selector"]["matchLabels"]
            for pod, labels in self.pods.items():
                if all(labels.get(k) == v for k, v in match.items()):
                    found[pod].append(plugin["spec"]["pluginConfig"]["version"])
        return found

    def all_versions(self) -> set[str]:
        return {v for versions in self.versions().values() for v in versions}

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def check_safe(world: World) -> None:
    if not world.plugins:
        return
    for pod, versions in world.versions().items():
        assert len(versions) == 1, (pod, versions, world.plugins.keys())


def run_until(world: World, phase: Phase, limit: int = 200) -> None:
    for _ in range(limit):
        decision = world.tick()
        if decision.phase is phase and not [
            a for a in decision.actions if not isinstance(a, EmitEvent)
        ]:
            return
    raise AssertionError(f"never reached {phase}: {world.status.message}")


def steady_v1(pods: int = 4) -> World:
    world = World(pods)
    run_until(world, Phase.HEALTHY)
    assert world.all_versions() == {"v1"}
    return world


def test_the_first_release_goes_to_every_pod_at_once() -> None:
    world = steady_v1()
    assert list(world.plugins) == [stable_plugin_name(world.observe().release)]
    assert world.status.stable is not None
    assert world.status.stable.version == "v1"


def test_a_good_version_passes_every_step_in_order_and_is_promoted() -> None:
    world = steady_v1()
    world.release("v2")
    seen: list[tuple[str | None, dict[str, int]]] = []
    for _ in range(200):
        world.tick()
        count = {v: sum(1 for vs in world.versions().values() if vs == [v]) for v in ("v1", "v2")}
        if not seen or seen[-1] != (world.status.current_step, count):
            seen.append((world.status.current_step, count))
        if world.status.phase == Phase.HEALTHY:
            break
    assert world.status.stable is not None
    assert world.status.stable.version == "v2"
    assert world.status.split is None
    assert list(world.plugins) == [NAME]
    assert all(KEY not in labels for labels in world.pods.values())
    assert {"v2": 1, "v1": 3} in [c for _, c in seen]
    assert {"v2": 2, "v1": 2} in [c for _, c in seen]
    passed = [e.message for e in world.events if e.reason == "StepPassed"]
    assert [m.split(":")[0] for m in passed] == [f"step {i}/5" for i in range(1, 6)]
    assert world.reasons().count("Promoted") == 1
    assert world.status.history[0].outcome == "Promoted"


def test_a_rollout_walks_the_states_of_the_table_in_order() -> None:
    world = steady_v1()
    world.release("v2")
    states: list[RolloutState] = []
    while world.status.phase != Phase.HEALTHY or not states:
        state = world.tick().state
        if not states or states[-1] != state:
            states.append(state)
    expected = ["Stepping", "Waiting", "Stepping", "Analysing", "Stepping", "Promoting", "Steady"]
    assert states == [RolloutState(s) for s in expected]


def test_a_move_the_code_takes_and_the_table_lacks_fails_a_whole_rollout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """decide() checks every move it takes against the table, so walking whole rollouts (here,
    and the hypothesis property below over requests, crashes and outages) finds any move the
    table does not list."""
    world = steady_v1()
    world.release("v2")
    legal = dict(TRANSITIONS)
    del legal[(RolloutState.WAITING, Trigger.ROLLING_OUT)]
    monkeypatch.setattr(rollout_state, "TRANSITIONS", legal)
    with pytest.raises(IllegalTransitionError, match="RollingOut is not allowed from Waiting"):
        run_until(world, Phase.HEALTHY)


def test_a_pause_waits_its_duration_on_the_injected_clock() -> None:
    world = steady_v1()
    world.release("v2")
    for _ in range(20):
        world.tick(0.1)
        if world.status.current_step == "2/5":
            break
    entered = world.now
    while world.status.current_step == "2/5":
        world.tick(0.5)
    assert timedelta(seconds=10) <= world.now - entered <= timedelta(seconds=11)


def test_a_failed_fast_fail_rolls_back_to_exactly_the_last_good_content() -> None:
    world = steady_v1()
    good = copy.deepcopy(world.plugins[NAME])
    world.release("v2")
    for _ in range(10):
        world.tick()
    assert any(vs == ["v2"] for vs in world.versions().values())
    world.fast_fail_phase = MeasurementPhase.FAILED
    run_until(world, Phase.DEGRADED)
    assert world.plugins == {NAME: good}
    assert all(labels == {"app": "web"} for labels in world.pods.values())
    assert world.status.conditions[2].reason == Trigger.ROLLED_BACK  # Degraded
    assert world.status.rollout is not None
    assert "analysis failed" in (world.status.rollout.aborted or "")
    assert world.reasons().count("RolledBack") == 1
    # It stays rolled back: no retry loop until the spec changes.
    for _ in range(20):
        world.tick(5)
    assert world.plugins == {NAME: good}
    assert world.status.phase == Phase.DEGRADED
    world.release("v3")
    world.fast_fail_phase = MeasurementPhase.SUCCESSFUL
    world.tick()
    world.tick()
    assert canary_plugin_name(world.observe().release) in world.plugins


def test_a_failed_analysis_step_rolls_back() -> None:
    world = steady_v1()
    world.release("v2")
    world.analysis_phase = MeasurementPhase.FAILED
    run_until(world, Phase.DEGRADED, limit=400)
    assert "step 4/5 analysis failed" in (world.status.rollout.aborted or "")  # type: ignore[union-attr]
    assert world.all_versions() == {"v1"}


def test_metrics_unavailable_holds_without_promoting_or_rolling_back() -> None:
    world = steady_v1()
    world.release("v2")
    world.analysis_phase = MeasurementPhase.ERROR
    world.fast_fail_phase = MeasurementPhase.ERROR
    for _ in range(300):
        world.tick()
    assert world.status.phase == Phase.PROGRESSING
    assert world.status.current_step == "4/5"
    cond = world.status.condition("MetricsUnavailable")  # type: ignore[arg-type]
    assert cond is not None
    assert cond.status == "True"
    world.analysis_phase = MeasurementPhase.SUCCESSFUL
    world.fast_fail_phase = MeasurementPhase.SUCCESSFUL
    run_until(world, Phase.HEALTHY)
    assert world.status.stable is not None
    assert world.status.stable.version == "v2"
    cond = world.status.condition("MetricsUnavailable")  # type: ignore[arg-type]
    assert cond is not None
    assert cond.status == "False"


def test_a_long_outage_rolls_back_when_the_policy_says_so() -> None:
    world = steady_v1()
    world.release("v2", metricsOutage={"action": "Rollback", "after": "30s"})
    world.analysis_phase = MeasurementPhase.ERROR
    world.fast_fail_phase = MeasurementPhase.ERROR
    run_until(world, Phase.DEGRADED, limit=600)
    assert "metrics unavailable for over 30s" in (world.status.rollout.aborted or "")  # type: ignore[union-attr]


def test_manual_requests_pause_resume_promote_full_abort_and_retry() -> None:
    world = steady_v1()
    world.release("v2", steps=[{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}])
    for _ in range(10):
        world.tick()
    assert world.status.phase == Phase.PAUSED
    assert (world.status.rollout and world.status.rollout.paused) == "PauseStep"
    world.request = "promote"
    world.tick()
    assert world.request is None  # consumed
    world.tick()
    assert world.status.current_step == "3/3" or world.status.phase == Phase.HEALTHY
    run_until(world, Phase.HEALTHY)  # the last step passes and v2 is promoted
    world.release("v3", steps=[{"setWeight": 25}, {"pause": {}}])
    world.tick()
    world.request = "abort"
    run_until(world, Phase.DEGRADED)
    assert world.all_versions() == {"v2"}
    world.request = "retry"
    world.tick()
    world.tick()
    assert world.status.phase in (Phase.PROGRESSING, Phase.PAUSED)
    world.request = "promote-full"
    run_until(world, Phase.HEALTHY)
    assert world.all_versions() == {"v3"}
    world.request = "pause"
    world.tick()
    assert "RequestIgnored" in world.reasons()


def test_gates_hold_the_first_move_and_the_promotion() -> None:
    world = steady_v1()
    hook = {"name": "g", "type": "pre-rollout", "url": "http://gate.test/"}
    world.release("v2", steps=[{"setWeight": 50}], webhooks=[hook])
    world.gates[HookType.PRE_ROLLOUT] = GateResult(passed=False, message="g: HTTP 403")
    for _ in range(10):
        world.tick()
    assert world.all_versions() == {"v1"}
    assert "pre-rollout" in (world.status.message or "")
    world.gates[HookType.PRE_ROLLOUT] = GateResult(passed=True)
    run_until(world, Phase.HEALTHY)
    assert world.status.stable is not None
    assert world.status.stable.version == "v2"


def test_a_pod_created_mid_rollout_is_labelled_and_counted_in_the_weight() -> None:
    world = steady_v1(pods=3)
    world.release("v2", steps=[{"setWeight": 50}, {"pause": {}}])
    for _ in range(6):
        world.tick()
    world.create_pod("web-new")
    world.tick()
    check_safe(world)
    assert sum(1 for vs in world.versions().values() if vs == ["v2"]) == 2  # ceil(50% of 4)


# --- the property over whole rollouts ------------------------------------------------------------

EVENTS = st.lists(
    st.sampled_from(
        ["tick", "tick", "tick", "long", "create", "delete", "crash", "fail", "error", "heal",
         "promote", "abort", "pause", "resume", "retry", "promote-full", "v3", "undo",
         "undo:1"]
    ),
    min_size=5,
    max_size=80,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.integers(1, 6))
def test_every_pod_has_exactly_one_version_through_any_rollout(
    events: list[str], pods: int
) -> None:
    world = steady_v1(pods)
    good = copy.deepcopy(world.plugins[NAME])
    world.release("v2")
    created = 0
    passed: list[str] = []
    for event in events:
        if event == "create":
            world.create_pod(f"new-{created}")
            created += 1
        elif event == "delete" and world.pods:
            world.pods.pop(sorted(world.pods)[0])
        elif event == "fail":
            world.fast_fail_phase = MeasurementPhase.FAILED
        elif event == "error":
            world.analysis_phase = world.fast_fail_phase = MeasurementPhase.ERROR
        elif event == "heal":
            world.analysis_phase = world.fast_fail_phase = MeasurementPhase.SUCCESSFUL
        elif event in (
            "promote",
            "abort",
            "pause",
            "resume",
            "retry",
            "promote-full",
            "undo",
            "undo:1",
        ):
            world.request = event
        elif event == "v3":
            world.release("v3")
        before = len(world.events)
        world.tick(30 if event == "long" else 1, crash_after=0 if event == "crash" else None)
        check_safe(world)
        revision = world.status.rollout.revision if world.status.rollout else ""
        passed += [
            f"{revision}:{e.message.split(':')[0]}"
            for e in world.events[before:]
            if e.reason == "StepPassed"
        ]
    # No step of one rollout passes twice (a retry or a new version starts a new rollout).
    restarts = world.reasons().count("Retrying") + world.reasons().count("RolloutStarted")
    if restarts <= 1:
        assert len(passed) == len(set(passed)), passed
    # Whatever happened, the release settles with every pod on exactly one version, and a
    # rolled-back release runs exactly the last good content.
    world.analysis_phase = world.fast_fail_phase = MeasurementPhase.SUCCESSFUL
    world.request = None
    for _ in range(300):
        decision = world.tick(5)
        if decision.phase in (Phase.HEALTHY, Phase.DEGRADED) and not [
            a for a in decision.actions if not isinstance(a, EmitEvent)
        ]:
            break
        if decision.phase is Phase.PAUSED:
            world.request = "promote"
    check_safe(world)
    stable = world.status.stable
    if world.status.phase == Phase.DEGRADED and stable is not None and stable.version == "v1":
        assert world.plugins == {NAME: good}


def test_waves_roll_out_one_workload_at_a_time() -> None:
    world = World(pods=0)
    for i in range(4):
        world.pods[f"a-{i}"] = {"app": "web", "workload": "a"}
    for i in range(2):
        world.pods[f"b-{i}"] = {"app": "web", "workload": "b"}
    run_until(world, Phase.HEALTHY)
    world.release(
        "v2",
        steps=[{"setWeight": 50}, {"pause": {"duration": "5s"}}],
        waves={"byLabel": "workload"},
    )
    seen: list[tuple[str | None, frozenset[str]]] = []
    for _ in range(100):
        world.tick()
        on_v2 = frozenset(p for p, vs in world.versions().items() if vs == ["v2"])
        if not seen or seen[-1][1] != on_v2:
            seen.append((world.status.current_step, on_v2))
        if world.status.phase == Phase.HEALTHY:
            break
    shares = [pods for _, pods in seen]
    # Wave a first (half of its pods), then all of a and half of b, then everything.
    assert frozenset({"a-0", "a-1"}) in shares
    assert frozenset({"a-0", "a-1", "a-2", "a-3", "b-0"}) in shares
    assert all(
        not (p & {"b-0", "b-1"}) for p in shares[: shares.index(frozenset({"a-0", "a-1"})) + 1]
    )
    assert world.reasons().count("WaveStarted") == 1
    assert world.status.stable is not None
    assert world.status.stable.version == "v2"
    assert any("(wave 2/2)" in (step or "") for step, _ in seen)
