"""Calling one canary webhook: POST the payload as JSON, read the answer, say what it was.

http.client in a worker thread, so a slow receiver never blocks the event loop. Every expected
failure (refused, unresolvable, TLS, timeout, a malformed answer, any status but 200-202) comes
back as GateResult(passed=False) with a message a person can act on; nothing is raised for them.
Messages name the hook, never its URL: a URL may carry a secret (a Slack hook's path is its key),
and messages end up in events and status that anyone who can read the release can see.

Redirects are not followed: Go (Flagger) would turn a redirected POST into a GET without the
payload, so a receiver that depends on one was never working; the message says where it points.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from filterrelease.core.hooks import GateResult, Webhook

# Flagger's client fails every status above 202 (and 1xx never reaches the caller).
PASSING = range(200, 203)
# Enough of a refusal's body to explain it ("gate closed", a test's failure line) in a message.
EXCERPT_BYTES = 4096
EXCERPT_CHARS = 200
# The worker thread stops at the hook's timeout by itself; this much extra lets it report its
# own, more precise failure before the event loop gives up on it.
SLACK_SECONDS = 1.0
USER_AGENT = "filterrelease-webhook"


class _Answer:
    def __init__(self, status: int, reason: str, excerpt: str, location: str | None) -> None:
        self.status = status
        self.reason = reason
        self.excerpt = excerpt
        self.location = location


class _Deadline:
    """One deadline for the whole exchange: socket timeouts are per operation, so each one is
    given what is left, and a receiver that trickles its answer cannot stretch the call."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining


def _excerpt(raw: bytes) -> str:
    text = re.sub(r"\s+", " ", raw.decode("utf-8", errors="replace")).strip()
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _post(url: str, body: bytes, timeout: float) -> _Answer:
    """The blocking exchange; raises OSError (incl. TimeoutError), HTTPException or ValueError."""
    deadline = _Deadline(timeout)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError("no host")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if parts.username is not None:
        # Go's client turns user:password@ into Basic auth; receivers behind it keep working.
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=body, headers=headers)
        if conn.sock is not None:
            conn.sock.settimeout(deadline.left())
        response = conn.getresponse()
        raw = b""
        while len(raw) < EXCERPT_BYTES:
            if conn.sock is not None:
                conn.sock.settimeout(deadline.left())
            chunk = response.read1(EXCERPT_BYTES - len(raw))
            if not chunk:
                break
            raw += chunk
        return _Answer(
            response.status, response.reason, _excerpt(raw), response.getheader("Location")
        )
    finally:
        conn.close()


def _failure(exc: BaseException, timeout: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return f"TLS failed: {detail}"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer: {type(exc).__name__} {exc}".rstrip()
    if isinstance(exc, ValueError):
        # Its text may quote the URL, which may hold a secret: say what, not where.
        return "the URL cannot be requested (its host, port or characters)"
    return f"{type(exc).__name__}: {exc}"


def _origin(location: str | None) -> str:
    # Only scheme and host: paths and queries carry secrets (a Slack hook's path is its key).
    parts = urllib.parse.urlsplit(location or "")
    if parts.scheme and parts.hostname:
        return f"{parts.scheme}://{parts.hostname}/…"
    return "another path on the same host" if location else "nowhere"


def _judge(webhook: Webhook, answer: _Answer) -> GateResult:
    head = f"{webhook.name}: HTTP {answer.status} {answer.reason}".rstrip()
    if answer.status in PASSING:
        return GateResult(passed=True, message=head)
    if 300 <= answer.status < 400:
        head += f" (redirects are not followed; it points to {_origin(answer.location)})"
    elif 200 <= answer.status < 300:
        head += " (only 200, 201 and 202 pass, as in Flagger)"
    return GateResult(passed=False, message=f"{head}: {answer.excerpt}" if answer.excerpt else head)


async def call(
    webhook: Webhook, payload: Mapping[str, Any], *, executor: Executor | None = None
) -> GateResult:
    """POST the payload to the hook and say whether it passed (200-202) and what it answered.

    Returns within the hook's timeout (plus SLACK_SECONDS at worst). executor: the thread pool to
    block in; None is the loop's default pool (asyncio.to_thread's), which the Kubernetes adapter
    shares, so a caller that may hold many slow calls at once (the notifier) brings its own.
    """
    body = json.dumps(payload, separators=(",", ":")).encode()
    seconds = webhook.timeout_seconds
    exchange = asyncio.get_running_loop().run_in_executor(
        executor, _post, webhook.url, body, seconds
    )
    try:
        answer = await asyncio.wait_for(exchange, seconds + SLACK_SECONDS)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError covers TimeoutError, the socket's and asyncio.wait_for's alike.
        return GateResult(passed=False, message=f"{webhook.name}: {_failure(exc, webhook.timeout)}")
    return _judge(webhook, answer)
