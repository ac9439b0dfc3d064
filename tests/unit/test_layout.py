"""The safety property of core/layout.py: every selected pod under exactly one of the release's
WasmPlugins at every moment, whatever happens between two changes (pods created and deleted,
the operator killed and planning again from what it observes)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from filterrelease.core.layout import (
    Layout,
    PluginState,
    Step,
    StepKind,
    Target,
    apply,
    plan,
    unsafe_pods,
    version_of,
)
from filterrelease.core.tracks import CANARY, STABLE

V1, V2, V3 = "v1", "v2", "v3"


def steady(*pods: str, content: str = V1) -> Layout:
    return Layout(stable=PluginState(content=content), pods=dict.fromkeys(pods))


def run(layout: Layout, target: Target) -> tuple[Layout, list[Step]]:
    """Plan and apply until converged, checking the property after every single change."""
    done: list[Step] = []
    for _ in range(10):
        steps = plan(layout, target)
        if not steps:
            return layout, done
        for step in steps:
            layout = apply(layout, step)
            assert unsafe_pods(layout) == [], (step, layout)
            done.append(step)
    raise AssertionError(f"no convergence: {layout}")


def test_starting_a_rollout_marks_split_first_and_narrows_only_after_observing_it() -> None:
    first = plan(steady("a", "b", "c"), Target(stable=V1, canary=V2, canary_pods=1))
    assert [s.kind for s in first] == [StepKind.LABEL] * 3 + [StepKind.MARK_SPLIT]
    assert all(s.value == STABLE for s in first[:3])
    layout = steady("a", "b", "c")
    for step in first:
        layout = apply(layout, step)
    second = plan(layout, Target(stable=V1, canary=V2, canary_pods=1))
    assert [(s.kind, s.pod, s.value) for s in second] == [
        (StepKind.APPLY_CANARY, None, None),
        (StepKind.APPLY_STABLE, None, None),
        (StepKind.LABEL, "a", CANARY),
    ]
    assert second[1].narrowed


def test_a_full_rollout_then_promotion_ends_wide_unlabelled_and_on_the_new_version() -> None:
    layout, _ = run(steady("a", "b", "c", "d"), Target(stable=V1, canary=V2, canary_pods=2))
    assert [version_of(layout, p) for p in "abcd"] == [V2, V2, V1, V1]
    layout, steps = run(layout, Target(stable=V2))
    assert layout == steady("a", "b", "c", "d", content=V2)
    # Promotion updates the stable plugin before any pod leaves the canary plugin.
    kinds = [s.kind for s in steps]
    assert kinds.index(StepKind.APPLY_STABLE) < kinds.index(StepKind.LABEL)
    assert kinds.index(StepKind.DELETE_CANARY) < kinds.index(StepKind.MARK_SPLIT)


def test_rollback_puts_every_pod_back_on_the_stable_content() -> None:
    layout, _ = run(steady("a", "b", "c"), Target(stable=V1, canary=V2, canary_pods=3))
    assert {version_of(layout, p) for p in "abc"} == {V2}
    layout, _ = run(layout, Target(stable=V1))
    assert layout == steady("a", "b", "c")


def test_a_pod_left_unlabelled_under_a_narrowed_plugin_is_repaired_first() -> None:
    layout, _ = run(steady("a", "b"), Target(stable=V1, canary=V2, canary_pods=1))
    broken = layout.model_copy(update={"pods": {**layout.pods, "new": None}})
    assert unsafe_pods(broken) == ["new"]
    steps = plan(broken, Target(stable=V1, canary=V2, canary_pods=1))
    assert steps[0] == Step(kind=StepKind.LABEL, pod="new", value=STABLE)


def test_weight_is_a_share_of_the_pods_and_the_same_pods_stay_canary() -> None:
    layout, _ = run(steady(*"abcdef"), Target(stable=V1, canary=V2, canary_pods=2))
    first = {p for p, v in layout.pods.items() if v == CANARY}
    layout, _ = run(layout, Target(stable=V1, canary=V2, canary_pods=4))
    assert first < {p for p, v in layout.pods.items() if v == CANARY}


# --- the property, with everything that can happen between two changes -------------------------

POD_NAMES = [f"p{i}" for i in range(8)]
CONTENTS = st.sampled_from([V1, V2, V3])


@st.composite
def safe_layouts(draw: st.DrawFn) -> Layout:
    pods = draw(st.lists(st.sampled_from(POD_NAMES), unique=True, max_size=6))
    if draw(st.booleans()):  # steady: one wide plugin; any leftover labels are harmless
        labels = st.sampled_from([None, STABLE, "stale"])
        return Layout(
            stable=PluginState(content=draw(CONTENTS)),
            pods={p: draw(labels) for p in pods},
            split=False,
        )
    return Layout(  # split: narrowed stable + canary, every pod on one track
        stable=PluginState(content=draw(CONTENTS), narrowed=True),
        canary=PluginState(content=draw(CONTENTS)),
        pods={p: draw(st.sampled_from([STABLE, CANARY])) for p in pods},
        split=True,
    )


@st.composite
def targets(draw: st.DrawFn) -> Target:
    canary = draw(st.one_of(st.none(), CONTENTS))
    order = draw(st.one_of(st.none(), st.permutations(POD_NAMES).map(tuple)))
    return Target(
        stable=draw(CONTENTS),
        canary=canary,
        canary_pods=draw(st.integers(0, 8)) if canary else 0,
        canary_order=order if canary else None,
    )


# What may happen between two changes: a pod created (the admission webhook labels it stable
# while the release is split), a pod deleted, or the operator killed (the rest of its plan lost).
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(POD_NAMES)),
        st.tuples(st.just("delete"), st.sampled_from(POD_NAMES)),
        st.tuples(st.just("crash"), st.just("")),
        st.tuples(st.just("none"), st.just("")),
    ),
    max_size=40,
)


def happen(layout: Layout, event: tuple[str, str]) -> Layout:
    kind, pod = event
    pods = dict(layout.pods)
    if kind == "create" and pod not in pods:
        pods[pod] = STABLE if layout.split else None
    elif kind == "delete":
        pods.pop(pod, None)
    return layout.model_copy(update={"pods": pods})


@settings(max_examples=400, deadline=None)
@given(safe_layouts(), targets(), EVENTS)
def test_no_pod_is_ever_under_none_or_two_plugins(
    layout: Layout, target: Target, events: list[tuple[str, str]]
) -> None:
    assert unsafe_pods(layout) == []
    queue = list(events)
    for _ in range(60):
        steps = plan(layout, target)
        if not steps and not queue:
            break
        for step in steps:
            layout = apply(layout, step)
            assert unsafe_pods(layout) == [], (step, layout)
            event = queue.pop(0) if queue else ("none", "")
            layout = happen(layout, event)
            assert unsafe_pods(layout) == [], (event, layout)
            if event[0] == "crash":
                break
        if not steps and queue:
            layout = happen(layout, queue.pop(0))
            assert unsafe_pods(layout) == []
    # Once nothing more happens, the plan converges on the target.
    assert plan(layout, target) == []
    assert layout.stable is not None
    assert layout.stable.content == target.stable
    on_canary = [p for p, v in layout.pods.items() if v == CANARY]
    if target.canary is None:
        assert layout.canary is None
        assert not layout.stable.narrowed
        assert not layout.split
        assert all(v is None for v in layout.pods.values())
    else:
        assert layout.canary is not None
        assert layout.canary.content == target.canary
        if target.canary_order is None:
            assert len(on_canary) == min(target.canary_pods, len(layout.pods))
        else:
            order = [p for p in target.canary_order if p in layout.pods]
            assert sorted(on_canary) == sorted(order[: target.canary_pods])
