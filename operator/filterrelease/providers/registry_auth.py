"""Pull-secret credentials and Bearer tokens for OCI registries, and keeping them out of messages.

A dockerconfigjson Secret is read the way Docker's config file is (istio-agent reads it with
Docker's own code): the entry whose key names the registry host, its `auth` (base64 of
user:password) winning over `username`/`password`. Nothing read from the Secret ever reaches an
error message: the JSON decoder is only asked where it stopped, never what it saw.

Bearer tokens (distribution's token auth spec) are cached per registry, scope and credentials
until they expire, so two pulls cost one token request. The credentials are part of the key: two
releases naming different pull secrets for one registry must each be judged by their own, or a
release without a valid secret would pass pre-flight on another namespace's token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from filterrelease.core.module import ModuleProblem, Reason

# The distribution token spec: "When omitted, this defaults to 60 seconds."
DEFAULT_TOKEN_SECONDS = 60.0
# Tokens kept at most; one per (registry, repository, secret) in use is plenty.
TOKEN_CACHE_SIZE = 256
REDACTED = "<redacted>"


class Credentials:
    """Username/password for one registry host, from a pull secret."""

    __slots__ = ("password", "username")

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def identity(self) -> str:
        """Tells credentials apart in cache keys without keeping another copy of the password."""
        return hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()

    def secrets(self) -> tuple[str, ...]:
        """Every form the password travels in: what must never appear in a message."""
        encoded = self.basic().removeprefix("Basic ")
        return tuple(s for s in (self.password, encoded) if s)

    def __repr__(self) -> str:  # a stray log of the object must not print the password
        return f"Credentials(username={self.username!r}, password={REDACTED!r})"


def _unusable(what: str) -> ModuleProblem:
    return ModuleProblem(Reason.UNAUTHORIZED, f"the pull secret's .dockerconfigjson {what}")


def auth_host(key: str) -> str:
    """The registry host a dockerconfigjson key names ("https://host/v1/" -> "host"), as
    Docker's config file matches it."""
    return re.sub(r"^https?://", "", key).split("/", 1)[0].lower()


def credentials_for(dockerconfigjson: bytes, registry: str) -> Credentials | None:
    """The credentials of a kubernetes.io/dockerconfigjson Secret for the registry host, None
    when it has no entry for it. A malformed Secret is Unauthorized, with a message that
    quotes nothing of its content."""
    try:
        text = dockerconfigjson.decode("utf-8")
    except UnicodeDecodeError:
        raise _unusable("is not UTF-8 text") from None  # the error quotes the bad byte
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise _unusable(f"is not valid JSON (line {err.lineno}, column {err.colno})") from None
    if not isinstance(config, dict):
        raise _unusable("is not a JSON object")
    auths = config.get("auths", {})
    if not isinstance(auths, dict):
        raise _unusable('has an "auths" that is not an object')
    for key, entry in auths.items():
        if auth_host(key) != registry.lower():
            continue
        if not isinstance(entry, dict):
            raise _unusable(f"has an entry for {registry} that is not an object")
        return _entry_credentials(entry, registry)
    return None


def _entry_credentials(entry: Mapping[str, object], registry: str) -> Credentials | None:
    auth = entry.get("auth")
    if auth:
        # Docker decodes `auth` over username/password when both are given; so do the proxies.
        if not isinstance(auth, str):
            raise _unusable(f'has an "auth" for {registry} that is not a string')
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            raise _unusable(f'has an "auth" for {registry} that is not base64 text') from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise _unusable(f'has an "auth" for {registry} that is not base64 of user:password')
        return Credentials(username, password)
    user = entry.get("username")
    secret = entry.get("password", "")
    if user is None:
        return None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise _unusable(f"has a username or password for {registry} that is not a string")
    return Credentials(user, secret)


@dataclass(frozen=True)
class Challenge:
    """A WWW-Authenticate challenge: its scheme (lowercase) and parameters."""

    scheme: str
    params: Mapping[str, str]


_PARAM = re.compile(r'([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a WWW-Authenticate value, or None when there is none."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {
        key.lower(): re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
        for key, quoted, bare in _PARAM.findall(rest)
    }
    return Challenge(scheme.lower(), params)


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the client's clock


class TokenAnswerError(Exception):
    """The token endpoint's 200 answer holds no usable token (the answer is not quoted)."""


def parse_token_answer(body: bytes, requested_at: float) -> Token:
    """A token and when it expires on our clock, from the token endpoint's JSON.

    The token lives `expires_in` seconds (60 when omitted) from `issued_at`, or from when we
    asked when the answer has no issued_at. An issued_at later than our request is the token
    server's clock running ahead of ours, so our own time is used; an earlier one (a token
    handed out again) shortens the life. A token that expires early only costs a new request:
    a registry refusing it is answered by fetching another.
    """
    try:
        answer = json.loads(body)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise TokenAnswerError("not JSON") from None
    if not isinstance(answer, dict):
        raise TokenAnswerError("not a JSON object")
    value = answer.get("token") or answer.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenAnswerError("no token in it")
    lifetime = answer.get("expires_in")
    seconds = (
        float(lifetime)
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0
        else DEFAULT_TOKEN_SECONDS
    )
    issued = _timestamp(answer.get("issued_at"))
    start = min(requested_at, issued) if issued is not None else requested_at
    return Token(value, start + seconds)


def _timestamp(value: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, None when absent or not one."""
    if not isinstance(value, str):
        return None
    # Go writes nanoseconds; Python 3.11 parses up to microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


TokenKey = tuple[str, str, str]  # (registry, scope, credentials identity or "")


class TokenCache:
    """Bearer tokens by (registry, scope, credentials), each until it expires on `clock`.

    Thread-safe: pre-flights of several releases run in worker threads at once.
    """

    def __init__(self, clock: Callable[[], float], capacity: int = TOKEN_CACHE_SIZE) -> None:
        self._clock = clock
        self._capacity = capacity
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if self._clock() >= token.expires_at:
                del self._tokens[key]
                return None
            return token.value

    def put(self, key: TokenKey, token: Token) -> None:
        with self._lock:
            self._tokens.pop(key, None)
            self._tokens[key] = token
            now = self._clock()
            for stale in [k for k, t in self._tokens.items() if now >= t.expires_at]:
                del self._tokens[stale]
            while len(self._tokens) > self._capacity:  # the oldest insertion goes first
                del self._tokens[next(iter(self._tokens))]

    def discard(self, key: TokenKey, value: str) -> None:
        """Forget the token the registry refused (unless another thread replaced it)."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.value == value:
                del self._tokens[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Text from a server (an error body) with every secret we sent it replaced: a registry
    or token endpoint may echo the request into its error."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
