"""Which WasmPlugin selects which pod, and the safe order of changes that gets there. Pure.

The safety property of the whole operator lives here: at every moment every selected pod is
selected by exactly one of the release's WasmPlugins, never none and never two. Istio's
selector is equality-only, so a workload is split between two versions by the values of the
release's track label (core/tracks.py):

    steady:  stable plugin selects {workload selector}                      (wide)
    split:   stable plugin selects {workload selector, track: stable}       (narrowed)
             canary plugin selects {workload selector, track: canary}

plan() looks at what is live (the Layout) and where the rollout wants to be (the Target) and
returns the next changes in an order in which each one, applied alone, keeps the property: the
operator may die between any two of them, and the next reconcile plans again from what it
observes. Some changes need an earlier one to be *observed* first (narrowing waits for a tick
that saw `split` already on, so that the pod admission webhook was labelling new pods before the
pod list the plan relies on was taken): plan() then stops and the shell reconciles again.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from filterrelease.core.tracks import CANARY, STABLE


class PluginState(BaseModel):
    """A live WasmPlugin of the release, as far as selection goes."""

    model_config = ConfigDict(frozen=True)
    content: str  # the config hash of its content (everything but the track narrowing)
    narrowed: bool = False  # the selector also requires the track label


class Layout(BaseModel):
    """What is live: the release's two plugins, its selected pods and their track labels."""

    model_config = ConfigDict(frozen=True)
    stable: PluginState | None = None
    canary: PluginState | None = None
    # Every live (not terminating) pod the workload selector matches → its track label value.
    pods: dict[str, str | None] = {}
    # Whether the release is marked split, which turns on track labels for new pods at admission.
    split: bool = False


class Target(BaseModel):
    """Where the rollout wants the layout to be."""

    model_config = ConfigDict(frozen=True)
    stable: str  # content hash for the stable plugin
    canary: str | None = None  # content hash for the canary plugin; None: steady, no split
    canary_pods: int = 0  # how many pods should be on the canary track
    # Waves: the pods that may be on the canary, in the order they join it (the pods of the
    # waves already done first). The canary is then exactly the first `canary_pods` of them
    # that exist. None: any pod, and the pods already on the canary stay there.
    canary_order: tuple[str, ...] | None = None


class StepKind(StrEnum):
    MARK_SPLIT = "MarkSplit"  # status.split on/off (and the admission webhook with it)
    APPLY_STABLE = "ApplyStable"  # create/update the stable plugin (content, narrowed)
    APPLY_CANARY = "ApplyCanary"  # create/update the canary plugin
    DELETE_CANARY = "DeleteCanary"
    LABEL = "Label"  # set (or with value None remove) one pod's track label


class Step(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: StepKind
    content: str | None = None  # ApplyStable/ApplyCanary
    narrowed: bool = False  # ApplyStable
    split: bool = False  # MarkSplit
    pod: str | None = None  # Label
    value: str | None = None  # Label


def covering(layout: Layout, pod: str) -> list[str]:
    """The release's plugins that select one pod, as istiod would compute it."""
    track = layout.pods[pod]
    found = []
    if layout.stable is not None and (not layout.stable.narrowed or track == STABLE):
        found.append("stable")
    if layout.canary is not None and track == CANARY:
        found.append("canary")
    return found


def unsafe_pods(layout: Layout) -> list[str]:
    """Pods selected by none or by two of the release's plugins. Before the first release
    (no plugin at all) no pod has the filter, and that is not made worse by anything."""
    if layout.stable is None and layout.canary is None:
        return []
    return sorted(p for p in layout.pods if len(covering(layout, p)) != 1)


def version_of(layout: Layout, pod: str) -> str | None:
    """The content a pod runs, when exactly one plugin selects it."""
    plugins = covering(layout, pod)
    if len(plugins) != 1:
        return None
    plugin = layout.stable if plugins[0] == "stable" else layout.canary
    return plugin.content if plugin else None


def apply(layout: Layout, step: Step) -> Layout:
    """The layout after one step has taken effect (the model the property tests check)."""
    match step.kind:
        case StepKind.MARK_SPLIT:
            return layout.model_copy(update={"split": step.split})
        case StepKind.APPLY_STABLE:
            plugin = PluginState(content=step.content or "", narrowed=step.narrowed)
            return layout.model_copy(update={"stable": plugin})
        case StepKind.APPLY_CANARY:
            return layout.model_copy(update={"canary": PluginState(content=step.content or "")})
        case StepKind.DELETE_CANARY:
            return layout.model_copy(update={"canary": None})
        case StepKind.LABEL:
            if step.pod not in layout.pods:  # deleted meanwhile: the patch finds nothing
                return layout
            return layout.model_copy(update={"pods": {**layout.pods, step.pod: step.value}})


def _label(pods: Iterable[str], value: str | None) -> list[Step]:
    return [Step(kind=StepKind.LABEL, pod=p, value=value) for p in pods]


def plan(layout: Layout, target: Target) -> list[Step]:
    """The next changes towards the target, each safe on its own, in order. Empty: converged."""
    steps: list[Step] = []
    now = layout

    def do(more: list[Step]) -> None:
        nonlocal now
        for step in more:
            steps.append(step)
            now = apply(now, step)

    narrowed = now.stable is not None and now.stable.narrowed
    # A pod with no (or a foreign) track value while the stable plugin is narrowed runs without
    # the filter (created while the operator was down, or relabelled by hand): repair first.
    # While the stable plugin is wide, a stray canary label under a live canary plugin puts a
    # pod under two plugins: back to stable.
    stray = [p for p, v in sorted(now.pods.items()) if v not in (STABLE, CANARY)]
    if narrowed or target.canary is not None:
        do(_label(stray, STABLE))
    if not narrowed:
        do(_label([p for p, v in sorted(now.pods.items()) if v == CANARY], STABLE))

    if now.stable is None:
        # The first release: nothing to split from. (A canary needs a stable version.)
        do([Step(kind=StepKind.APPLY_STABLE, content=target.stable, narrowed=False)])
        if target.canary is None:
            return steps
    if now.stable is not None and now.stable.content != target.stable:
        do([Step(kind=StepKind.APPLY_STABLE, content=target.stable, narrowed=now.stable.narrowed)])

    if target.canary is not None:
        return steps + _plan_split(now, target)
    return steps + _plan_steady(now)


def _plan_split(layout: Layout, target: Target) -> list[Step]:
    steps: list[Step] = []
    if not layout.split:
        # Admission must label new pods before the pod list that narrowing relies on is taken:
        # narrow only in a later reconcile, which observes split already on.
        return [Step(kind=StepKind.MARK_SPLIT, split=True)]
    if layout.canary is None or layout.canary.content != target.canary:
        # Safe with canary pods on it too: each of them swaps versions in place, one plugin.
        steps.append(Step(kind=StepKind.APPLY_CANARY, content=target.canary))
    stable = layout.stable
    if stable is not None and not stable.narrowed:
        # Every pod carries a track label (repaired above), so narrowing drops none.
        steps.append(Step(kind=StepKind.APPLY_STABLE, content=stable.content, narrowed=True))
    on_canary = sorted(p for p, v in layout.pods.items() if v == CANARY)
    on_stable = sorted(p for p, v in layout.pods.items() if v != CANARY)
    if target.canary_order is not None:
        order = [p for p in target.canary_order if p in layout.pods]
        chosen = set(order[: target.canary_pods])
        steps += _label([p for p in on_stable if p in chosen], CANARY)
        return steps + _label([p for p in on_canary if p not in chosen], STABLE)
    want = min(target.canary_pods, len(layout.pods))
    if len(on_canary) < want:
        steps += _label(on_stable[: want - len(on_canary)], CANARY)
    elif len(on_canary) > want:
        # The newest additions go back first: the same pods stay canary across steps.
        steps += _label(on_canary[want - len(on_canary) :], STABLE)
    return steps


def _plan_steady(layout: Layout) -> list[Step]:
    steps: list[Step] = []
    on_canary = sorted(p for p, v in layout.pods.items() if v == CANARY)
    # The stable plugin already carries the target content (planned above), so moving a pod
    # back is a swap to that content on the pod, or no change at all after a promotion.
    steps += _label(on_canary, STABLE)
    if layout.canary is not None:
        steps.append(Step(kind=StepKind.DELETE_CANARY))
    stable = layout.stable
    if stable is not None and stable.narrowed:
        # No canary plugin any more: widening cannot put a pod under two plugins.
        steps.append(Step(kind=StepKind.APPLY_STABLE, content=stable.content, narrowed=False))
    if layout.split:
        steps.append(Step(kind=StepKind.MARK_SPLIT, split=False))
    # Track labels mean nothing once the plugin is wide; removing them keeps pods tidy.
    steps += _label(sorted(p for p, v in layout.pods.items() if v is not None), None)
    return steps
