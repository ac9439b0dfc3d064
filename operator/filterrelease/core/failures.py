"""The decisions that hold a release where it is: an invalid spec, a conflict, a module that
pre-flight rejected or could not reach, a write the API server refused or that is retried, and
the progress deadline for all of them. Pure; the proxies keep what they run."""

from __future__ import annotations

from filterrelease.core.actions import (
    Action,
    ApplyWasmPlugin,
    DeleteWasmPlugin,
    EmitEvent,
    LabelPod,
)
from filterrelease.core.decision import (
    Decision,
    keeps_running,
    state_after,
    with_conditions,
    with_module_condition,
)
from filterrelease.core.observation import Observation
from filterrelease.core.rollout_state import PHASE, Trigger
from filterrelease.core.spec import FilterReleaseSpec
from filterrelease.core.status import ConditionType
from filterrelease.core.timestamps import parse_timestamp


def degraded(
    obs: Observation, trigger: Trigger, problem: str, module_reason: str | None = None
) -> Decision:
    state = state_after(obs, trigger, obs.status.rollout)
    message = f"{problem}; {keeps_running(obs.status)}"
    status = with_conditions(
        obs, ready=False, progressing=False, degraded=True, reason=trigger.value, message=message
    ).model_copy(update={"phase": PHASE[state].value, "message": message})
    if module_reason is not None:
        status = with_module_condition(status, obs, "False", module_reason, problem)
    actions: tuple[Action, ...] = ()
    # One Event per new problem, not one per resync.
    if obs.status.message != message:
        actions = (EmitEvent(type="Warning", reason=trigger.value, message=message),)
    return Decision(state=state, trigger=trigger, status=status, actions=actions)


def action_failed(obs: Observation, decision: Decision, failed: Action, error: str) -> Decision:
    """The decision to record when the API server refused an action decide() asked for. The
    actions before it took effect; each is safe on its own, so the cluster is in a safe state,
    and the next reconcile plans again from what it observes."""
    return degraded(
        obs, Trigger.WRITE_FAILED, f"the API server refused {_describe(failed)}: {error}"
    )


def action_retrying(obs: Observation, decision: Decision, failed: Action, error: str) -> Decision:
    """The decision to record when an action failed on something transient and will be retried."""
    return retrying(obs, Trigger.WRITE_RETRYING, f"retrying {_describe(failed)}: {error}")


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


def retrying(obs: Observation, trigger: Trigger, problem: str) -> Decision:
    """Hold on something transient: Progressing (the proxies keep what they run) until it passes,
    or until it has lasted longer than spec.progressDeadlineSeconds, counted from when
    Progressing turned True, after which the release is Degraded with ProgressDeadlineExceeded
    and stays so (no flapping) until it passes or the spec changes."""
    if not isinstance(obs.spec, FilterReleaseSpec):
        raise TypeError("only a valid spec can be retried")
    deadline = obs.spec.progress_deadline_seconds
    exceeded = degraded(
        obs,
        Trigger.DEADLINE_EXCEEDED,
        f"{problem} (for longer than progressDeadlineSeconds, {deadline}s)",
    )
    held = obs.status.condition(ConditionType.DEGRADED)
    if (
        held is not None
        and held.status == "True"
        and held.reason == Trigger.DEADLINE_EXCEEDED
        and held.observed_generation == obs.release.generation
    ):
        return exceeded
    progressing = obs.status.condition(ConditionType.PROGRESSING)
    since = obs.now
    if progressing is not None and progressing.status == "True":
        since = parse_timestamp(progressing.last_transition_time)
    if (obs.now - since).total_seconds() > deadline:
        return exceeded
    state = state_after(obs, trigger, obs.status.rollout)
    message = f"{problem}; {keeps_running(obs.status)}"
    status = with_conditions(
        obs, ready=False, progressing=True, degraded=False, reason=trigger.value, message=message
    ).model_copy(update={"phase": PHASE[state].value, "message": message})
    if trigger is Trigger.MODULE_UNAVAILABLE:
        status = with_module_condition(status, obs, "Unknown", trigger.value, problem)
    actions: tuple[Action, ...] = ()
    if obs.status.message != message:
        actions = (EmitEvent(type="Warning", reason=trigger.value, message=message),)
    return Decision(state=state, trigger=trigger, status=status, actions=actions)
