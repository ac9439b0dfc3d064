"""A decision, and how it reads in the status: conditions that move only on a flip, the
tracks, the history, the phase that the state in core/rollout_state.py leads to. Pure."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from filterrelease.core.actions import (
    Action,
    ApplyWasmPlugin,
    DeleteWasmPlugin,
    EmitEvent,
    LabelPod,
    MarkSplit,
)
from filterrelease.core.layout import Layout, Step, StepKind, Target, apply, plan
from filterrelease.core.observation import Observation
from filterrelease.core.render import canary_plugin_name, render_plugin
from filterrelease.core.rollout_state import (
    PHASE,
    Phase,
    RolloutState,
    Trigger,
    state_of,
    superseded,
    target_state,
    transition,
)
from filterrelease.core.spec import FilterReleaseSpec
from filterrelease.core.status import (
    ConditionStatus,
    ConditionType,
    FilterReleaseStatus,
    HistoryEntry,
    ModuleVersion,
    RolloutStatus,
    set_condition,
)
from filterrelease.core.timestamps import timestamp
from filterrelease.core.tracks import CANARY, STABLE, track_label

HISTORY_LIMIT = 10


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)
    state: RolloutState
    trigger: Trigger
    status: FilterReleaseStatus
    actions: tuple[Action, ...] = ()
    # Reconcile again after this many seconds (a canary step, a pause, a measurement is due).
    requeue_after: float | None = None

    @property
    def phase(self) -> Phase:
        return PHASE[self.state]

    @property
    def retry(self) -> bool:
        """Whether the shell should reconcile again soon (with backoff) rather than wait for
        the next watch event or resync: something transient is holding the release."""
        return self.state is RolloutState.RETRYING


def state_after(obs: Observation, trigger: Trigger, rollout: RolloutStatus | None) -> RolloutState:
    """The state this decision leads to, checked against the table."""
    canary = obs.spec.canary if isinstance(obs.spec, FilterReleaseSpec) else None
    current = state_of(obs.status, canary)
    previous = obs.status.rollout
    if rollout is not None and (previous is None or previous.revision != rollout.revision):
        # A new version starts a new rollout from the stable one: whatever the last rollout
        # was doing is over (core/layout.py unwinds its pods).
        current = superseded(current)
    return transition(current, trigger, target_state(trigger, rollout, canary))


def with_conditions(
    obs: Observation, *, ready: bool, progressing: bool, degraded: bool, reason: str, message: str
) -> FilterReleaseStatus:
    gen = obs.release.generation
    conds = obs.status.conditions
    for type_, flag in (
        (ConditionType.READY, ready),
        (ConditionType.PROGRESSING, progressing),
        (ConditionType.DEGRADED, degraded),
    ):
        conds = set_condition(
            conds, type_, "True" if flag else "False", reason, message, now=obs.now, generation=gen
        )
    return obs.status.model_copy(update={"conditions": conds, "observed_generation": gen})


def keeps_running(status: FilterReleaseStatus) -> str:
    if status.applied:
        return f"the proxies keep version {status.applied.version}"
    return "nothing was released yet"


def with_condition(
    status: FilterReleaseStatus,
    obs: Observation,
    type_: ConditionType,
    flag: ConditionStatus,
    *,
    reason: str,
    message: str,
) -> FilterReleaseStatus:
    """One condition set as of this observation (its time and the release's generation)."""
    conds = set_condition(
        status.conditions,
        type_,
        flag,
        reason,
        message,
        now=obs.now,
        generation=obs.release.generation,
    )
    return status.model_copy(update={"conditions": conds})


def with_module_condition(
    status: FilterReleaseStatus, obs: Observation, flag: ConditionStatus, reason: str, message: str
) -> FilterReleaseStatus:
    return with_condition(
        status, obs, ConditionType.MODULE_VERIFIED, flag, reason=reason, message=message
    )


def shown(version: ModuleVersion) -> str:
    """A version as people read it: the module's tag or digest, and which configuration (two
    versions of one module differ only there)."""
    return f"{version.version} (config {version.config_hash[:8]})"


def _stream(step: Step) -> str | None:
    """Which watch a proxy's control plane learns of a step through: pod labels and WasmPlugins
    come through separate watches (istiod's informers, here the mesh agent's), which keep the
    order of changes within one kind only."""
    if step.kind is StepKind.LABEL:
        return "pods"
    if step.kind is StepKind.MARK_SPLIT:
        return None  # the operator's own admission webhook and status: no proxy sees it
    return "plugins"


def to_actions(
    obs: Observation, layout: Layout, target: Target, versions: dict[str, ModuleVersion]
) -> tuple[list[Action], Layout]:
    """The layout planner's next steps as actions on the cluster, and the layout they lead to.

    Only steps of one kind go out together: the planner's order (each step safe on its own) is
    kept by whoever watches one kind of object, not across kinds, so a label change and a
    plugin change made together could be seen the other way round (a pod unlabelled before its
    plugin widens runs without the filter). The rest waits for a later decision, which goes on
    once the proxies run the layout so far (core/confirmation.py layout_held)."""
    actions: list[Action] = []
    key = track_label(obs.release.name)
    batch: str | None = None
    for step in plan(layout, target):
        stream = _stream(step)
        if stream is not None:
            if batch is not None and stream != batch:
                break
            batch = stream
        match step.kind:
            case StepKind.MARK_SPLIT:
                actions.append(MarkSplit(split=step.split))
            case StepKind.APPLY_STABLE | StepKind.APPLY_CANARY:
                role = STABLE if step.kind == StepKind.APPLY_STABLE else CANARY
                current = layout.stable if role == STABLE else layout.canary
                manifest = render_plugin(
                    obs.release, versions[step.content or ""], role, narrowed=step.narrowed
                )
                actions.append(ApplyWasmPlugin(manifest=manifest, created=current is None))
            case StepKind.DELETE_CANARY:
                live = obs.live_plugins.get(canary_plugin_name(obs.release), {})
                uid = live.get("metadata", {}).get("uid")
                actions.append(DeleteWasmPlugin(name=canary_plugin_name(obs.release), uid=uid))
            case StepKind.LABEL:
                actions.append(LabelPod(pod=step.pod or "", key=key, value=step.value))
        layout = apply(layout, step)
    return actions, layout


def with_tracks(status: FilterReleaseStatus, layout: Layout) -> FilterReleaseStatus:
    canary = tuple(sorted(p for p, v in layout.pods.items() if v == CANARY))
    stable = tuple(sorted(p for p, v in layout.pods.items() if v != CANARY))
    weight = round(100 * len(canary) / len(layout.pods)) if layout.pods and canary else None
    return status.model_copy(
        update={
            "canary_pods": canary if layout.canary else None,
            "stable_pods": stable if layout.pods else None,
            "canary_weight": weight if layout.canary else None,
            "split": layout.split or None,
        }
    )


def history_limit(obs: Observation) -> int:
    """How many good versions the history keeps whole (spec.revisionHistoryLimit)."""
    return obs.spec.revision_history_limit if isinstance(obs.spec, FilterReleaseSpec) else 5


# Outcomes of a version that ran well on the proxies: what an undo may go back to.
GOOD_OUTCOMES = frozenset({"Released", "Promoted", "Undone"})


def remember(
    history: tuple[HistoryEntry, ...],
    version: ModuleVersion,
    outcome: str,
    now: datetime,
    reason: str | None = None,
    *,
    keep: int,
) -> tuple[HistoryEntry, ...]:
    """history with a new newest entry, numbered after the last one. The newest `keep` good
    versions keep their WasmPlugin content (for undo); the rest are trimmed to their names."""
    top = history[0] if history else None
    if top and top.config_hash == version.config_hash and top.outcome == outcome:
        return history
    entry = HistoryEntry(
        revision=max((h.revision or 0 for h in history), default=0) + 1,
        version=version.version,
        config_hash=version.config_hash,
        outcome=outcome,
        at=timestamp(now),
        reason=reason,
        content=version.content if outcome in GOOD_OUTCOMES else None,
    )
    kept: list[HistoryEntry] = []
    whole = 0
    for i, old in enumerate((entry, *history)):
        item = old
        if item.content is not None:
            whole += 1
            if whole > keep:
                item = item.model_copy(update={"content": None})
        # Entries that still carry content outlive the length limit: undo needs them.
        if i < HISTORY_LIMIT or item.content is not None:
            kept.append(item)
    return tuple(kept)


def event_actions(
    raw: tuple[tuple[str, str, str], ...] | list[tuple[str, str, str]],
) -> list[Action]:
    return [
        EmitEvent(type="Warning" if t == "Warning" else "Normal", reason=r, message=m)
        for t, r, m in raw
    ]


def with_metrics_condition(
    status: FilterReleaseStatus, obs: Observation, unavailable: str | None
) -> FilterReleaseStatus:
    old = status.condition(ConditionType.METRICS_UNAVAILABLE)
    if unavailable is None and old is None:
        return status  # never set for releases without analysis: keep their status short
    return with_condition(
        status,
        obs,
        ConditionType.METRICS_UNAVAILABLE,
        "True" if unavailable else "False",
        reason="MeasurementError" if unavailable else "Measuring",
        message=unavailable or "",
    )
