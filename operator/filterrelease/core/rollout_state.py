"""Every state a release can be in, every event, and the table of legal moves. Pure.

A reader finds the whole state machine here. decide() (core/rollout.py) works out what happened
(a Trigger: the event), the state that leads to, and asks transition() whether the table lists
that move; a move it does not list raises IllegalTransitionError, and the unit tests walk whole
rollouts (hypothesis drives them through requests, crashes, outages and new versions) so that a
move the code takes and the table lacks fails a test.

The state is not stored: it is derived from the status every operator version writes (its phase,
the Ready condition's reason, and status.rollout), so objects written before this table existed
are read as the state they are in. The phase readers see (printer columns, the Argo CD health
check) is PHASE[state].
"""

from __future__ import annotations

from enum import Enum, StrEnum

from filterrelease.core.spec import Canary
from filterrelease.core.status import ConditionType, FilterReleaseStatus, RolloutStatus


class Phase(StrEnum):
    """What readers see in status.phase (printer columns, deploy/argocd/health.lua)."""

    PENDING = "Pending"  # never reconciled
    PROGRESSING = "Progressing"  # a version is being written, or a canary is running
    PAUSED = "Paused"  # a canary waits for a person
    HEALTHY = "Healthy"  # every selected proxy runs the desired version
    DEGRADED = "Degraded"  # the desired version cannot be (or was not) released; the last one runs


class Trigger(StrEnum):
    """The events: what a decision found. The value is the conditions' reason."""

    SPEC_INVALID = "InvalidSpec"  # the spec cannot be released as written
    CONFLICT = "Conflict"  # a WasmPlugin name is taken by something we do not own
    WRITE = "Write"  # the live WasmPlugins differ from the desired ones
    IN_SYNC = "InSync"  # the live WasmPlugins are the desired ones
    CONVERGING = "ProxiesConverging"  # written; not every selected proxy runs it yet
    NOT_CONVERGED = "ProxiesNotConverged"  # past the confirmation timeout, or a proxy's fallback
    WRITE_FAILED = "WriteFailed"  # the API server refused our write
    WRITE_RETRYING = "WriteRetrying"  # a write failed on something transient; retrying
    MODULE_REJECTED = "ModuleRejected"  # pre-flight found the module unusable
    MODULE_UNAVAILABLE = "RegistryUnavailable"  # pre-flight could not reach the module; retrying
    DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"  # retrying for longer than the deadline
    ROLLING_OUT = "RollingOut"  # a canary step runs
    PAUSED = "Paused"  # a canary waits for a person (pause step, inconclusive, manual)
    METRICS_UNAVAILABLE = "MetricsUnavailable"  # measurements error: the step holds
    PROMOTING = "Promoting"  # every step passed: the new version goes to every pod
    PROMOTED = "Promoted"  # the new version is the stable one everywhere
    ROLLING_BACK = "RollingBack"  # the canary failed: every pod goes back to the stable version
    ROLLED_BACK = "RolledBack"  # every pod is back; stays so until the spec changes
    # A person moved every proxy back to an earlier good version (request undo): it runs that,
    # not what the spec asks for, until the spec changes.
    UNDONE = "UndoneFromSpec"


class PauseReason(StrEnum):
    """Why a rollout waits for a person (status.rollout.paused)."""

    PAUSE_STEP = "PauseStep"  # a pause step without a duration
    INCONCLUSIVE = "Inconclusive"  # an analysis step could not decide
    MANUAL = "Manual"  # a person asked for it


class Reason(StrEnum):
    """The reasons of the Kubernetes Events a rollout posts (beside a Trigger's own value)."""

    ROLLOUT_STARTED = "RolloutStarted"
    STEP_STARTED = "StepStarted"
    STEP_PASSED = "StepPassed"
    WAVE_STARTED = "WaveStarted"
    PAUSED = "Paused"
    INCONCLUSIVE = "Inconclusive"
    RESUMED = "Resumed"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    RETRYING = "Retrying"
    UNDONE = "Undone"
    REQUEST_IGNORED = "RequestIgnored"
    CREATED = "Created"
    UPDATED = "Updated"


class Requeue(float, Enum):
    """When to look at a release again, in seconds, when nothing else is due sooner."""

    NEXT_MOVE = 0.2  # pods moved or a step passed: the next move can be made right away
    # Promoting, rolling back and unwinding a split take more than one decision (widening
    # waits for the canary plugin's deletion to be observed).
    UNWIND = 0.5
    # A running canary when nothing else is due: the Wasm fast-fail measures at every look, so
    # this bounds how long a broken module goes unnoticed.
    CANARY_TICK = 2.0
    GATE_CLOSED = 5.0  # ask a webhook that said no again


class RolloutState(StrEnum):
    PENDING = "Pending"  # never reconciled
    STEADY = "Steady"  # one version on every selected proxy
    RETRYING = "Retrying"  # a write or the module's registry failed on something transient
    CONVERGING = "Converging"  # one version written everywhere; the proxies have not all confirmed
    DEGRADED = "Degraded"  # the desired version cannot be released; the last one runs
    # A canary runs: which kind of step it is on.
    STEPPING = "Stepping"  # pods move to the canary weight (setWeight), or the next wave starts
    WAITING = "Waiting"  # a pause step with a duration
    ANALYSING = "Analysing"  # an analysis step measures the canary pods
    WAITING_ON_GATE = "WaitingOnGate"  # a pre-rollout or confirm-promotion webhook said no
    HOLDING = "Holding"  # measurements error (metrics unavailable): no promotion, no rollback
    PAUSED_STEP = "PausedStep"  # paused, why: a pause step without a duration
    PAUSED_INCONCLUSIVE = "PausedInconclusive"  # paused, why: an analysis was inconclusive
    PAUSED_MANUAL = "PausedManual"  # paused, why: a person asked
    PROMOTING = "Promoting"  # the new version goes to every pod
    ROLLING_BACK = "RollingBack"  # every pod goes back to the stable version
    ROLLED_BACK = "RolledBack"  # every pod is back; stays so until the spec changes or a retry
    UNDONE = "Undone"  # moved back to an earlier version by request; until the spec changes


_S = RolloutState  # the table below reads better short
PHASE: dict[RolloutState, Phase] = {
    _S.PENDING: Phase.PENDING,
    _S.STEADY: Phase.HEALTHY,
    _S.RETRYING: Phase.PROGRESSING,
    _S.CONVERGING: Phase.PROGRESSING,
    _S.DEGRADED: Phase.DEGRADED,
    _S.STEPPING: Phase.PROGRESSING,
    _S.WAITING: Phase.PROGRESSING,
    _S.ANALYSING: Phase.PROGRESSING,
    _S.WAITING_ON_GATE: Phase.PROGRESSING,
    _S.HOLDING: Phase.PROGRESSING,
    _S.PAUSED_STEP: Phase.PAUSED,
    _S.PAUSED_INCONCLUSIVE: Phase.PAUSED,
    _S.PAUSED_MANUAL: Phase.PAUSED,
    _S.PROMOTING: Phase.PROGRESSING,
    _S.ROLLING_BACK: Phase.DEGRADED,
    _S.ROLLED_BACK: Phase.DEGRADED,
    # What runs is not what the spec asks for: a drift a person must see (Argo CD shows it).
    _S.UNDONE: Phase.DEGRADED,
}
_PAUSED: dict[str, RolloutState] = {
    PauseReason.PAUSE_STEP: _S.PAUSED_STEP,
    PauseReason.INCONCLUSIVE: _S.PAUSED_INCONCLUSIVE,
    PauseReason.MANUAL: _S.PAUSED_MANUAL,
}
# The states an event leads to whatever the rollout says (the others: target_state()).
_LEADS_TO: dict[Trigger, RolloutState] = {
    Trigger.SPEC_INVALID: _S.DEGRADED,
    Trigger.CONFLICT: _S.DEGRADED,
    Trigger.WRITE: _S.STEADY,  # a write is expected to land; WRITE_FAILED corrects it
    Trigger.IN_SYNC: _S.STEADY,
    Trigger.CONVERGING: _S.CONVERGING,
    Trigger.NOT_CONVERGED: _S.DEGRADED,
    Trigger.WRITE_FAILED: _S.DEGRADED,
    Trigger.WRITE_RETRYING: _S.RETRYING,
    Trigger.MODULE_REJECTED: _S.DEGRADED,
    Trigger.MODULE_UNAVAILABLE: _S.RETRYING,
    Trigger.DEADLINE_EXCEEDED: _S.DEGRADED,
    Trigger.METRICS_UNAVAILABLE: _S.HOLDING,
    Trigger.PROMOTING: _S.PROMOTING,
    Trigger.PROMOTED: _S.STEADY,
    Trigger.ROLLING_BACK: _S.ROLLING_BACK,
    Trigger.ROLLED_BACK: _S.ROLLED_BACK,
    Trigger.UNDONE: _S.UNDONE,
}

# --- the table ------------------------------------------------------------------------------

_ANY = frozenset(RolloutState)
_PAUSED_STATES = frozenset(_PAUSED.values())
_STEPS = frozenset({_S.STEPPING, _S.WAITING, _S.ANALYSING, _S.WAITING_ON_GATE})
# A canary of this revision is running (neither promoting nor rolling back).
_RUNNING = _STEPS | {_S.HOLDING} | _PAUSED_STATES
# A write or the registry failed, the spec was invalid, or a version was still converging on
# the proxies, in the middle of any state: the rollout recorded in status.rollout resumes from
# where it was once that passes.
_INTERRUPTED = frozenset({_S.RETRYING, _S.DEGRADED, _S.CONVERGING})
# A rollout starts from the stable version; a request (abort, promote-full, pause) may come with
# the very decision that starts it, so its first decision may already be any of its moves.
_STARTING = frozenset({_S.STEADY})
# A retry request restarts a rolled-back version's rollout (also while it is still rolling back).
_RETRIED = frozenset({_S.ROLLING_BACK, _S.ROLLED_BACK})

# event: (the states it is legal in, the states it may lead to)
MOVES: dict[Trigger, tuple[frozenset[RolloutState], frozenset[RolloutState]]] = {
    # Anything can be refused, fail, or find its module gone: these are legal everywhere.
    Trigger.SPEC_INVALID: (_ANY, frozenset({_S.DEGRADED})),
    Trigger.CONFLICT: (_ANY, frozenset({_S.DEGRADED})),
    Trigger.WRITE_FAILED: (_ANY, frozenset({_S.DEGRADED})),
    Trigger.MODULE_REJECTED: (_ANY, frozenset({_S.DEGRADED})),
    Trigger.DEADLINE_EXCEEDED: (_ANY, frozenset({_S.DEGRADED})),
    Trigger.WRITE_RETRYING: (_ANY, frozenset({_S.RETRYING})),
    Trigger.MODULE_UNAVAILABLE: (_ANY, frozenset({_S.RETRYING})),
    # One version everywhere: the first release, a release without a canary, or the stable
    # version asked for again (a Git revert ends any rollout).
    Trigger.WRITE: (_ANY, frozenset({_S.STEADY})),
    Trigger.IN_SYNC: (_ANY, frozenset({_S.STEADY})),
    # ...written, then confirmed by every selected proxy (core/confirmation.py): until then it
    # converges, and past the timeout (or on a proxy's fallback) it is Degraded.
    Trigger.CONVERGING: (_ANY, frozenset({_S.CONVERGING})),
    Trigger.NOT_CONVERGED: (_ANY, frozenset({_S.DEGRADED})),
    # The canary's own moves.
    Trigger.ROLLING_OUT: (_STARTING | _RUNNING | _INTERRUPTED | _RETRIED, _STEPS),
    Trigger.METRICS_UNAVAILABLE: (_STARTING | _RUNNING | _INTERRUPTED, frozenset({_S.HOLDING})),
    Trigger.PAUSED: (_STARTING | _RUNNING | _INTERRUPTED, _PAUSED_STATES),
    Trigger.PROMOTING: (
        _STARTING | _RUNNING | _INTERRUPTED | {_S.PROMOTING},
        frozenset({_S.PROMOTING}),
    ),
    Trigger.PROMOTED: (_INTERRUPTED | {_S.PROMOTING}, frozenset({_S.STEADY})),
    Trigger.ROLLING_BACK: (
        _STARTING | _RUNNING | _INTERRUPTED | {_S.ROLLING_BACK},
        frozenset({_S.ROLLING_BACK}),
    ),
    Trigger.ROLLED_BACK: (
        _STARTING | _RUNNING | _INTERRUPTED | {_S.ROLLING_BACK, _S.ROLLED_BACK},
        frozenset({_S.ROLLED_BACK}),
    ),
    # The escape hatch during an incident: from anywhere, every proxy back at once.
    Trigger.UNDONE: (_ANY, frozenset({_S.UNDONE})),
}
TRANSITIONS: dict[tuple[RolloutState, Trigger], frozenset[RolloutState]] = {
    (state, trigger): to for trigger, (legal_in, to) in MOVES.items() for state in legal_in
}


# What a Flagger webhook receiver is told the rollout is doing.
FLAGGER_PHASE: dict[Trigger, str] = {
    Trigger.ROLLING_OUT: "Progressing",
    Trigger.METRICS_UNAVAILABLE: "Progressing",
    Trigger.PAUSED: "Waiting",
    Trigger.PROMOTING: "Promoting",
    Trigger.PROMOTED: "Succeeded",
    Trigger.ROLLING_BACK: "Failed",
    Trigger.ROLLED_BACK: "Failed",
}


class IllegalTransitionError(Exception):
    pass


def transition(current: RolloutState, trigger: Trigger, to: RolloutState) -> RolloutState:
    """The move from current on trigger to `to`, if the table lists it."""
    if to not in TRANSITIONS.get((current, trigger), frozenset()):
        raise IllegalTransitionError(f"{trigger} is not allowed from {current} to {to}")
    return to


# --- the state, derived -----------------------------------------------------------------------


def target_state(
    trigger: Trigger, rollout: RolloutStatus | None, canary: Canary | None
) -> RolloutState:
    """The state a decision with this event leads to, given the rollout it recorded."""
    if trigger in _LEADS_TO:
        return _LEADS_TO[trigger]
    if trigger is Trigger.PAUSED:
        paused = rollout.paused if rollout else None
        return _PAUSED.get(paused or "", _S.PAUSED_MANUAL)
    # ROLLING_OUT: which kind of step the rollout is on.
    if rollout is None:
        return _S.STEPPING
    if rollout.gate:
        return _S.WAITING_ON_GATE
    step = canary.steps[rollout.step] if canary and rollout.step < len(canary.steps) else None
    if step is not None and step.analysis is not None:
        return _S.ANALYSING
    if step is not None and step.pause is not None:
        return _S.WAITING
    return _S.STEPPING


_REASONS = frozenset(t.value for t in Trigger)
_BY_PHASE = {
    Phase.HEALTHY: _S.STEADY,
    Phase.DEGRADED: _S.DEGRADED,
    Phase.PAUSED: _S.PAUSED_MANUAL,
    Phase.PROGRESSING: _S.STEPPING,
}


def state_of(status: FilterReleaseStatus, canary: Canary | None) -> RolloutState:
    """The state a stored status is in. Every decision records its event as the Ready
    condition's reason, so the state is the one that event led to; a status without one (or
    with a reason this table does not know) is read by its phase."""
    if status.phase is None or status.phase == Phase.PENDING:
        return _S.PENDING
    ready = status.condition(ConditionType.READY)
    reason = ready.reason if ready else None
    if reason == "Released":  # a direct release's Ready reason: one version everywhere
        return _S.STEADY
    if reason in _REASONS:
        return target_state(Trigger(reason), status.rollout, canary)
    try:
        return _BY_PHASE.get(Phase(status.phase), _S.PENDING)
    except ValueError:
        return _S.PENDING


def superseded(state: RolloutState) -> RolloutState:
    """The state a release is taken to be in when a new version replaces the one its last
    rollout was about: that rollout is over, and the new one starts from the stable version."""
    return state if state in _INTERRUPTED or state is _S.PENDING else _S.STEADY
