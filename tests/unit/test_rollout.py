"""The release state machine, driven one decision at a time with an injected clock."""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterrelease.core.actions import ApplyWasmPlugin, EmitEvent
from filterrelease.core.decision import Decision
from filterrelease.core.failures import write_failed, write_retrying
from filterrelease.core.module import ModuleFailure, Reason, VerifiedModule, reusable_resolution
from filterrelease.core.observation import Observation, derive
from filterrelease.core.render import ReleaseRef, render_wasmplugin
from filterrelease.core.rollout import decide
from filterrelease.core.rollout_state import (
    PHASE,
    TRANSITIONS,
    IllegalTransitionError,
    Phase,
    RolloutState,
    Trigger,
    state_of,
    transition,
)
from filterrelease.core.spec import FilterReleaseSpec, Module, SpecError, parse_spec
from filterrelease.core.status import (
    Condition,
    ConditionType,
    FilterReleaseStatus,
    RolloutStatus,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REF = ReleaseRef(namespace="shop", name="security-headers", uid="uid-1", generation=1)


def spec_of(raw: dict[str, Any]) -> FilterReleaseSpec:
    spec = parse_spec(raw)
    assert isinstance(spec, FilterReleaseSpec), spec
    return spec


def verified(spec: FilterReleaseSpec, generation: int = 1) -> VerifiedModule:
    """What pre-flight reports for a module: pinned to a digest derived from its URL."""
    digest = hashlib.sha256(spec.module.url.encode()).hexdigest()
    repo = spec.module.url.rsplit(":", 1)[0]
    return VerifiedModule(
        source_url=spec.module.url,
        url=f"{repo}@sha256:{digest}",
        sha256=digest,
        layout="oci-wasm",
        abi="proxy_abi_version_0_2_1",
        generation=generation,
    )


_DEFAULT: Any = object()


def observe(
    spec: FilterReleaseSpec | SpecError,
    *,
    status: FilterReleaseStatus | None = None,
    live: dict[str, Any] | None = None,
    now: datetime = T0,
    generation: int = 1,
    module: VerifiedModule | ModuleFailure | None = _DEFAULT,
) -> Observation:
    if module is _DEFAULT:
        module = verified(spec, generation) if isinstance(spec, FilterReleaseSpec) else None
    return Observation(
        release=REF.model_copy(update={"generation": generation}),
        spec=spec,
        status=status or FilterReleaseStatus(),
        live_plugins={REF.name: live} if live else {},
        module=module,
        now=now,
    )


def apply(decision: Decision, live: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the API server holds after the shell executed the decision's actions."""
    for action in decision.actions:
        if isinstance(action, ApplyWasmPlugin):
            live = copy.deepcopy(action.manifest)
            live["metadata"]["resourceVersion"] = "1"
    return live


def cond(status: FilterReleaseStatus, type_: ConditionType) -> tuple[str, str]:
    c = status.condition(type_)
    assert c is not None
    return c.status, c.reason


def test_an_unlisted_move_is_refused() -> None:
    # A release that is not rolling back cannot have rolled back, nor promote what it never ran.
    with pytest.raises(IllegalTransitionError):
        transition(RolloutState.STEADY, Trigger.PROMOTED, RolloutState.STEADY)
    with pytest.raises(IllegalTransitionError):
        transition(RolloutState.PROMOTING, Trigger.ROLLED_BACK, RolloutState.ROLLED_BACK)
    # An event leads only to the states the table names for it.
    with pytest.raises(IllegalTransitionError):
        transition(RolloutState.STEPPING, Trigger.ROLLING_OUT, RolloutState.PROMOTING)
    assert (RolloutState.STEADY, Trigger.WRITE) in TRANSITIONS


def test_new_release_creates_its_wasmplugin(security_headers: dict[str, Any]) -> None:
    spec = spec_of(security_headers["spec"])
    d = decide(observe(spec))
    assert d.trigger is Trigger.WRITE
    assert d.phase is Phase.HEALTHY
    apply_ = [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]
    assert [a.manifest for a in apply_] == [render_wasmplugin(REF, spec, verified(spec))]
    pinned = apply_[0].manifest["spec"]
    assert pinned["url"] == verified(spec).url
    assert "@sha256:" in pinned["url"]
    assert pinned["sha256"] == verified(spec).sha256
    assert apply_[0].created
    events = [a for a in d.actions if isinstance(a, EmitEvent)]
    assert [(e.type, e.reason) for e in events] == [("Normal", "Created")]
    assert d.status.applied is not None
    assert d.status.stable == d.status.applied
    assert d.status.applied.version == "v1.1.0"
    assert d.status.observed_generation == 1
    assert cond(d.status, ConditionType.READY) == ("True", "Released")
    assert cond(d.status, ConditionType.DEGRADED) == ("False", "Released")
    assert cond(d.status, ConditionType.MODULE_VERIFIED) == ("True", "Verified")
    assert d.status.module == verified(spec)
    assert d.status.applied.source_url == spec.module.url


def test_resync_of_an_applied_release_does_nothing(security_headers: dict[str, Any]) -> None:
    spec = spec_of(security_headers["spec"])
    first = decide(observe(spec))
    later = decide(
        observe(spec, status=first.status, live=apply(first, None), now=T0 + timedelta(hours=1))
    )
    assert later.trigger is Trigger.IN_SYNC
    assert later.actions == ()
    assert later.status == first.status  # nothing to write, not even a timestamp


def test_update_writes_in_place_and_moves_stable(security_headers: dict[str, Any]) -> None:
    v1 = spec_of(security_headers["spec"])
    first = decide(observe(v1))
    raw = copy.deepcopy(security_headers["spec"])
    raw["module"]["url"] = "oci://registry.local/filters/security-headers:v1.2.0"
    v2 = spec_of(raw)
    d = decide(observe(v2, status=first.status, live=apply(first, None), generation=2))
    [write] = [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]
    assert not write.created
    assert write.manifest["metadata"]["name"] == "security-headers"  # same object, updated
    assert d.status.applied is not None
    assert (d.status.applied.version, d.status.applied.generation) == ("v1.2.0", 2)
    ready = d.status.condition(ConditionType.READY)
    assert ready is not None
    assert ready.last_transition_time == "2026-11-24T12:00:00Z"


def test_invalid_spec_touches_nothing_and_keeps_last_good(
    security_headers: dict[str, Any],
) -> None:
    v1 = spec_of(security_headers["spec"])
    first = decide(observe(v1))
    live = apply(first, None)
    error = SpecError(problems=("spec.module.url: must start with oci://",))
    later = T0 + timedelta(minutes=5)
    d = decide(observe(error, status=first.status, live=live, now=later, generation=2))
    assert d.phase is Phase.DEGRADED
    assert [a for a in d.actions if isinstance(a, ApplyWasmPlugin)] == []
    assert d.status.stable == first.status.stable  # last known good is still there
    assert d.status.applied == first.status.applied
    assert cond(d.status, ConditionType.READY) == ("False", "InvalidSpec")
    assert cond(d.status, ConditionType.DEGRADED) == ("True", "InvalidSpec")
    assert d.status.message is not None
    assert "keep version v1.1.0" in d.status.message
    ready = d.status.condition(ConditionType.READY)
    assert ready is not None
    assert ready.last_transition_time == "2026-11-24T12:05:00Z"
    [event] = d.actions
    assert isinstance(event, EmitEvent)
    assert (event.type, event.reason) == ("Warning", "InvalidSpec")
    # The same problem on the next resync: no second Event, identical status.
    again = decide(
        observe(error, status=d.status, live=live, now=later + timedelta(minutes=5), generation=2)
    )
    assert again.actions == ()
    assert again.status == d.status


def test_fixing_the_spec_recovers(security_headers: dict[str, Any]) -> None:
    v1 = spec_of(security_headers["spec"])
    first = decide(observe(v1))
    live = apply(first, None)
    bad = decide(observe(SpecError(problems=("x",)), status=first.status, live=live))
    d = decide(observe(v1, status=bad.status, live=live, now=T0 + timedelta(minutes=1)))
    assert d.phase is Phase.HEALTHY
    assert d.actions == ()  # the WasmPlugin never changed
    assert cond(d.status, ConditionType.READY) == ("True", "Released")


def test_foreign_wasmplugin_of_the_same_name_is_never_taken_over(
    security_headers: dict[str, Any],
) -> None:
    spec = spec_of(security_headers["spec"])
    foreign = render_wasmplugin(REF, spec)
    foreign["metadata"]["ownerReferences"] = []
    d = decide(observe(spec, live=foreign))
    assert d.phase is Phase.DEGRADED
    assert d.trigger is Trigger.CONFLICT
    assert not [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]


def test_drifted_wasmplugin_is_put_back(security_headers: dict[str, Any]) -> None:
    spec = spec_of(security_headers["spec"])
    first = decide(observe(spec))
    live = apply(first, None)
    assert live is not None
    live["spec"]["priority"] = 99  # edited by hand
    d = decide(observe(spec, status=first.status, live=live))
    [write] = [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]
    assert write.manifest["spec"]["priority"] == 10


def test_refused_write_is_degraded_and_keeps_last_good(security_headers: dict[str, Any]) -> None:
    v1 = spec_of(security_headers["spec"])
    first = decide(observe(v1))
    raw = copy.deepcopy(security_headers["spec"])
    raw["priority"] = 11
    obs = observe(spec_of(raw), status=first.status, live=apply(first, None), generation=2)
    d = write_failed(obs, decide(obs), "admission webhook denied it")
    assert d.phase is Phase.DEGRADED
    assert d.status.stable == first.status.stable
    assert d.status.applied == first.status.applied
    assert cond(d.status, ConditionType.DEGRADED) == ("True", "WriteFailed")


# Property: whatever the spec, one decision plus its execution reaches a fixed point: the next
# decision writes nothing and leaves the status as it is.
labels = st.dictionaries(
    st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    min_size=1,
    max_size=3,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
specs = st.fixed_dictionaries(
    {
        "selector": st.builds(lambda m: {"matchLabels": m}, labels),
        "module": st.builds(
            lambda tag: {"url": f"oci://registry.local/filters/f:{tag}"},
            st.from_regex(r"v[0-9]\.[0-9]", fullmatch=True),
        ),
        "phase": st.sampled_from(["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]),
        "priority": st.integers(-(2**31), 2**31 - 1),
        "failStrategy": st.sampled_from(["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"]),
        "pluginConfig": st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    }
)


@settings(max_examples=200, deadline=None)
@given(before=specs, after=specs)
def test_decisions_reach_a_fixed_point(before: dict[str, Any], after: dict[str, Any]) -> None:
    first = decide(observe(spec_of(before)))
    live = apply(first, None)
    second = decide(observe(spec_of(after), status=first.status, live=live, generation=2))
    live = apply(second, live)
    third = decide(
        observe(
            spec_of(after), status=second.status, live=live, generation=2, now=T0 + timedelta(1)
        )
    )
    assert third.actions == ()
    assert third.status == second.status
    # The last known good version is always the one the WasmPlugin carries.
    assert third.status.stable == third.status.applied
    assert live is not None
    assert third.status.applied is not None
    assert live["spec"]["url"] == third.status.applied.url


class TestTransientWriteFailure:
    def setup(self, security_headers: dict[str, Any]) -> tuple[Observation, Decision]:
        v1 = spec_of(security_headers["spec"])
        first = decide(observe(v1))
        raw = copy.deepcopy(security_headers["spec"])
        raw["priority"] = 11
        raw["progressDeadlineSeconds"] = 60
        obs = observe(spec_of(raw), status=first.status, live=apply(first, None), generation=2)
        return obs, decide(obs)

    def test_is_progressing_and_keeps_last_good(self, security_headers: dict[str, Any]) -> None:
        obs, decision = self.setup(security_headers)
        d = write_retrying(obs, decision, "webhook down")
        assert d.phase is Phase.PROGRESSING
        assert cond(d.status, ConditionType.PROGRESSING) == ("True", "WriteRetrying")
        assert cond(d.status, ConditionType.READY) == ("False", "WriteRetrying")
        assert d.status.stable == obs.status.stable
        assert d.status.applied == obs.status.applied
        assert [(a.type, a.reason) for a in d.actions if isinstance(a, EmitEvent)] == [
            ("Warning", "WriteRetrying")
        ]

    def test_deadline_counts_from_when_progressing_began(
        self, security_headers: dict[str, Any]
    ) -> None:
        obs, decision = self.setup(security_headers)
        first = write_retrying(obs, decision, "webhook down")
        for seconds, expected in (
            (30, Phase.PROGRESSING),
            (60, Phase.PROGRESSING),
            (61, Phase.DEGRADED),
        ):
            later = obs.model_copy(
                update={"status": first.status, "now": obs.now + timedelta(seconds=seconds)}
            )
            d = write_retrying(later, decide(later), "webhook down")
            assert d.phase is expected, seconds
        assert cond(d.status, ConditionType.DEGRADED) == ("True", "ProgressDeadlineExceeded")
        assert d.status.stable == obs.status.stable
        # Still failing afterwards: it stays Degraded (no flapping back to Progressing), quietly.
        after = obs.model_copy(update={"status": d.status, "now": obs.now + timedelta(minutes=5)})
        again = write_retrying(after, decide(after), "webhook down")
        assert again.phase is Phase.DEGRADED
        assert again.actions == ()
        assert again.status == d.status
        # A new generation starts a new deadline.
        newer = after.model_copy(
            update={"release": after.release.model_copy(update={"generation": 3})}
        )
        assert write_retrying(newer, decide(newer), "webhook down").phase is Phase.PROGRESSING

    def test_the_same_failure_again_posts_no_second_event(
        self, security_headers: dict[str, Any]
    ) -> None:
        obs, decision = self.setup(security_headers)
        first = write_retrying(obs, decision, "webhook down")
        again_obs = obs.model_copy(update={"status": first.status})
        again = write_retrying(again_obs, decide(again_obs), "webhook down")
        assert again.actions == ()
        assert again.status == first.status


class TestModulePreflight:
    def released(self, security_headers: dict[str, Any]) -> tuple[Decision, dict[str, Any] | None]:
        first = decide(observe(spec_of(security_headers["spec"])))
        return first, apply(first, None)

    def v2(self, security_headers: dict[str, Any]) -> FilterReleaseSpec:
        raw = copy.deepcopy(security_headers["spec"])
        raw["module"]["url"] = "oci://registry.local/filters/security-headers:v2.0.0"
        return spec_of(raw)

    @pytest.mark.parametrize(
        "reason",
        [r for r in Reason if r is not Reason.REGISTRY_UNAVAILABLE],
    )
    def test_a_rejected_module_is_never_rendered(
        self, security_headers: dict[str, Any], reason: Reason
    ) -> None:
        first, live = self.released(security_headers)
        failure = ModuleFailure(reason=reason, message="what to fix")
        d = decide(
            observe(
                self.v2(security_headers),
                status=first.status,
                live=live,
                generation=2,
                module=failure,
            )
        )
        assert d.phase is Phase.DEGRADED
        assert not [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]
        assert cond(d.status, ConditionType.MODULE_VERIFIED) == ("False", reason.value)
        assert cond(d.status, ConditionType.DEGRADED) == ("True", "ModuleRejected")
        assert d.status.stable == first.status.stable
        assert d.status.module == first.status.module
        assert d.status.message is not None
        assert "what to fix" in d.status.message
        assert "keep version v1.1.0" in d.status.message

    def test_an_unreachable_registry_holds_without_a_verdict(
        self, security_headers: dict[str, Any]
    ) -> None:
        first, live = self.released(security_headers)
        failure = ModuleFailure(reason=Reason.REGISTRY_UNAVAILABLE, message="connection refused")
        d = decide(
            observe(
                self.v2(security_headers),
                status=first.status,
                live=live,
                generation=2,
                module=failure,
            )
        )
        assert d.phase is Phase.PROGRESSING
        assert not [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]
        assert cond(d.status, ConditionType.MODULE_VERIFIED) == ("Unknown", "RegistryUnavailable")
        assert cond(d.status, ConditionType.DEGRADED) == ("False", "RegistryUnavailable")


class TestResolutionReuse:
    def module(self, **changes: Any) -> Module:
        return Module.model_validate({"url": "oci://r.local/f/sec:v1", **changes})

    def previous(self, **changes: Any) -> VerifiedModule:
        base = {
            "source_url": "oci://r.local/f/sec:v1",
            "url": "oci://r.local/f/sec@sha256:" + "a" * 64,
            "sha256": "a" * 64,
            "layout": "oci-wasm",
            "abi": "proxy_abi_version_0_2_1",
            "generation": 1,
        }
        return VerifiedModule.model_validate({**base, **changes})

    def test_same_source_stays_pinned_even_at_a_new_generation(self) -> None:
        assert reusable_resolution(self.module(), 5, self.previous()) == self.previous()

    @pytest.mark.parametrize(
        ("module_changes", "generation"),
        [
            ({"url": "oci://r.local/f/sec:v2"}, 1),
            ({"sha256": "b" * 64}, 1),
            ({"imagePullSecret": "creds"}, 1),
            ({"imagePullPolicy": "Always"}, 2),
        ],
        ids=["new-url", "other-sha256", "other-secret", "always-new-generation"],
    )
    def test_resolves_again_when(self, module_changes: dict[str, Any], generation: int) -> None:
        assert (
            reusable_resolution(self.module(**module_changes), generation, self.previous()) is None
        )

    def test_always_does_not_resolve_again_on_a_resync(self) -> None:
        module = self.module(imagePullPolicy="Always")
        assert reusable_resolution(module, 1, self.previous()) == self.previous()


@pytest.mark.parametrize(
    ("module", "retry"),
    [
        (ModuleFailure(reason=Reason.REGISTRY_UNAVAILABLE, message="refused"), True),
        (ModuleFailure(reason=Reason.NOT_FOUND, message="no tag"), False),
        (_DEFAULT, False),
    ],
    ids=["registry-down", "rejected", "verified"],
)
def test_only_transient_holds_ask_for_a_quick_retry(
    security_headers: dict[str, Any], module: Any, retry: bool
) -> None:
    assert decide(observe(spec_of(security_headers["spec"]), module=module)).retry is retry


@pytest.mark.parametrize(
    ("phase", "reason", "paused", "state"),
    [
        (None, None, None, RolloutState.PENDING),
        ("Healthy", "Released", None, RolloutState.STEADY),
        ("Healthy", "Promoted", None, RolloutState.STEADY),
        ("Paused", "Paused", "Inconclusive", RolloutState.PAUSED_INCONCLUSIVE),
        ("Paused", "Paused", "PauseStep", RolloutState.PAUSED_STEP),
        ("Progressing", "Promoting", None, RolloutState.PROMOTING),
        ("Progressing", "WriteRetrying", None, RolloutState.RETRYING),
        ("Degraded", "RollingBack", None, RolloutState.ROLLING_BACK),
        ("Degraded", "RolledBack", None, RolloutState.ROLLED_BACK),
        ("Degraded", "InvalidSpec", None, RolloutState.DEGRADED),
        # A reason this operator version does not know: read by the phase.
        ("Degraded", "SomethingNewer", None, RolloutState.DEGRADED),
    ],
)
def test_a_stored_status_reads_as_the_state_it_is_in(
    phase: str | None, reason: str | None, paused: str | None, state: RolloutState
) -> None:
    """No state is stored: a status written by any operator version reads as its state."""
    conditions = (
        (
            Condition(
                type="Ready",
                status="False",
                reason=reason,
                last_transition_time="2026-11-24T12:00:00Z",
            ),
        )
        if reason
        else ()
    )
    rollout = RolloutStatus(
        revision="r", started_at="2026-11-24T12:00:00Z", step_started_at="2026-11-24T12:00:00Z"
    ).model_copy(update={"paused": paused})
    status = FilterReleaseStatus(phase=phase, conditions=conditions, rollout=rollout)
    assert state_of(status, None) is state
    if phase is not None:
        assert PHASE[state] == phase


def test_needs_and_decide_work_from_one_derived_context(security_headers: dict[str, Any]) -> None:
    spec = spec_of(security_headers["spec"])
    obs = observe(spec)
    ctx = derive(obs)
    assert ctx is not None
    assert ctx.rollout is None  # the first release: one version everywhere
    assert not ctx.converged
    assert decide(obs, ctx) == decide(obs)
    assert derive(observe(SpecError(problems=("bad",)))) is None
