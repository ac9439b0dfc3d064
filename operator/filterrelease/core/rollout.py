"""decide(observation) -> decision, for one release. Pure; time is an input.

Every state, event and legal move is listed in core/rollout_state.py; decide() obeys that
table (it refuses any move the table does not list). The context every decision starts from
is derived once, in core/observation.py. What a canary step does is in core/canary.py; in which
order WasmPlugins and pod labels change is in core/layout.py; how a decision reads in the
status is in core/decision.py; the decisions that hold a release (invalid spec, conflict,
module or write failures, the progress deadline) are in core/failures.py. decide() ties them
together: it works out the target layout (one version everywhere, or stable and canary split by
weight), asks the layout planner for the next safe changes, and records the outcome.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from filterrelease.core import canary as steps
from filterrelease.core.actions import Action, ApplyWasmPlugin, ConsumeRequest, EmitEvent
from filterrelease.core.confirmation import (
    ProxyCheck,
    check_proxies,
    layout_held,
    next_look,
    with_proxies,
)
from filterrelease.core.decision import (
    Decision,
    event_actions,
    history_limit,
    remember,
    shown,
    state_after,
    to_actions,
    with_conditions,
    with_metrics_condition,
    with_module_condition,
    with_tracks,
)
from filterrelease.core.failures import degraded, retrying
from filterrelease.core.layout import Layout, plan
from filterrelease.core.module import ModuleFailure
from filterrelease.core.needs import Needs, analysis_due_in, rollout_needs
from filterrelease.core.observation import Context, Observation, derive, split_target
from filterrelease.core.render import ReleaseRef, canary_plugin_name, stable_plugin_name
from filterrelease.core.requests import apply_request
from filterrelease.core.rollout_state import PHASE, Reason, Requeue, RolloutState, Trigger
from filterrelease.core.spec import Canary, FilterReleaseSpec, SpecError
from filterrelease.core.status import FilterReleaseStatus, ModuleVersion, RolloutStatus
from filterrelease.core.timestamps import parse_timestamp, seconds_since, timestamp
from filterrelease.core.undo import active_undo, is_undo, undo_status, undo_target, undone_version


def _owned_by(plugin: dict[str, Any], release: ReleaseRef) -> bool:
    owners = plugin.get("metadata", {}).get("ownerReferences") or []
    return any(o.get("uid") == release.uid and o.get("controller") for o in owners)


def decide(obs: Observation, ctx: Context | None = None) -> Decision:
    """What to do about one FilterRelease, given what was observed (and the context derived
    from it, if the caller derived it already for needs())."""
    if obs.status.undone is not None and active_undo(obs.status, obs.release.generation) is None:
        # The spec changed since the undo: it is over, and the spec is followed again.
        obs = obs.model_copy(update={"status": obs.status.model_copy(update={"undone": None})})
    if isinstance(obs.spec, SpecError):
        # Nothing is changed on the cluster: a rollout in progress holds where it is.
        return degraded(obs, Trigger.SPEC_INVALID, f"invalid spec: {obs.spec.message}")

    for name in (stable_plugin_name(obs.release), canary_plugin_name(obs.release)):
        live = obs.live_plugins.get(name)
        if live is not None and not _owned_by(live, obs.release):
            return degraded(
                obs,
                Trigger.CONFLICT,
                f"WasmPlugin {obs.release.namespace}/{name} exists and is not owned by this "
                "FilterRelease; rename the release or delete that WasmPlugin to let it take over",
            )

    if is_undo(obs.request):
        return _undo(obs)
    ctx = derive(obs) if ctx is None else ctx
    if ctx is not None and ctx.undone is not None:
        return _direct(obs, ctx, check_proxies(obs, ctx))

    module = obs.module
    if module is None:
        raise ValueError("a valid spec is decided on with the module pre-flight's verdict")
    if isinstance(module, ModuleFailure):
        problem = f"module {obs.spec.module.url} failed pre-flight ({module.reason}): "
        if module.transient:
            return retrying(obs, Trigger.MODULE_UNAVAILABLE, problem + module.message)
        return degraded(
            obs, Trigger.MODULE_REJECTED, problem + module.message, module_reason=module.reason
        )

    if ctx is None:
        raise ValueError("a valid spec with a verified module has a context")
    verified = with_module_condition(
        obs.status, obs, "True", "Verified", f"{module.url}: {module.layout} image, {module.abi}"
    ).model_copy(update={"module": module})
    obs = obs.model_copy(update={"status": verified})
    check = check_proxies(obs, ctx)
    if ctx.rollout is None:
        return _direct(obs, ctx, check)
    return _rollout(obs, ctx, check)


def _undo(obs: Observation) -> Decision:
    """A request to undo: every proxy back to an earlier good version at once (core/undo.py)."""
    request = obs.request or ""
    entry = undo_target(obs.status, request)
    asked = obs.model_copy(update={"request": None})
    if isinstance(entry, str):
        plain = decide(asked)
        refused = EmitEvent(
            type="Warning", reason=Reason.REQUEST_IGNORED, message=f"{request} refused: {entry}"
        )
        return plain.model_copy(
            update={"actions": (*plain.actions, ConsumeRequest(request=request), refused)}
        )
    version = undone_version(entry)
    why = f"undo to revision {entry.revision} by request"
    history = remember(obs.status.history, version, "Undone", obs.now, why, keep=history_limit(obs))
    status = obs.status.model_copy(
        update={
            "undone": undo_status(entry, obs.release.generation, obs.now),
            "stable": version,
            "canary": None,
            "rollout": None,
            "history": history,
        }
    )
    undoing = asked.model_copy(update={"status": status})
    ctx = derive(undoing)
    if ctx is None:
        raise ValueError("an undo to a version with content has a context")
    decision = _direct(undoing, ctx, check_proxies(undoing, ctx))
    event = EmitEvent(
        type="Normal",
        reason=Reason.UNDONE,
        message=f"{why}: every selected proxy goes back to {shown(version)} at once, "
        "skipping the canary; the release reads UndoneFromSpec until the spec changes",
    )
    return decision.model_copy(
        update={"actions": (*decision.actions, ConsumeRequest(request=request), event)}
    )


def _undone_reading(
    obs: Observation, ctx: Context, check: ProxyCheck, *, settled: bool
) -> tuple[str, list[Action]]:
    """How an undo in force reads: the message, and the Event once every proxy runs it."""
    undone = ctx.undone
    if undone is None:
        raise ValueError("only an undo in force reads so")
    head = f"undone to revision {undone.revision}: "
    tail = (
        "; the spec asks for another version: change it (to this version, or a fixed one) to "
        "end the undo"
    )
    if not settled:
        waiting = check.timed_out or check.failed or check.waiting or "the proxies"
        return f"{head}moving every selected proxy to {shown(ctx.desired)}: {waiting}{tail}", []
    message = f"{head}every selected proxy runs {shown(ctx.desired)}{tail}"
    events: list[Action] = []
    if obs.status.message != message:
        took = seconds_since(undone.at, obs.now)
        events.append(
            EmitEvent(
                type="Normal",
                reason=Reason.UNDONE,
                message=f"every selected proxy runs revision {undone.revision} "
                f"({shown(ctx.desired)}), {took:.1f}s after the undo",
            )
        )
    return message, events


def _held(ctx: Context, actions: list[Action], check: ProxyCheck) -> bool:
    """The next layout change waits for the proxies to run the last one (while pods are split
    or being unwound: the only time one change depends on another being seen first)."""
    moving = ctx.layout.canary is not None or ctx.layout.split
    return bool(actions) and moving and layout_held(check)


def _direct_trigger(
    obs: Observation, actions: list[Action], check: ProxyCheck, *, held: bool
) -> Trigger:
    if held:
        return Trigger.CONVERGING
    if actions:
        # Written now: with proxies to ask, it is released once they confirm it.
        return Trigger.CONVERGING if obs.sidecars else Trigger.WRITE
    if check.confirmed:
        return Trigger.IN_SYNC
    if check.failed or check.timed_out:
        return Trigger.NOT_CONVERGED
    return Trigger.CONVERGING


def _direct(obs: Observation, ctx: Context, check: ProxyCheck) -> Decision:
    desired = ctx.desired
    actions, after = to_actions(obs, ctx.layout, ctx.target, {desired.config_hash: desired})
    held = _held(ctx, actions, check)
    if held:
        actions, after = [], ctx.layout
    name = stable_plugin_name(obs.release)
    writes = [a for a in actions if isinstance(a, ApplyWasmPlugin)]
    trigger = _direct_trigger(obs, actions, check, held=held)
    undone_events: list[Action] = []
    settled = False
    if ctx.undone is not None:
        settled = trigger in (Trigger.WRITE, Trigger.IN_SYNC)
        trigger = Trigger.UNDONE
    state = state_after(obs, trigger, obs.status.rollout)
    released = trigger in (Trigger.WRITE, Trigger.IN_SYNC)
    message = f"WasmPlugin {name} carries version {shown(desired)} to every selected proxy"
    if trigger is Trigger.CONVERGING:
        waiting = f": {check.waiting}" if check.waiting else ""
        message = (
            f"WasmPlugin {name} carries version {shown(desired)}; waiting for the proxies{waiting}"
        )
    elif trigger is Trigger.NOT_CONVERGED:
        why = f"module not loaded: {check.failed}" if check.failed else check.timed_out
        message = f"version {shown(desired)} is not running on every selected proxy: {why}"
    elif trigger is Trigger.UNDONE:
        message, undone_events = _undone_reading(obs, ctx, check, settled=settled)
    status = with_conditions(
        obs,
        ready=released,
        progressing=trigger is Trigger.CONVERGING or (trigger is Trigger.UNDONE and not settled),
        degraded=trigger in (Trigger.NOT_CONVERGED, Trigger.UNDONE),
        reason="Released" if released else trigger.value,
        message=message,
    )
    rollout = obs.status.rollout
    finished = rollout is not None and rollout.revision == desired.config_hash
    update: dict[str, Any] = {
        "phase": PHASE[state].value,
        "message": message,
        "applied": desired,
        "canary": None,
        "current_step": None,
        "wasm_plugins": (name,),
        # The last rollout stays on show once it promoted this version; any other is over.
        "rollout": rollout if finished else None,
    }
    if released:
        # Without a canary there is no analysis to pass: a version the proxies run (or, with
        # nothing to ask, that was written and read back) is the last known good one.
        update["stable"] = desired
        if not finished:
            update["history"] = remember(
                obs.status.history, desired, "Released", obs.now, keep=history_limit(obs)
            )
    if writes:
        update["last_applied_time"] = timestamp(obs.now)
    status = with_metrics_condition(with_tracks(status.model_copy(update=update), after), obs, None)
    status = with_proxies(status, obs, check)
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
    events += undone_events
    if obs.request is not None:
        # Nothing to promote, abort or pause: say so once and clear the request.
        why = "no canary rollout is in progress"
        if ctx.undone is not None:
            why = f"the release is undone to revision {ctx.undone.revision} until the spec changes"
        actions.append(ConsumeRequest(request=obs.request))
        events.append(
            EmitEvent(
                type="Warning",
                reason=Reason.REQUEST_IGNORED,
                message=f"request {obs.request!r} ignored: {why}",
            )
        )
    # Unwinding a split takes more than one decision (a batch of one kind of change at a time,
    # and widening waits for the canary plugin's deletion to be observed): come back soon.
    requeue: float | None = Requeue.UNWIND if actions and plan(after, ctx.target) else None
    if not released and not (trigger is Trigger.UNDONE and settled):
        # Not every proxy confirmed: look again (soon while they converge, seldom once they
        # are late); just written, the layout is read back first.
        look = next_look(check) or Requeue.UNWIND
        requeue = look if requeue is None else min(requeue, look)
    return Decision(
        state=state,
        trigger=trigger,
        status=status,
        actions=(*actions, *events),
        requeue_after=requeue,
    )


def needs(obs: Observation, ctx: Context | None = None) -> Needs:
    """What the next decide() on this observation needs measured or asked: the shell calls
    this first, fetches the answers, and puts them into the observation."""
    ctx = derive(obs) if ctx is None else ctx
    if ctx is None or ctx.rollout is None or ctx.canary is None:
        return Needs()
    return rollout_needs(
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
    return analysis_due_in(
        ctx.canary,
        obs.status.rollout,
        obs.step_results + obs.background_results,
        started=parse_timestamp(need.step_started_at) if need.step_started_at else obs.now,
        now=obs.now,
    )


def _progress(
    obs: Observation,
    ctx: Context,
    canary: Canary,
    rollout: RolloutStatus,
    stable: ModuleVersion,
    *,
    check: ProxyCheck,
) -> tuple[RolloutStatus, float | None, str | None, list[tuple[str, str, str]]]:
    """Judge a running rollout: (rollout, requeue after, metrics-unavailable message, events)."""
    converged = ctx.converged
    if rollout != ctx.rollout:
        # A request changed the rollout in this decision: its target may differ.
        converged = not plan(ctx.layout, split_target(obs, rollout, stable, ctx.desired))
    elif check.canary_failed:
        # The proxies say the canary did not load where it should run: no analysis window
        # would tell more (istio-agent's deny-all fallback answers 403 to everything).
        why = f"proxies report the canary not loaded: {check.canary_failed}"
        aborted = rollout.model_copy(update={"aborted": why, "aborted_at": timestamp(obs.now)})
        return aborted, Requeue.UNWIND, None, [("Warning", Reason.ROLLING_BACK, why)]
    elif converged and obs.sidecars:
        # The layout is in place; a step counts once the proxies run it too, and its analysis
        # counts traffic from the moment they were all seen to.
        converged = check.confirmed
        if check.confirmed and not rollout.proxies_confirmed:
            rollout = rollout.model_copy(
                update={"proxies_confirmed": True, "canary_since": timestamp(obs.now)}
            )
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
        # The canary pods change now: analysis counts their traffic from here (or, with
        # proxies to confirm, from when they all run the new layout).
        judged = judged.model_copy(
            update={"canary_since": timestamp(obs.now), "proxies_confirmed": False}
        )
    requeue = outcome.requeue_after
    if converged is False and obs.sidecars and (look := next_look(check)) is not None:
        requeue = min(requeue, look) if requeue is not None else look
    return judged, requeue, outcome.metrics_unavailable, list(outcome.events)


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
    history = remember(
        obs.status.history,
        desired,
        "RolledBack",
        obs.now,
        rollout.aborted,
        keep=history_limit(obs),
    )
    return _Summary(
        trigger=Trigger.ROLLED_BACK,
        message=message,
        progressing=False,
        degraded=True,
        update={"history": history, "applied": stable, "canary": None},
        events=events,
    )


def _promoted(
    obs: Observation, desired: ModuleVersion, converged: bool, check: ProxyCheck
) -> _Summary:
    if converged and obs.sidecars and not check.confirmed:
        waiting = check.timed_out or check.failed or check.waiting or "the proxies"
        message = f"promoting {shown(desired)}: waiting for {waiting}"
        return _Summary(trigger=Trigger.PROMOTING, message=message, requeue=Requeue.UNWIND)
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
            "history": remember(
                obs.status.history, desired, "Promoted", obs.now, keep=history_limit(obs)
            ),
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


def _rollout(obs: Observation, ctx: Context, check: ProxyCheck) -> Decision:
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
        rollout, event = apply_request(obs.request, rollout, canary, now)
        events.append(event)
        requests.append(ConsumeRequest(request=obs.request))

    requeue: float | None = None
    unavailable: str | None = None
    if not rollout.aborted and not rollout.promoting:
        rollout, requeue, unavailable, judged = _progress(
            obs, ctx, canary, rollout, stable, check=check
        )
        events += judged

    # Plan against the judged rollout: a weight just raised moves pods, and a rollback starts,
    # in this same decision.
    target = split_target(obs, rollout, stable, desired)
    versions = {stable.config_hash: stable, desired.config_hash: desired}
    layout_actions, after = to_actions(obs, ctx.layout, target, versions)
    converged = not layout_actions
    held = _held(ctx, layout_actions, check)
    if held:
        layout_actions, after = [], ctx.layout
    if rollout.aborted:
        summary = _rolled_back(obs, rollout, stable, desired, converged)
    elif rollout.promoting:
        summary = _promoted(obs, desired, converged, check)
    else:
        summary = _running(rollout, canary, desired, unavailable)
        if not check.confirmed and converged and obs.sidecars:
            waiting = check.timed_out or check.failed or check.waiting
            summary.message += f"; holds until the proxies run it: {waiting}"
        summary.requeue = Requeue.NEXT_MOVE if layout_actions else requeue
    if held:
        # Look again soon: the proxies are about to run the last change.
        summary.requeue = min(summary.requeue or Requeue.UNWIND, Requeue.UNWIND)
    state = state_after(obs, summary.trigger, rollout)
    status = _rollout_status(
        obs, ctx, rollout, summary, state=state, layout_actions=layout_actions, after=after
    )
    status = with_metrics_condition(status, obs, unavailable)
    status = with_proxies(status, obs, check)
    return Decision(
        state=state,
        trigger=summary.trigger,
        status=status,
        actions=(*layout_actions, *requests, *event_actions(events + summary.events)),
        requeue_after=summary.requeue,
    )


def _rollout_status(
    obs: Observation,
    ctx: Context,
    rollout: RolloutStatus,
    summary: _Summary,
    *,
    state: RolloutState,
    layout_actions: list[Action],
    after: Layout,
) -> FilterReleaseStatus:
    """How a decision on a rollout reads in the status."""
    base = obs.status.model_copy(
        update={
            "canary": ctx.desired,
            "rollout": rollout,
            "current_step": steps.step_label(rollout, ctx.canary) if ctx.canary else None,
        }
    )
    status = with_conditions(
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
        update["last_applied_time"] = timestamp(obs.now)
    return with_tracks(status.model_copy(update=update), after)
