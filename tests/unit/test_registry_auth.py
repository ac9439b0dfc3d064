"""Pull-secret parsing, Bearer challenges and token lifetimes (providers/registry_auth.py), pure.

Every malformed Secret is refused with a message that quotes none of its content: the password
below is planted in each one and searched for in the message."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from filterrelease.core.module import ModuleProblem, Reason
from filterrelease.providers.registry_auth import (
    DEFAULT_TOKEN_SECONDS,
    REDACTED,
    Challenge,
    Credentials,
    Token,
    TokenAnswerError,
    TokenCache,
    auth_host,
    credentials_for,
    parse_challenge,
    parse_token_answer,
    scrub,
)

PASSWORD = "s3cr3t-Pa55word"
REGISTRY = "registry.example.com:5000"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def config(entry: object, key: str = REGISTRY) -> bytes:
    return json.dumps({"auths": {key: entry}}).encode()


# -- dockerconfigjson -------------------------------------------------------------------------


def test_username_and_password_entry() -> None:
    creds = credentials_for(config({"username": "robot", "password": PASSWORD}), REGISTRY)
    assert creds is not None
    assert (creds.username, creds.password) == ("robot", PASSWORD)


def test_auth_field_wins_over_username_and_password_as_in_docker() -> None:
    entry = {"username": "stale", "password": "stale", "auth": b64(f"robot:{PASSWORD}")}
    creds = credentials_for(config(entry), REGISTRY)
    assert creds is not None
    assert (creds.username, creds.password) == ("robot", PASSWORD)


def test_password_may_hold_colons() -> None:
    creds = credentials_for(config({"auth": b64("robot:a:b:c")}), REGISTRY)
    assert creds is not None
    assert creds.password == "a:b:c"


@pytest.mark.parametrize(
    "key", [REGISTRY, f"https://{REGISTRY}", f"http://{REGISTRY}/v1/", REGISTRY.upper()]
)
def test_keys_match_the_host_as_docker_does(key: str) -> None:
    assert auth_host(key) == REGISTRY
    assert credentials_for(config({"auth": b64(f"u:{PASSWORD}")}, key), REGISTRY) is not None


@pytest.mark.parametrize(
    "data",
    [
        config({"auth": b64("u:p")}, "other.example.com"),
        config({"auth": b64("u:p")}, "registry.example.com"),  # another port is another host
        json.dumps({"auths": {}}).encode(),
        json.dumps({"credHelpers": {}}).encode(),  # no auths at all
        config({"email": "x@example.com"}),  # an entry with nothing to authenticate with
    ],
)
def test_no_entry_for_the_registry_is_none(data: bytes) -> None:
    assert credentials_for(data, REGISTRY) is None


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"auths": {"' + REGISTRY.encode() + b'": {"password": "' + PASSWORD.encode() + b'"',
         "not valid JSON (line 1, column"),
        (b'{"auths": ' + PASSWORD.encode() + b"}", "not valid JSON"),
        (PASSWORD.encode() + b"\xff\xfe", "not UTF-8"),
        (json.dumps([PASSWORD]).encode(), "not a JSON object"),
        (json.dumps({"auths": [PASSWORD]}).encode(), '"auths" that is not an object'),
        (config(PASSWORD), "is not an object"),
        (config({"auth": PASSWORD + "!"}), "not base64"),
        (config({"auth": b64(PASSWORD)}), "not base64 of user:password"),
        (config({"auth": b64(b"user:\xff" + PASSWORD.encode())}), "not base64 text"),
        (config({"auth": 42, "password": PASSWORD}), "not a string"),
        (config({"username": 7, "password": PASSWORD}), "not a string"),
    ],
)  # fmt: skip
def test_malformed_secret_is_unauthorized_and_quotes_nothing(data: bytes, says: str) -> None:
    with pytest.raises(ModuleProblem) as caught:
        credentials_for(data, REGISTRY)
    problem = caught.value
    assert problem.reason == Reason.UNAUTHORIZED
    assert says in problem.message
    for text in (problem.message, str(problem), repr(problem)):
        assert PASSWORD not in text
        assert b64(PASSWORD)[:12] not in text
    # Nothing chained either: a logged traceback would print the cause's message.
    assert problem.__cause__ is None
    assert problem.__context__ is None or problem.__suppress_context__


def test_credentials_never_print_the_password() -> None:
    creds = Credentials("robot", PASSWORD)
    assert PASSWORD not in repr(creds)
    assert PASSWORD not in str(creds)
    assert creds.basic() == "Basic " + b64(f"robot:{PASSWORD}")
    assert set(creds.secrets()) == {PASSWORD, b64(f"robot:{PASSWORD}")}
    assert PASSWORD not in creds.identity()
    assert creds.identity() == Credentials("robot", PASSWORD).identity()
    assert creds.identity() != Credentials("robot", PASSWORD + "x").identity()
    assert creds.identity() != Credentials("robot2", PASSWORD).identity()


def test_scrub_replaces_every_secret_longest_first() -> None:
    creds = Credentials("robot", PASSWORD)
    echoed = f'{{"received": "{creds.basic()}", "password": "{PASSWORD}"}}'
    cleaned = scrub(echoed, [*creds.secrets(), ""])
    assert PASSWORD not in cleaned
    assert b64(f"robot:{PASSWORD}") not in cleaned
    assert cleaned == f'{{"received": "Basic {REDACTED}", "password": "{REDACTED}"}}'


# -- challenges -------------------------------------------------------------------------------


def test_bearer_challenge_of_distribution() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/filter:pull",error="invalid_token"'
    )
    assert parse_challenge(header) == Challenge(
        "bearer",
        {
            "realm": "https://auth.example.com/token",
            "service": "registry.example.com",
            "scope": "repository:team/filter:pull",
            "error": "invalid_token",
        },
    )


def test_challenge_with_bare_and_escaped_values() -> None:
    challenge = parse_challenge('Basic realm=registry, charset="UTF-8", note="a \\"b\\""')
    assert challenge == Challenge(
        "basic", {"realm": "registry", "charset": "UTF-8", "note": 'a "b"'}
    )


def test_no_challenge() -> None:
    assert parse_challenge("") is None
    assert parse_challenge("   ") is None


# -- tokens -----------------------------------------------------------------------------------


def test_token_lives_expires_in_from_the_request() -> None:
    token = parse_token_answer(json.dumps({"token": "t1", "expires_in": 300}).encode(), 1000.0)
    assert token == Token("t1", 1300.0)


def test_token_without_expires_in_lives_the_spec_default() -> None:
    assert parse_token_answer(b'{"token": "t1"}', 1000.0).expires_at == 1000.0 + 60
    assert DEFAULT_TOKEN_SECONDS == 60
    for nonsense in (0, -5, "300", True, None):
        body = json.dumps({"token": "t1", "expires_in": nonsense}).encode()
        assert parse_token_answer(body, 1000.0).expires_at == 1060.0


def test_access_token_is_accepted_as_docker_hub_and_oauth_answer() -> None:
    assert parse_token_answer(b'{"access_token": "a1"}', 0.0).value == "a1"
    assert parse_token_answer(b'{"token": "", "access_token": "a1"}', 0.0).value == "a1"


def test_issued_at_earlier_than_the_request_shortens_the_life() -> None:
    issued = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    body = json.dumps(
        {"token": "t", "expires_in": 300, "issued_at": "2030-01-01T12:00:00.123456789Z"}
    ).encode()
    token = parse_token_answer(body, issued + 100)
    assert token.expires_at == pytest.approx(issued + 0.123456 + 300)


def test_issued_at_in_our_future_is_a_clock_skew_and_ignored() -> None:
    body = json.dumps({"token": "t", "expires_in": 300, "issued_at": "2030-01-01T12:00:00Z"})
    assert parse_token_answer(body.encode(), 1000.0).expires_at == 1300.0


@pytest.mark.parametrize("issued_at", ["yesterday", "2030-01-01T12:00:00", 12345, ""])
def test_unusable_issued_at_is_ignored(issued_at: object) -> None:
    body = json.dumps({"token": "t", "expires_in": 10, "issued_at": issued_at}).encode()
    assert parse_token_answer(body, 50.0).expires_at == 60.0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>" + PASSWORD.encode(),
        b"\xff" + PASSWORD.encode(),
        json.dumps([PASSWORD]).encode(),
        json.dumps({"details": PASSWORD}).encode(),
        json.dumps({"token": 42}).encode(),
    ],
)
def test_answer_without_a_token_is_an_error_that_quotes_nothing(body: bytes) -> None:
    with pytest.raises(TokenAnswerError) as caught:
        parse_token_answer(body, 0.0)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


KEY = ("registry.example.com", "repository:team/filter:pull", "id-1")


def test_cache_returns_a_token_until_it_expires() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    cache.put(KEY, Token("t1", 1060.0))
    assert cache.get(KEY) == "t1"
    clock.now = 1059.9
    assert cache.get(KEY) == "t1"
    clock.now = 1060.0
    assert cache.get(KEY) is None
    assert len(cache) == 0


def test_cache_keys_by_registry_scope_and_credentials() -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, Token("t1", 2000.0))
    registry, scope, identity = KEY
    assert cache.get((registry, scope, "id-2")) is None  # another pull secret
    assert cache.get((registry, scope, "")) is None  # anonymous
    assert cache.get((registry, "repository:team/other:pull", identity)) is None
    assert cache.get(("other.example.com", scope, identity)) is None
    assert cache.get(KEY) == "t1"


def test_discard_drops_only_the_refused_token() -> None:
    cache = TokenCache(Clock())
    cache.put(KEY, Token("t2", 2000.0))
    cache.discard(KEY, "t1")  # another thread already replaced the refused one
    assert cache.get(KEY) == "t2"
    cache.discard(KEY, "t2")
    assert cache.get(KEY) is None


def test_cache_is_bounded_and_drops_expired_and_oldest_first() -> None:
    clock = Clock()
    cache = TokenCache(clock, capacity=3)
    cache.put(("r", "expired", ""), Token("old", 1001.0))
    clock.now = 1002.0
    for i in range(4):
        cache.put(("r", f"s{i}", ""), Token(f"t{i}", 5000.0))
    assert len(cache) == 3
    assert cache.get(("r", "expired", "")) is None
    assert cache.get(("r", "s0", "")) is None
    assert [cache.get(("r", f"s{i}", "")) for i in (1, 2, 3)] == ["t1", "t2", "t3"]
