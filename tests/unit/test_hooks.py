"""Canary webhooks: Flagger's spec shape, Flagger's payloads byte for byte, what answers mean."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from filterrelease.core.hooks import (
    GATES,
    Event,
    GateResult,
    HookType,
    Subject,
    Webhook,
    Webhooks,
    combine,
    of_type,
    payload,
    unix_millis,
)

SUBJECT = Subject(
    name="security-headers", namespace="shop", phase="Progressing", checksum="5f7c9d8b6d"
)
# 2026-03-01T12:00:00.123456Z: the microseconds must be cut, not rounded, as Go's UnixNano/1e6.
WHEN = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
WHEN_MS = "1772366400123"

# The webhooks of Flagger's documentation, minus the types we refuse: they must parse as written.
FLAGGER_DOC_HOOKS: list[dict[str, Any]] = [
    {
        "name": "helm test",
        "type": "pre-rollout",
        "url": "http://flagger-helmtester.flagger/",
        "timeout": "3m",
        "metadata": {"type": "helmv3", "cmd": "test podinfo -n test"},
    },
    {"name": "promotion gate", "type": "confirm-promotion", "url": "http://flagger-loadtester.test/gate/approve"},
    {"name": "rollback gate", "type": "rollback", "url": "http://flagger-loadtester.test/rollback/check"},
    {"name": "send to Slack", "type": "event", "url": "http://event-recevier.notifications/slack"},
]  # fmt: skip


def hook(**fields: Any) -> Webhook:
    raw = {"name": "h", "type": "pre-rollout", "url": "http://receiver.test/"} | fields
    return Webhook.model_validate(raw)


def problem(**fields: Any) -> str:
    with pytest.raises(ValidationError) as err:
        hook(**fields)
    return str(err.value)


# -- the spec ------------------------------------------------------------------------------------


def test_flagger_documented_hooks_parse_with_flagger_defaults() -> None:
    hooks = TypeAdapter(Webhooks).validate_python(FLAGGER_DOC_HOOKS)
    assert [h.type for h in hooks] == [
        HookType.PRE_ROLLOUT,
        HookType.CONFIRM_PROMOTION,
        HookType.ROLLBACK,
        HookType.EVENT,
    ]
    assert hooks[0].timeout_seconds == 180.0
    assert (hooks[1].timeout, hooks[1].timeout_seconds, hooks[1].metadata) == ("10s", 10.0, {})
    assert [h.name for h in of_type(hooks, HookType.EVENT)] == ["send to Slack"]


@pytest.mark.parametrize(
    ("flagger_type", "hint"),
    [
        ("confirm-rollout", "use pre-rollout"),
        ("rollout", "analysed on the selected pods' own traffic"),
        ("post-rollout", "use an event hook"),
        ("confirm-traffic-increase", "pause step without a duration"),
    ],
)
def test_flagger_types_we_do_not_run_are_refused_with_a_reason(
    flagger_type: str, hint: str
) -> None:
    assert hint in problem(type=flagger_type)


def test_type_is_required_because_flaggers_default_is_a_type_we_refuse() -> None:
    with pytest.raises(ValidationError, match="type"):
        Webhook.model_validate({"name": "load-test", "url": "http://flagger-loadtester.test/"})


def test_unknown_type_lists_the_known_ones() -> None:
    assert "'confirm-promotion'" in problem(type="pre-promotion")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://receiver.test/",
        "http://",
        "https:///path",
        "http://:8080/",
        "http://receiver.test:http/",
        "http://user@/",
        "receiver.test/hook",
        "http://a b/",
        "http://receiver.test/a b",
        "",
    ],
)
def test_url_must_be_http_or_https_with_a_host(url: str) -> None:
    assert "url" in problem(url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://receiver.test",
        "https://receiver.test:8443/gate/check?release=a#x",
        "http://10.0.0.1:8080/",
        "http://[::1]:8080/",
        "https://user:pass@hooks.test/",
    ],
)
def test_url_accepts_what_flagger_users_write(url: str) -> None:
    assert hook(url=url).url == url


@pytest.mark.parametrize(
    ("timeout", "seconds"), [("250ms", 0.25), ("1m30s", 90.0), ("15m", 900.0), ("1ms", 0.001)]
)
def test_timeout_is_a_go_duration(timeout: str, seconds: float) -> None:
    assert hook(timeout=timeout).timeout_seconds == seconds


@pytest.mark.parametrize("timeout", ["0s", "0ms", "15m1s", "1h", "1.5s", "10", "-1s", "10 s"])
def test_timeout_must_be_positive_bounded_and_well_formed(timeout: str) -> None:
    assert "timeout" in problem(timeout=timeout)


def test_event_hooks_may_not_set_the_keys_the_operator_fills_in() -> None:
    msg = problem(type="event", metadata={"eventType": "x", "timestamp": "0", "channel": "#a"})
    assert "eventType, timestamp" in msg
    # A gate receives its metadata as written: Flagger gives these keys no meaning there.
    assert hook(metadata={"eventType": "x"}).metadata == {"eventType": "x"}


@pytest.mark.parametrize(
    "field", [{"retries": 3}, {"disableTLS": True}, {"muteAlert": True}, {"headers": {}}]
)
def test_fields_we_do_not_implement_are_errors_not_ignored(field: dict[str, Any]) -> None:
    assert "Extra inputs are not permitted" in problem(**field)


def test_metadata_values_are_strings_as_in_flagger() -> None:
    assert "metadata" in problem(metadata={"clone": 100})


def test_metadata_is_bounded_as_in_the_crd() -> None:
    assert "metadata" in problem(metadata={f"k{i}": "v" for i in range(65)})
    assert "metadata" in problem(metadata={"cmd": "x" * 4097})
    assert len(hook(metadata={f"k{i}": "x" * 4096 for i in range(64)}).metadata) == 64


def test_names_are_unique() -> None:
    twice = [FLAGGER_DOC_HOOKS[0], FLAGGER_DOC_HOOKS[0]]
    with pytest.raises(ValidationError, match="'helm test' is used twice"):
        TypeAdapter(Webhooks).validate_python(twice)


def test_webhooks_are_frozen() -> None:
    with pytest.raises(ValidationError):
        hook().name = "other"  # type: ignore[misc]


# -- payloads ------------------------------------------------------------------------------------


def test_gate_payload_is_flaggers_with_the_hooks_metadata() -> None:
    gate = hook(metadata={"type": "helmv3", "cmd": "test podinfo -n test"})
    body = payload(gate, SUBJECT)
    assert body == {
        "name": "security-headers",
        "namespace": "shop",
        "phase": "Progressing",
        "checksum": "5f7c9d8b6d",
        "metadata": {"type": "helmv3", "cmd": "test podinfo -n test"},
    }
    # Field order as Go marshals CanaryWebhookPayload, for receivers that compare raw bodies.
    assert json.dumps(body, separators=(",", ":")) == (
        '{"name":"security-headers","namespace":"shop","phase":"Progressing",'
        '"checksum":"5f7c9d8b6d","metadata":{"type":"helmv3","cmd":"test podinfo -n test"}}'
    )


def test_gate_payload_without_metadata_has_no_metadata_key() -> None:
    # Go's omitempty drops an empty map: flagger-loadtester's gates read only name and namespace.
    assert payload(hook(), SUBJECT) == {
        "name": "security-headers",
        "namespace": "shop",
        "phase": "Progressing",
        "checksum": "5f7c9d8b6d",
    }


def test_event_payload_carries_the_event_in_metadata_then_the_hooks_own() -> None:
    slack = hook(type="event", metadata={"channel": "#releases"})
    event = Event(
        message="Advance security-headers.shop canary weight 25", type="Normal", time=WHEN
    )
    failed = SUBJECT.model_copy(update={"phase": "Failed"})
    body = payload(slack, failed, event)
    assert body == {
        "name": "security-headers",
        "namespace": "shop",
        "phase": "Failed",
        "checksum": "5f7c9d8b6d",
        "metadata": {
            "eventMessage": "Advance security-headers.shop canary weight 25",
            "eventType": "Normal",
            "timestamp": WHEN_MS,
            "channel": "#releases",
        },
    }


def test_event_payload_without_hook_metadata_still_has_the_event() -> None:
    event = Event(message="Canary failed", type="Warning", time=WHEN)
    body = payload(hook(type="event"), SUBJECT, event)
    assert body["metadata"] == {
        "eventMessage": "Canary failed",
        "eventType": "Warning",
        "timestamp": WHEN_MS,
    }


@pytest.mark.parametrize(
    ("when", "millis"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (WHEN, int(WHEN_MS)),
        (WHEN.astimezone(timezone(timedelta(hours=-5))), int(WHEN_MS)),
        (datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=UTC), 1772366400999),
    ],
)
def test_timestamp_is_whole_milliseconds_since_the_epoch(when: datetime, millis: int) -> None:
    assert unix_millis(when) == millis


def test_event_time_must_be_zone_aware() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        Event(message="m", type="Normal", time=datetime(2026, 3, 1))


def test_event_goes_to_event_hooks_and_only_to_them() -> None:
    event = Event(message="m", type="Normal", time=WHEN)
    with pytest.raises(ValueError, match="only for them"):
        payload(hook(), SUBJECT, event)
    with pytest.raises(ValueError, match="required for event hooks"):
        payload(hook(type="event"), SUBJECT)


# -- what answers mean ---------------------------------------------------------------------------

OK = GateResult(passed=True, message="a: HTTP 200 OK")
NO = GateResult(passed=False, message="b: HTTP 403 Forbidden: closed")
DOWN = GateResult(passed=False, message="c: connection refused")
PRE, PROMOTION, ROLLBACK = HookType.PRE_ROLLOUT, HookType.CONFIRM_PROMOTION, HookType.ROLLBACK


@pytest.mark.parametrize(
    ("hook_type", "results", "passed", "message"),
    [
        (PRE, [], True, "no pre-rollout hooks"),
        (PRE, [OK, OK], True, "all 2 pre-rollout hooks passed"),
        (PRE, [OK, NO, DOWN], False, f"{NO.message}; {DOWN.message}"),
        (PROMOTION, [NO], False, NO.message),
        (PROMOTION, [OK], True, "all 1 confirm-promotion hooks passed"),
        (ROLLBACK, [], False, "no rollback requested"),
        (ROLLBACK, [NO, DOWN], False, "no rollback requested"),
        (ROLLBACK, [NO, OK], True, f"rollback requested: {OK.message}"),
    ],
)
def test_combine(
    hook_type: HookType, results: list[GateResult], passed: bool, message: str
) -> None:
    assert combine(hook_type, results) == GateResult(passed=passed, message=message)


@given(st.lists(st.booleans(), max_size=6))
def test_gates_need_all_rollback_needs_one(answers: list[bool]) -> None:
    results = [GateResult(passed=a, message=str(i)) for i, a in enumerate(answers)]
    for gate_type in GATES:
        assert combine(gate_type, results).passed is all(answers)
    assert combine(HookType.ROLLBACK, results).passed is any(answers)


def test_every_type_is_a_gate_a_rollback_trigger_or_an_event() -> None:
    assert set(HookType) - GATES == {HookType.ROLLBACK, HookType.EVENT}


def test_events_are_not_gates() -> None:
    with pytest.raises(ValueError, match="not gates"):
        combine(HookType.EVENT, [OK])
