"""Canary webhooks the way Flagger calls them: the spec of a hook, the JSON it is sent, and what
the answers of a set of hooks mean. Pure: no network, no clock (an event's time is an input).

Compatibility with Flagger is the point: a receiver written for Flagger (flagger-loadtester's
/gate/* and /rollback/* endpoints, a Slack or Teams bridge fed by event hooks) must work unchanged.
So the payload has Flagger's field names and order (name, namespace, phase, checksum, metadata),
an event hook gets Flagger's eventMessage/eventType/timestamp metadata, and a hook passes only on
HTTP 200, 201 or 202 — Flagger's rule (its client fails anything above 202), not "any 2xx".

Types (what the rollout does with the answers is core/canary.py's; this is the contract):

  pre-rollout        asked before the first canary pod moves; until every one passes, the rollout
                     waits and asks again (nothing has moved yet, so a "no" never rolls back)
  confirm-promotion  asked after the last step; until every one passes, the release waits there
  rollback           asked while the canary runs; one pass (200-202) rolls the release back
  event              told about every event of the rollout; answers are logged, never acted on

Flagger's other types are refused with a reason and what to use instead (UNSUPPORTED) rather
than accepted and ignored. Flagger defaults a missing type to "rollout"; here the type is
required, so a copied load-test hook fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from filterrelease.core.duration import format_duration, parse_duration

DEFAULT_TIMEOUT = "10s"  # Flagger's default
# A gate holds its release's reconcile while it waits: a cap keeps a typo ("10h") from stalling
# a rollout for hours. Flagger's own examples go up to 5m (helm and bats tests).
MAX_TIMEOUT = timedelta(minutes=15)
# Flagger fills these in for event hooks and lets them win over the hook's own metadata; here a
# hook that sets them is refused, so nothing the user wrote is silently dropped.
EVENT_KEYS = ("eventMessage", "eventType", "timestamp")
# http(s), optional user:password@, a host name or [IPv6], an optional numeric port, then no
# whitespace. Finer checks (port range, IDNA) are left to the HTTP client, which reports them as
# a failed call. The CRD carries the same expression as a CEL rule.
URL_PATTERN = (
    r"^https?://([^\s/?#@]*@)?(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(:[0-9]{1,5})?([/?#]\S*)?$"
)
_URL = re.compile(URL_PATTERN)
_DURATION = r"^([0-9]+(ms|s|m|h))+$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class HookType(StrEnum):
    PRE_ROLLOUT = "pre-rollout"
    CONFIRM_PROMOTION = "confirm-promotion"
    ROLLBACK = "rollback"
    EVENT = "event"


# Hooks whose answers gate a step: every one of them must pass.
GATES = frozenset({HookType.PRE_ROLLOUT, HookType.CONFIRM_PROMOTION})

UNSUPPORTED = {
    "confirm-rollout": "use pre-rollout: it is asked at the same point (before the first canary "
    "pod moves) and, like Flagger's confirm-rollout, holds the rollout until it passes",
    "rollout": "Flagger's rollout hooks (load tests on every analysis iteration) are not "
    "supported: a filter canary is analysed on the selected pods' own traffic",
    "post-rollout": "post-rollout hooks are not supported: use an event hook, which is told "
    "the final phase (Succeeded or Failed)",
    "confirm-traffic-increase": "confirm-traffic-increase hooks are not supported: use a pause "
    "step without a duration, which waits until the release is promoted by hand",
}


class Webhook(_Model):
    """One entry of spec.strategy.canary.webhooks (Flagger's CanaryWebhook, minus what we lack)."""

    name: str = Field(min_length=1, max_length=253)
    type: HookType
    url: str = Field(min_length=1, max_length=2048)
    timeout: str = Field(default=DEFAULT_TIMEOUT, pattern=_DURATION)
    # Bounded like the CRD, whose CEL rules need bounds to fit the API server's cost budget.
    metadata: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=64
    )

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: object) -> object:
        # Before pydantic's enum check, so a Flagger type we chose not to support says why.
        if isinstance(value, str) and value in UNSUPPORTED:
            raise ValueError(UNSUPPORTED[value])
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not _URL.match(value):
            raise ValueError("url must be http:// or https:// followed by a host")
        return value

    @model_validator(mode="after")
    def _rules(self) -> Webhook:
        seconds = parse_duration(self.timeout)
        if not timedelta(0) < seconds <= MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be more than 0s and at most {format_duration(MAX_TIMEOUT)}"
            )
        if self.type is HookType.EVENT and (taken := sorted(set(EVENT_KEYS) & set(self.metadata))):
            raise ValueError(
                f"metadata keys {', '.join(taken)} are filled in by the operator for event hooks"
            )
        return self

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout).total_seconds()


def _unique_names(hooks: tuple[Webhook, ...]) -> tuple[Webhook, ...]:
    seen: set[str] = set()
    for hook in hooks:
        if hook.name in seen:
            raise ValueError(f"webhook name {hook.name!r} is used twice; names must be unique")
        seen.add(hook.name)
    return hooks


# The type of spec.strategy.canary.webhooks: names are unique because events and status messages
# name a hook, and the CRD lists them as a map keyed by name.
Webhooks = Annotated[tuple[Webhook, ...], AfterValidator(_unique_names)]


def of_type(webhooks: Iterable[Webhook], hook_type: HookType) -> tuple[Webhook, ...]:
    """The hooks of one type, in spec order."""
    return tuple(w for w in webhooks if w.type is hook_type)


class Subject(BaseModel):
    """What a call is about: the release, where its rollout stands, and which version it rolls.

    phase: Flagger receivers know Initialized, Waiting, Progressing, WaitingPromotion, Promoting,
    Finalising, Succeeded and Failed. Flagger sends "Progressing" to pre-rollout and
    confirm-promotion hooks whatever the phase, and the current phase to the others.
    checksum: identifies the version being rolled out (Flagger hashes the canary's spec and
    configs), so a receiver can tell two rollouts of one release apart.
    """

    model_config = ConfigDict(frozen=True)
    name: str
    namespace: str
    phase: str
    checksum: str


class Event(BaseModel):
    """One event of a rollout, as an event hook is told about it (Kubernetes event types)."""

    model_config = ConfigDict(frozen=True)
    message: str
    type: Literal["Normal", "Warning"]
    time: datetime

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("event time must carry a time zone")
        return value


def unix_millis(t: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding), as Flagger's timestamp."""
    return (t - _EPOCH) // timedelta(milliseconds=1)


def payload(webhook: Webhook, subject: Subject, event: Event | None = None) -> dict[str, Any]:
    """The JSON body Flagger would POST to this hook (CanaryWebhookPayload, same field order).

    Event hooks need the event and get its message, type and time in metadata, the hook's own
    metadata after it; every other hook gets its metadata as written, and no metadata key at all
    when it has none (Flagger's omitempty).
    """
    if (webhook.type is HookType.EVENT) != (event is not None):
        raise ValueError("an event is required for event hooks and only for them")
    body: dict[str, Any] = {
        "name": subject.name,
        "namespace": subject.namespace,
        "phase": subject.phase,
        "checksum": subject.checksum,
    }
    if event is not None:
        metadata = {
            "eventMessage": event.message,
            "eventType": event.type,
            "timestamp": str(unix_millis(event.time)),
        }
        # The event's keys win, as in Flagger (Webhook refuses hooks that set them anyway).
        metadata.update((k, v) for k, v in webhook.metadata.items() if k not in metadata)
        body["metadata"] = metadata
    elif webhook.metadata:
        body["metadata"] = dict(webhook.metadata)
    return body


class GateResult(BaseModel):
    """The answer of one hook, or of a set of hooks of one type (combine()).

    passed is Flagger's notion: the hook answered 200-202. For a rollback hook that means
    "roll back now".
    """

    model_config = ConfigDict(frozen=True)
    passed: bool
    message: str = ""


def combine(hook_type: HookType, results: Sequence[GateResult]) -> GateResult:
    """What the answers of all hooks of one type mean together.

    Gates pass when every hook passed, so no hooks at all is a pass; the message names each hook
    that did not. Rollback hooks pass when any one passed (one voice is enough to stop a
    rollout, as in Flagger), so no hooks at all is no rollback.
    """
    if hook_type is HookType.EVENT:
        raise ValueError("event hooks are notifications, not gates")
    if hook_type is HookType.ROLLBACK:
        asked = [r.message for r in results if r.passed]
        if asked:
            return GateResult(passed=True, message="rollback requested: " + "; ".join(asked))
        return GateResult(passed=False, message="no rollback requested")
    refused = [r.message for r in results if not r.passed]
    if refused:
        return GateResult(passed=False, message="; ".join(refused))
    if not results:
        return GateResult(passed=True, message=f"no {hook_type} hooks")
    return GateResult(passed=True, message=f"all {len(results)} {hook_type} hooks passed")
