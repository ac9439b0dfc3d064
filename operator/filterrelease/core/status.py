"""The FilterRelease status contract: typed, written explicitly, and stable under resyncs.

Dashboards and `kubectl wait --for=condition=Ready` read this, so a condition's lastTransitionTime
changes only when its status flips, and a resync that changes nothing produces an identical status.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from filterrelease.core.analysis import MetricResult
from filterrelease.core.module import VerifiedModule
from filterrelease.core.timestamps import timestamp

ConditionStatus = Literal["True", "False", "Unknown"]


class _Model(BaseModel):
    # extra="ignore": a status written by a newer operator version must not break an older one.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MODULE_VERIFIED = "ModuleVerified"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    PROXIES_CONFIRMED = "ProxiesConfirmed"


class Condition(_Model):
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class ModuleVersion(_Model):
    """One version of the filter: everything that makes two rendered WasmPlugins differ."""

    version: str
    url: str  # as rendered into the WasmPlugin: pinned to a digest for oci://
    source_url: str | None = None  # as written in the spec
    sha256: str | None = None
    plugin_config: dict[str, Any] | None = None
    config_hash: str
    generation: int | None = None
    # The complete WasmPlugin spec of this version (the workload selector, not narrowed to a
    # track): what a rollback writes back, exactly.
    content: dict[str, Any] | None = None


class RolloutStatus(_Model):
    """The canary rollout in progress (or the last one, once it ended)."""

    revision: str  # config hash of the version being rolled out
    started_at: str
    step: int = 0  # index of the step being run; == number of steps: all done
    wave: int = 0  # with waves: index of the wave the steps run on
    waves: tuple[str, ...] | None = None  # with waves: the label values, in order
    step_started_at: str
    weight: int = 0  # share of the pods the last setWeight asked for
    canary_since: str | None = None  # when the canary pods last changed: analysis starts here
    # The proxies confirmed the step's layout (core/confirmation.py); canary_since then moved
    # to that moment, so analysis counts only traffic the canary version really served.
    proxies_confirmed: bool = False
    paused: str | None = None  # why it waits for a person: PauseStep, Inconclusive, Manual
    promoting: bool = False  # every step passed (or promote --full): the version goes to all
    aborted: str | None = None  # why it was rolled back; it stays so until the spec changes
    aborted_at: str | None = None
    analysis: tuple[MetricResult, ...] = ()  # the current analysis step's metrics
    background: tuple[MetricResult, ...] = ()  # background analysis and Wasm fast-fail
    metrics_unavailable_since: str | None = None
    gate: str | None = None  # the last gate that held the rollout, with its answer


class HistoryEntry(_Model):
    """One version that reached the proxies, newest first in status.history."""

    # Numbered in the order they reached the proxies: what `undo:N` names. None only in
    # entries an operator version before undo wrote.
    revision: int | None = None
    version: str
    config_hash: str
    outcome: str  # Released, Promoted, RolledBack, Undone
    at: str
    reason: str | None = None
    # The complete WasmPlugin spec, on the newest spec.revisionHistoryLimit good versions
    # only: what an undo puts back, exactly.
    content: dict[str, Any] | None = None


class UndoStatus(_Model):
    """Every proxy was moved back to an earlier good version by request: it runs that, not what
    the spec asks for, until the spec changes (Git stays the source of truth)."""

    revision: int  # the history revision it went back to
    version: str
    config_hash: str
    generation: int  # the spec's generation when it was asked: a new one ends the undo
    at: str


class LaggingProxy(_Model):
    """A selected proxy that does not (yet) run the version it should."""

    pod: str
    wants: str  # the version it should run
    runs: str  # what its Envoy reports instead (or why it could not be read)


class ProxiesStatus(_Model):
    """What the selected proxies were last seen running (core/proxies.py), for readers:
    `ready` is the PROXIES printer column."""

    ready: str  # "<confirmed>/<total>"
    total: int
    confirmed: int
    stable: int = 0  # confirmed on the stable track's version
    canary: int = 0  # confirmed on the canary's
    pending: int = 0  # still on the previous version, or nothing of the release yet
    fallback: int = 0  # istio-agent's deny-all/allow-all stand-in: the module did not load
    unknown: int = 0  # a version that is neither
    unreachable: int = 0  # the proxy's admin could not be read
    lagging: tuple[LaggingProxy, ...] = ()  # the first few that are not confirmed
    target: str = ""  # the layout they were checked against (confirmation.target_key)
    # When the proxies were first asked for the layout they should now run (the wait starts)
    # and when every one of them was first seen running it.
    waiting_since: str | None = None
    confirmed_at: str | None = None


class FilterReleaseStatus(_Model):
    observed_generation: int | None = None
    phase: str | None = None
    message: str | None = None
    conditions: tuple[Condition, ...] = ()
    applied: ModuleVersion | None = None
    stable: ModuleVersion | None = None
    canary: ModuleVersion | None = None
    current_step: str | None = None
    canary_weight: int | None = None
    # True while pods are split by the release's track label (see core/tracks.py); the pod
    # admission webhook labels new pods stable while it is.
    split: bool | None = None
    rollout: RolloutStatus | None = None
    # Named only while pods matter (a canary strategy or a split); None keeps the status short.
    canary_pods: tuple[str, ...] | None = None
    stable_pods: tuple[str, ...] | None = None
    history: tuple[HistoryEntry, ...] = ()
    undone: UndoStatus | None = None
    # The last pre-flight resolution: a tag stays pinned to this digest until the spec changes.
    module: VerifiedModule | None = None
    wasm_plugins: tuple[str, ...] = ()
    last_applied_time: str | None = None
    # What the selected proxies run, read from their Envoys; None while nothing was asked.
    proxies: ProxiesStatus | None = None

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def set_condition(
    conditions: tuple[Condition, ...],
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> tuple[Condition, ...]:
    """Return conditions with one condition set; its transition time moves only on a flip."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old and old.status == status else timestamp(now)
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    others = tuple(c for c in conditions if c.type != type_)
    order = {t.value: i for i, t in enumerate(ConditionType)}
    return tuple(sorted((*others, new), key=lambda c: order.get(c.type, len(order))))


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: a merge patch only adds and
    replaces, so every key `new` drops must be sent as null, at every depth of nested objects
    (a rollout's `paused` cleared, `split` turned off), or the stale value would stay."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif value != before:
            patch[key] = value
    return patch
