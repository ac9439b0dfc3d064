"""The release state machine: decide(observation) -> decision. Pure; time is an input.

Every state, event and legal move is listed in core/rollout_state.py; decide() obeys that
table (it refuses any move the table does not list). What a canary step does is in
core/canary.py; in which order WasmPlugins and pod labels change is in core/layout.py. decide()
ties them together: it works out the target layout (one version everywhere, or stable and
canary split by weight), asks the layout planner for the next safe changes, and records the
outcome in the status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from filterrelease.core import canary as steps
from filterrelease.core.actions import (
    Action,
    ApplyWasmPlugin,
    ConsumeRequest,
    DeleteWasmPlugin,
    EmitEvent,
    LabelPod,
    MarkSplit,
)
from filterrelease.core.layout import Layout, StepKind, Target, apply, plan
from filterrelease.core.module import ModuleFailure
from filterrelease.core.observation import Context, Observation, derive, split_target
from filterrelease.core.render import (
    ReleaseRef,
    canary_plugin_name,
    render_plugin,
    stable_plugin_name,
)
from filterrelease.core.rollout_state import (
    PHASE,
    Phase,
    Reason,
    Requeue,
    RolloutState,
    Trigger,
    state_of,
    superseded,
    target_state,
    transition,
)
from filterrelease.core.spec import Canary, FilterReleaseSpec, SpecError
from filterrelease.core.status import (
    ConditionStatus,
    ConditionType,
    FilterReleaseStatus,
    HistoryEntry,
    ModuleVersion,
    RolloutStatus,
    set_condition,
)
from filterrelease.core.timestamps import parse_timestamp, seconds_since, timestamp
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


def _state_after(obs: Observation, trigger: Trigger, rollout: RolloutStatus | None) -> RolloutState:
    """The state this decision leads to, checked against the table."""
    canary = obs.spec.canary if isinstance(obs.spec, FilterReleaseSpec) else None
    current = state_of(obs.status, canary)
    previous = obs.status.rollout
    if rollout is not None and (previous is None or previous.revision != rollout.revision):
        # A new version starts a new rollout from the stable one: whatever the last rollout
        # was doing is over (core/layout.py unwinds its pods).
        current = superseded(current)
    return transition(current, trigger, target_state(trigger, rollout, canary))


def _owned_by(plugin: dict[str, Any], release: ReleaseRef) -> bool:
    owners = plugin.get("metadata", {}).get("ownerReferences") or []
    return any(o.get("uid") == release.uid and o.get("controller") for o in owners)


def _conditions(
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


def _keeps_running(status: FilterReleaseStatus) -> str:
    if status.applied:
        return f"the proxies keep version {status.applied.version}"
    return "nothing was released yet"


def _module_condition(
    status: FilterReleaseStatus, obs: Observation, flag: ConditionStatus, reason: str, message: str
) -> FilterReleaseStatus:
    conds = set_condition(
        status.conditions,
        ConditionType.MODULE_VERIFIED,
        flag,
        reason,
        message,
        now=obs.now,
        generation=obs.release.generation,
    )
    return status.model_copy(update={"conditions": conds})


def _degraded(
    obs: Observation, trigger: Trigger, problem: str, module_reason: str | None = None
) -> Decision:
    state = _state_after(obs, trigger, obs.status.rollout)
    message = f"{problem}; {_keeps_running(obs.status)}"
    status = _conditions(
        obs, ready=False, progressing=False, degraded=True, reason=trigger.value, message=message
    ).model_copy(update={"phase": PHASE[state].value, "message": message})
    if module_reason is not None:
        status = _module_condition(status, obs, "False", module_reason, problem)
    actions: tuple[Action, ...] = ()
    # One Event per new problem, not one per resync.
    if obs.status.message != message:
        actions = (EmitEvent(type="Warning", reason=trigger.value, message=message),)
    return Decision(state=state, trigger=trigger, status=status, actions=actions)


def shown(version: ModuleVersion) -> str:
    """A version as people read it: the module's tag or digest, and which configuration (two
    versions of one module differ only there)."""
    return f"{version.version} (config {version.config_hash[:8]})"


def _to_actions(
    obs: Observation, layout: Layout, target: Target, versions: dict[str, ModuleVersion]
) -> tuple[list[Action], Layout]:
    """The layout planner's steps as actions on the cluster, and the layout they lead to."""
    actions: list[Action] = []
    key = track_label(obs.release.name)
    for step in plan(layout, target):
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


def _tracks(status: FilterReleaseStatus, layout: Layout) -> FilterReleaseStatus:
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


def _remember(
    history: tuple[HistoryEntry, ...],
    version: ModuleVersion,
    outcome: str,
    now: datetime,
    reason: str | None = None,
) -> tuple[HistoryEntry, ...]:
    top = history[0] if history else None
    if top and top.config_hash == version.config_hash and top.outcome == outcome:
        return history
    entry = HistoryEntry(
        version=version.version,
        config_hash=version.config_hash,
        outcome=outcome,
        at=timestamp(now),
        reason=reason,
    )
    return (entry, *history)[:HISTORY_LIMIT]


def _events(raw: tuple[tuple[str, str, str], ...] | list[tuple[str, str, str]]) -> list[Action]:
    return [
        EmitEvent(type="Warning" if t == "Warning" else "Normal", reason=r, message=m)
        for t, r, m in raw
    ]


def decide(obs: Observation, ctx: Context | None = None) -> Decision:
    """What to do about one FilterRelease, given what was observed (and the context derived
    from it, if the caller derived it already for needs())."""
    if isinstance(obs.spec, SpecError):
        # Nothing is changed on the cluster: a rollout in progress holds where it is.
        return _degraded(obs, Trigger.SPEC_INVALID, f"invalid spec: {obs.spec.message}")

    for name in (stable_plugin_name(obs.release), canary_plugin_name(obs.release)):
        live = obs.live_plugins.get(name)
        if live is not None and not _owned_by(live, obs.release):
            return _degraded(
                obs,
                Trigger.CONFLICT,
                f"WasmPlugin {obs.release.namespace}/{name} exists and is not owned by this "
                "FilterRelease; rename the release or delete that WasmPlugin to let it take over",
            )

    module = obs.module
    if module is None:
        raise ValueError("a valid spec is decided on with the module pre-flight's verdict")
    if isinstance(module, ModuleFailure):
        problem = f"module {obs.spec.module.url} failed pre-flight ({module.reason}): "
        if module.transient:
            return _retrying(obs, Trigger.MODULE_UNAVAILABLE, problem + module.message)
        return _degraded(
            obs, Trigger.MODULE_REJECTED, problem + module.message, module_reason=module.reason
        )

    ctx = derive(obs) if ctx is None else ctx
    if ctx is None:
        raise ValueError("a valid spec with a verified module has a context")
    verified = _module_condition(
        obs.status, obs, "True", "Verified", f"{module.url}: {module.layout} image, {module.abi}"
    ).model_copy(update={"module": module})
    obs = obs.model_copy(update={"status": verified})
    if ctx.rollout is None:
        return _direct(obs, ctx)
    return _rollout(obs, ctx)


def _direct(obs: Observation, ctx: Context) -> Decision:
    desired = ctx.desired
    actions, after = _to_actions(obs, ctx.layout, ctx.target, {desired.config_hash: desired})
    name = stable_plugin_name(obs.release)
    writes = [a for a in actions if isinstance(a, ApplyWasmPlugin)]
    trigger = Trigger.WRITE if actions else Trigger.IN_SYNC
    state = _state_after(obs, trigger, obs.status.rollout)
    message = f"WasmPlugin {name} carries version {shown(desired)} to every selected proxy"
    status = _conditions(
        obs, ready=True, progressing=False, degraded=False, reason="Released", message=message
    )
    rollout = obs.status.rollout
    finished = rollout is not None and rollout.revision == desired.config_hash
    update: dict[str, Any] = {
        "phase": PHASE[state].value,
        "message": message,
        "applied": desired,
        # Without a canary there is no analysis to pass: a version that was written and read
        # back is the last known good one.
        "stable": desired,
        "canary": None,
        "current_step": None,
        "wasm_plugins": (name,),
        # The last rollout stays on show once it promoted this version; any other is over.
        "rollout": rollout if finished else None,
        "history": _remember(obs.status.history, desired, "Released", obs.now)
        if not finished
        else obs.status.history,
    }
    if writes:
        update["last_applied_time"] = timestamp(obs.now)
    status = _metrics_condition(_tracks(status.model_copy(update=update), after), obs, None)
    events: list[Action] = []
    for write in writes:
        verb = Reason.CREATED if write.created else Reason.UPDATED
        events.append(
            EmitEvent(
                type="Normal",
                reason=verb,
                message=f"{verb} WasmPlugin {write.name}: version {shown(desired)} "
                "to every selected proxy",
            )
        )
    if obs.request is not None:
        # Nothing to promote, abort or pause: say so once and clear the request.
        actions.append(ConsumeRequest(request=obs.request))
        events.append(
            EmitEvent(
                type="Warning",
                reason=Reason.REQUEST_IGNORED,
                message=f"request {obs.request!r} ignored: no canary rollout is in progress",
            )
        )
    return Decision(
        state=state,
        trigger=trigger,
        status=status,
        actions=(*actions, *events),
        # Unwinding a split takes more than one decision (widening waits for the canary
        # plugin's deletion to be observed): come back soon.
        requeue_after=Requeue.UNWIND if actions and after.split else None,
    )


def needs(obs: Observation, ctx: Context | None = None) -> steps.Needs:
    """What the next decide() on this observation needs measured or asked: the shell calls
    this first, fetches the answers, and puts them into the observation."""
    ctx = derive(obs) if ctx is None else ctx
    if ctx is None or ctx.rollout is None or ctx.canary is None:
        return steps.Needs()
    return steps.needs(
        ctx.rollout,
        ctx.canary,
        converged=ctx.converged,
        canary_pods=ctx.canary_pods,
        now=obs.now,
    )


def _analysis_due_in(obs: Observation, ctx: Context) -> float | None:
    """Seconds until the next metric is due, once the shell measured what needs() asked."""
    need = needs(obs, ctx)
    asked = need.gate or need.rollback_hooks or need.step_metrics or need.background_metrics
    if ctx.canary is None or not (asked or need.step_results or need.background_results):
        return None
    return steps.analysis_due_in(
        ctx.canary,
        obs.status.rollout,
        obs.step_results + obs.background_results,
        started=parse_timestamp(need.step_started_at) if need.step_started_at else obs.now,
        now=obs.now,
    )


def _progress(
    obs: Observation, ctx: Context, canary: Canary, rollout: RolloutStatus, stable: ModuleVersion
) -> tuple[RolloutStatus, float | None, str | None, list[tuple[str, str, str]]]:
    """Judge a running rollout: (rollout, requeue after, metrics-unavailable message, events)."""
    converged = ctx.converged
    if rollout != ctx.rollout:
        # A request changed the rollout in this decision: its target may differ.
        converged = not plan(ctx.layout, split_target(obs, rollout, stable, ctx.desired))
    deadline = (
        obs.spec.progress_deadline_seconds if isinstance(obs.spec, FilterReleaseSpec) else 600
    )
    if not converged and seconds_since(rollout.step_started_at, obs.now) > deadline:
        why = f"no progress for {deadline}s (progressDeadlineSeconds)"
        aborted = rollout.model_copy(update={"aborted": why, "aborted_at": timestamp(obs.now)})
        return aborted, Requeue.UNWIND, None, [("Warning", Reason.ROLLING_BACK, why)]
    due = _analysis_due_in(obs, ctx)
    outcome = steps.judge(
        rollout,
        canary,
        converged=converged,
        now=obs.now,
        step_results=obs.step_results,
        background=obs.background_results,
        gates=obs.gates,
        next_due=min(Requeue.CANARY_TICK, due) if due is not None else Requeue.CANARY_TICK,
    )
    judged = outcome.rollout
    if judged.weight != rollout.weight:
        # The canary pods change now: analysis counts their traffic from here.
        judged = judged.model_copy(update={"canary_since": timestamp(obs.now)})
    return judged, outcome.requeue_after, outcome.metrics_unavailable, list(outcome.events)


class _Summary(BaseModel):
    """How one decision on a rollout reads in the status."""

    trigger: Trigger
    message: str
    ready: bool = False
    progressing: bool = True
    degraded: bool = False
    update: dict[str, Any] = {}
    requeue: float | None = None
    events: list[tuple[str, str, str]] = []


def _rolled_back(
    obs: Observation,
    rollout: RolloutStatus,
    stable: ModuleVersion,
    desired: ModuleVersion,
    converged: bool,
) -> _Summary:
    message = (
        f"rolled back from {shown(desired)}: {rollout.aborted}; every pod runs "
        f"{shown(stable)}; change the spec or request retry to try again"
    )
    if not converged:
        return _Summary(
            trigger=Trigger.ROLLING_BACK,
            message=message,
            degraded=True,
            requeue=Requeue.UNWIND,
            update={"applied": stable},
        )
    events = []
    top = obs.status.history[0] if obs.status.history else None
    if top is None or top.config_hash != desired.config_hash or top.outcome != "RolledBack":
        took = seconds_since(rollout.aborted_at, obs.now)
        events.append(
            (
                "Warning",
                Reason.ROLLED_BACK,
                f"every pod back on {shown(stable)} "
                f"{took:.1f}s after the decision to roll back: {rollout.aborted}",
            )
        )
    history = _remember(obs.status.history, desired, "RolledBack", obs.now, rollout.aborted)
    return _Summary(
        trigger=Trigger.ROLLED_BACK,
        message=message,
        progressing=False,
        degraded=True,
        update={"history": history, "applied": stable, "canary": None},
        events=events,
    )


def _promoted(obs: Observation, desired: ModuleVersion, converged: bool) -> _Summary:
    if not converged:
        message = f"promoting {shown(desired)} to every selected proxy"
        return _Summary(trigger=Trigger.PROMOTING, message=message, requeue=Requeue.UNWIND)
    message = f"{shown(desired)} promoted: every selected proxy runs it"
    return _Summary(
        trigger=Trigger.PROMOTED,
        message=message,
        ready=True,
        progressing=False,
        events=[("Normal", Reason.PROMOTED, message)],
        update={
            "stable": desired,
            "applied": desired,
            "canary": None,
            "history": _remember(obs.status.history, desired, "Promoted", obs.now),
        },
    )


def _running(
    rollout: RolloutStatus, canary: Canary, desired: ModuleVersion, unavailable: str | None
) -> _Summary:
    step = steps.current_step(rollout, canary)
    where = f"step {steps.step_label(rollout, canary)} "
    where += f"({steps.step_name(step) if step else 'confirm promotion'})"
    if rollout.paused:
        message = f"{where} paused ({rollout.paused}): request promote or resume to go on"
        return _Summary(trigger=Trigger.PAUSED, message=message)
    if unavailable:
        message = f"{where} holds: metrics unavailable: {unavailable}"
        return _Summary(trigger=Trigger.METRICS_UNAVAILABLE, message=message)
    message = f"{where}: {shown(desired)} on {rollout.weight}% of the pods"
    if rollout.gate:
        message += f"; waiting for {rollout.gate}"
    return _Summary(trigger=Trigger.ROLLING_OUT, message=message)


def _rollout(obs: Observation, ctx: Context) -> Decision:
    if ctx.rollout is None or ctx.canary is None or ctx.stable is None:
        raise ValueError("a rollout runs with a canary strategy and a stable version")
    now = obs.now
    canary, rollout, stable, desired = ctx.canary, ctx.rollout, ctx.stable, ctx.desired
    events: list[tuple[str, str, str]] = []
    requests: list[Action] = []
    if ctx.started:
        events.append(
            (
                "Normal",
                Reason.ROLLOUT_STARTED,
                f"rolling out {shown(desired)} (from {shown(stable)}) in {len(canary.steps)} steps",
            )
        )
    if obs.request is not None:
        rollout, event = steps.apply_request(obs.request, rollout, canary, now)
        events.append(event)
        requests.append(ConsumeRequest(request=obs.request))

    requeue: float | None = None
    unavailable: str | None = None
    if not rollout.aborted and not rollout.promoting:
        rollout, requeue, unavailable, judged = _progress(obs, ctx, canary, rollout, stable)
        events += judged

    # Plan against the judged rollout: a weight just raised moves pods, and a rollback starts,
    # in this same decision.
    target = split_target(obs, rollout, stable, desired)
    versions = {stable.config_hash: stable, desired.config_hash: desired}
    layout_actions, after = _to_actions(obs, ctx.layout, target, versions)
    converged = not layout_actions
    if rollout.aborted:
        summary = _rolled_back(obs, rollout, stable, desired, converged)
    elif rollout.promoting:
        summary = _promoted(obs, desired, converged)
    else:
        summary = _running(rollout, canary, desired, unavailable)
        summary.requeue = Requeue.NEXT_MOVE if layout_actions else requeue
    state = _state_after(obs, summary.trigger, rollout)
    base = obs.status.model_copy(
        update={
            "canary": desired,
            "rollout": rollout,
            "current_step": steps.step_label(rollout, canary),
        }
    )
    status = _conditions(
        obs.model_copy(update={"status": base}),
        ready=summary.ready,
        progressing=summary.progressing,
        degraded=summary.degraded,
        reason=summary.trigger.value,
        message=summary.message,
    )
    plugins = (
        (stable_plugin_name(obs.release), after.stable),
        (canary_plugin_name(obs.release), after.canary),
    )
    update: dict[str, Any] = {
        "phase": PHASE[state].value,
        "message": summary.message,
        "wasm_plugins": tuple(name for name, plugin in plugins if plugin),
        **summary.update,
    }
    if any(isinstance(a, ApplyWasmPlugin) for a in layout_actions):
        update["last_applied_time"] = timestamp(now)
    status = _metrics_condition(_tracks(status.model_copy(update=update), after), obs, unavailable)
    return Decision(
        state=state,
        trigger=summary.trigger,
        status=status,
        actions=(*layout_actions, *requests, *_events(events + summary.events)),
        requeue_after=summary.requeue,
    )


def _metrics_condition(
    status: FilterReleaseStatus, obs: Observation, unavailable: str | None
) -> FilterReleaseStatus:
    old = status.condition(ConditionType.METRICS_UNAVAILABLE)
    if unavailable is None and old is None:
        return status  # never set for releases without analysis: keep their status short
    conds = set_condition(
        status.conditions,
        ConditionType.METRICS_UNAVAILABLE,
        "True" if unavailable else "False",
        "MeasurementError" if unavailable else "Measuring",
        unavailable or "",
        now=obs.now,
        generation=obs.release.generation,
    )
    return status.model_copy(update={"conditions": conds})


def action_failed(obs: Observation, decision: Decision, failed: Action, error: str) -> Decision:
    """The decision to record when the API server refused an action decide() asked for. The
    actions before it took effect; each is safe on its own, so the cluster is in a safe state,
    and the next reconcile plans again from what it observes."""
    return _degraded(
        obs, Trigger.WRITE_FAILED, f"the API server refused {_describe(failed)}: {error}"
    )


def action_retrying(obs: Observation, decision: Decision, failed: Action, error: str) -> Decision:
    """The decision to record when an action failed on something transient and will be retried."""
    return _retrying(obs, Trigger.WRITE_RETRYING, f"retrying {_describe(failed)}: {error}")


def write_failed(obs: Observation, decision: Decision, error: str) -> Decision:
    failed = next(a for a in decision.actions if isinstance(a, ApplyWasmPlugin))
    return action_failed(obs, decision, failed, error)


def write_retrying(obs: Observation, decision: Decision, error: str) -> Decision:
    failed = next(a for a in decision.actions if isinstance(a, ApplyWasmPlugin))
    return action_retrying(obs, decision, failed, error)


def _describe(action: Action) -> str:
    match action:
        case ApplyWasmPlugin():
            return f"the write of WasmPlugin {action.name}"
        case DeleteWasmPlugin():
            return f"the deletion of WasmPlugin {action.name}"
        case LabelPod():
            return f"the label {action.key}={action.value} on pod {action.pod}"
        case _:
            return action.kind


def _retrying(obs: Observation, trigger: Trigger, problem: str) -> Decision:
    """Hold on something transient: Progressing (the proxies keep what they run) until it passes,
    or until it has lasted longer than spec.progressDeadlineSeconds, counted from when
    Progressing turned True, after which the release is Degraded with ProgressDeadlineExceeded
    and stays so (no flapping) until it passes or the spec changes."""
    if not isinstance(obs.spec, FilterReleaseSpec):
        raise TypeError("only a valid spec can be retried")
    deadline = obs.spec.progress_deadline_seconds
    exceeded = _degraded(
        obs,
        Trigger.DEADLINE_EXCEEDED,
        f"{problem} (for longer than progressDeadlineSeconds, {deadline}s)",
    )
    degraded = obs.status.condition(ConditionType.DEGRADED)
    if (
        degraded is not None
        and degraded.status == "True"
        and degraded.reason == Trigger.DEADLINE_EXCEEDED
        and degraded.observed_generation == obs.release.generation
    ):
        return exceeded
    progressing = obs.status.condition(ConditionType.PROGRESSING)
    since = obs.now
    if progressing is not None and progressing.status == "True":
        since = parse_timestamp(progressing.last_transition_time)
    if (obs.now - since).total_seconds() > deadline:
        return exceeded
    state = _state_after(obs, trigger, obs.status.rollout)
    message = f"{problem}; {_keeps_running(obs.status)}"
    status = _conditions(
        obs, ready=False, progressing=True, degraded=False, reason=trigger.value, message=message
    ).model_copy(update={"phase": PHASE[state].value, "message": message})
    if trigger is Trigger.MODULE_UNAVAILABLE:
        status = _module_condition(status, obs, "Unknown", trigger.value, problem)
    actions: tuple[Action, ...] = ()
    if obs.status.message != message:
        actions = (EmitEvent(type="Warning", reason=trigger.value, message=message),)
    return Decision(state=state, trigger=trigger, status=status, actions=actions)
