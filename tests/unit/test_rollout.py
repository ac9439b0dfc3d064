"""The release state machine, driven one decision at a time with an injected clock."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterrelease.core.actions import ApplyWasmPlugin, EmitEvent
from filterrelease.core.render import ReleaseRef, render_wasmplugin
from filterrelease.core.rollout import (
    TRANSITIONS,
    Decision,
    IllegalTransitionError,
    Observation,
    Phase,
    Trigger,
    decide,
    transition,
    write_failed,
    write_retrying,
)
from filterrelease.core.spec import FilterReleaseSpec, SpecError, parse_spec
from filterrelease.core.status import ConditionType, FilterReleaseStatus

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REF = ReleaseRef(namespace="shop", name="security-headers", uid="uid-1", generation=1)


def spec_of(raw: dict[str, Any]) -> FilterReleaseSpec:
    spec = parse_spec(raw)
    assert isinstance(spec, FilterReleaseSpec), spec
    return spec


def observe(
    spec: FilterReleaseSpec | SpecError,
    *,
    status: FilterReleaseStatus | None = None,
    live: dict[str, Any] | None = None,
    now: datetime = T0,
    generation: int = 1,
) -> Observation:
    return Observation(
        release=REF.model_copy(update={"generation": generation}),
        spec=spec,
        status=status or FilterReleaseStatus(),
        live_plugins={REF.name: live} if live else {},
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


def test_every_phase_trigger_pair_has_a_transition() -> None:
    assert set(TRANSITIONS) == {(p, t) for p in Phase for t in Trigger}


def test_an_unlisted_move_is_refused() -> None:
    saved = TRANSITIONS.pop((Phase.HEALTHY, Trigger.WRITE))
    try:
        with pytest.raises(IllegalTransitionError):
            transition(Phase.HEALTHY, Trigger.WRITE)
    finally:
        TRANSITIONS[(Phase.HEALTHY, Trigger.WRITE)] = saved


def test_new_release_creates_its_wasmplugin(security_headers: dict[str, Any]) -> None:
    spec = spec_of(security_headers["spec"])
    d = decide(observe(spec))
    assert d.trigger is Trigger.WRITE
    assert d.phase is Phase.HEALTHY
    apply_ = [a for a in d.actions if isinstance(a, ApplyWasmPlugin)]
    assert [a.manifest for a in apply_] == [render_wasmplugin(REF, spec)]
    assert apply_[0].created
    events = [a for a in d.actions if isinstance(a, EmitEvent)]
    assert [(e.type, e.reason) for e in events] == [("Normal", "Created")]
    assert d.status.applied is not None
    assert d.status.stable == d.status.applied
    assert d.status.applied.version == "v1.1.0"
    assert d.status.observed_generation == 1
    assert cond(d.status, ConditionType.READY) == ("True", "Released")
    assert cond(d.status, ConditionType.DEGRADED) == ("False", "Released")


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
