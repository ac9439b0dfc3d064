"""The release state machine: decide(observation) -> decision. Pure; time is an input.

Everything that affects the state machine lives in this file: the phases, the triggers, and the
TRANSITIONS table that decide() obeys (it refuses any move the table does not list, and a test
walks the table). This version releases straight to every selected proxy; the canary engine adds
its phases and triggers here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from filterrelease.core.actions import Action, ApplyWasmPlugin, EmitEvent
from filterrelease.core.module import ModuleFailure, VerifiedModule
from filterrelease.core.render import (
    ReleaseRef,
    module_version,
    needs_write,
    render_wasmplugin,
    stable_plugin_name,
)
from filterrelease.core.spec import FilterReleaseSpec, SpecError
from filterrelease.core.status import (
    ConditionStatus,
    ConditionType,
    FilterReleaseStatus,
    set_condition,
    timestamp,
)


class Phase(StrEnum):
    PENDING = "Pending"  # never reconciled
    PROGRESSING = "Progressing"  # a version is being written
    HEALTHY = "Healthy"  # the WasmPlugin carries the desired version
    DEGRADED = "Degraded"  # the desired version cannot be released; the last one keeps running


class Trigger(StrEnum):
    SPEC_INVALID = "InvalidSpec"  # the spec cannot be released as written
    CONFLICT = "Conflict"  # the WasmPlugin name is taken by something we do not own
    WRITE = "Write"  # the live WasmPlugin differs from the desired one
    IN_SYNC = "InSync"  # the live WasmPlugin is the desired one
    WRITE_FAILED = "WriteFailed"  # the API server refused our write
    WRITE_RETRYING = "WriteRetrying"  # a write failed on something transient; retrying
    MODULE_REJECTED = "ModuleRejected"  # pre-flight found the module unusable
    MODULE_UNAVAILABLE = "RegistryUnavailable"  # pre-flight could not reach the module; retrying
    DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"  # retrying for longer than the deadline


_ALL = tuple(Phase)
TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    **{(p, Trigger.SPEC_INVALID): Phase.DEGRADED for p in _ALL},
    **{(p, Trigger.CONFLICT): Phase.DEGRADED for p in _ALL},
    # A write is expected to land (the API call is synchronous); WRITE_FAILED corrects it.
    **{(p, Trigger.WRITE): Phase.HEALTHY for p in _ALL},
    **{(p, Trigger.IN_SYNC): Phase.HEALTHY for p in _ALL},
    **{(p, Trigger.WRITE_FAILED): Phase.DEGRADED for p in _ALL},
    **{(p, Trigger.WRITE_RETRYING): Phase.PROGRESSING for p in _ALL},
    **{(p, Trigger.DEADLINE_EXCEEDED): Phase.DEGRADED for p in _ALL},
    **{(p, Trigger.MODULE_REJECTED): Phase.DEGRADED for p in _ALL},
    **{(p, Trigger.MODULE_UNAVAILABLE): Phase.PROGRESSING for p in _ALL},
}


# Transient holds: try again with backoff. (DEADLINE_EXCEEDED keeps retrying at resync pace.)
RETRY_SOON = frozenset({Trigger.WRITE_RETRYING, Trigger.MODULE_UNAVAILABLE})


class Observation(BaseModel):
    """Everything decide() may look at, gathered by the shell in one pass."""

    model_config = ConfigDict(frozen=True)
    release: ReleaseRef
    spec: FilterReleaseSpec | SpecError
    status: FilterReleaseStatus
    # Live WasmPlugins in the release's namespace whose name the release renders, by name.
    live_plugins: dict[str, dict[str, Any]]
    # The module pre-flight's verdict; None only when the spec is invalid (nothing to check).
    module: VerifiedModule | ModuleFailure | None = None
    now: datetime


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)
    phase: Phase
    trigger: Trigger
    status: FilterReleaseStatus
    actions: tuple[Action, ...] = ()

    @property
    def retry(self) -> bool:
        """Whether the shell should reconcile again soon (with backoff) rather than wait for
        the next watch event or resync: something transient is holding the release."""
        return self.trigger in RETRY_SOON


class IllegalTransitionError(Exception):
    pass


def transition(current: Phase, trigger: Trigger) -> Phase:
    try:
        return TRANSITIONS[(current, trigger)]
    except KeyError:
        raise IllegalTransitionError(f"{trigger} is not allowed in phase {current}") from None


def _current_phase(status: FilterReleaseStatus) -> Phase:
    try:
        return Phase(status.phase) if status.phase else Phase.PENDING
    except ValueError:
        return Phase.PENDING


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
    phase = transition(_current_phase(obs.status), trigger)
    message = f"{problem}; {_keeps_running(obs.status)}"
    status = _conditions(
        obs, ready=False, progressing=False, degraded=True, reason=trigger.value, message=message
    ).model_copy(update={"phase": phase.value, "message": message})
    if module_reason is not None:
        status = _module_condition(status, obs, "False", module_reason, problem)
    actions: tuple[Action, ...] = ()
    # One Event per new problem, not one per resync.
    if obs.status.message != message:
        actions = (EmitEvent(type="Warning", reason=trigger.value, message=message),)
    return Decision(phase=phase, trigger=trigger, status=status, actions=actions)


def decide(obs: Observation) -> Decision:
    """What to do about one FilterRelease, given what was observed."""
    if isinstance(obs.spec, SpecError):
        return _degraded(obs, Trigger.SPEC_INVALID, f"invalid spec: {obs.spec.message}")

    name = stable_plugin_name(obs.release)
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

    desired = render_wasmplugin(obs.release, obs.spec, module)
    version = module_version(obs.spec, obs.release.generation, module)
    write = needs_write(desired, live)
    trigger = Trigger.WRITE if write else Trigger.IN_SYNC
    phase = transition(_current_phase(obs.status), trigger)
    message = f"WasmPlugin {name} carries version {version.version} to every selected proxy"
    status = _conditions(
        obs, ready=True, progressing=False, degraded=False, reason="Released", message=message
    )
    status = _module_condition(
        status, obs, "True", "Verified", f"{module.url}: {module.layout} image, {module.abi}"
    )
    update: dict[str, Any] = {
        "module": module,
        "phase": phase.value,
        "message": message,
        "applied": version,
        # Without a canary strategy there is no analysis to pass: a version that was written and
        # read back is the last known good one.
        "stable": version,
        "wasm_plugins": (name,),
    }
    actions: tuple[Action, ...] = ()
    if write:
        update["last_applied_time"] = timestamp(obs.now)
        verb = "Created" if live is None else "Updated"
        actions = (
            ApplyWasmPlugin(manifest=desired, created=live is None),
            EmitEvent(
                type="Normal",
                reason=verb,
                message=f"{verb} WasmPlugin {name}: version {version.version} "
                f"(config {version.config_hash}) to every selected proxy",
            ),
        )
    elif obs.status.applied is not None and obs.status.applied.config_hash == version.config_hash:
        # Nothing to write, and the version is unchanged: keep the generation it came from.
        update["applied"] = obs.status.applied
        update["stable"] = obs.status.stable or obs.status.applied
    return Decision(
        phase=phase, trigger=trigger, status=status.model_copy(update=update), actions=actions
    )


def write_failed(obs: Observation, decision: Decision, error: str) -> Decision:
    """The decision to record when the API server refused a write that decide() asked for."""
    failed = next(a for a in decision.actions if isinstance(a, ApplyWasmPlugin))
    return _degraded(
        obs, Trigger.WRITE_FAILED, f"the API server refused WasmPlugin {failed.name}: {error}"
    )


def write_retrying(obs: Observation, decision: Decision, error: str) -> Decision:
    """The decision to record when a write failed on something transient and will be retried."""
    failed = next(a for a in decision.actions if isinstance(a, ApplyWasmPlugin))
    return _retrying(
        obs, Trigger.WRITE_RETRYING, f"retrying the write of WasmPlugin {failed.name}: {error}"
    )


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
        since = datetime.strptime(progressing.last_transition_time, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC
        )
    if (obs.now - since).total_seconds() > deadline:
        return exceeded
    phase = transition(_current_phase(obs.status), trigger)
    message = f"{problem}; {_keeps_running(obs.status)}"
    status = _conditions(
        obs, ready=False, progressing=True, degraded=False, reason=trigger.value, message=message
    ).model_copy(update={"phase": phase.value, "message": message})
    if trigger is Trigger.MODULE_UNAVAILABLE:
        status = _module_condition(status, obs, "Unknown", trigger.value, problem)
    actions: tuple[Action, ...] = ()
    if obs.status.message != message:
        actions = (EmitEvent(type="Warning", reason=trigger.value, message=message),)
    return Decision(phase=phase, trigger=trigger, status=status, actions=actions)
