"""The FilterRelease status contract: typed, written explicitly, and stable under resyncs.

Dashboards and `kubectl wait --for=condition=Ready` read this, so a condition's lastTransitionTime
changes only when its status flips, and a resync that changes nothing produces an identical status.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from filterrelease.core.module import VerifiedModule

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
    # The last pre-flight resolution: a tag stays pinned to this digest until the spec changes.
    module: VerifiedModule | None = None
    wasm_plugins: tuple[str, ...] = ()
    last_applied_time: str | None = None

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
