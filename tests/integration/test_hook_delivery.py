"""Canary webhooks against a real HTTP server on loopback: what a Flagger receiver sees, and
what the operator makes of every way a receiver can answer (or not)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from filterrelease.core.hooks import Event, GateResult, HookType, Subject, Webhook, payload
from filterrelease.hooks import Notifier, gate
from filterrelease.providers.hook import call
from localcluster.pki import CertificateAuthority, CertKey

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T = TypeVar("T")
SUBJECT = Subject(name="security-headers", namespace="shop", phase="Progressing", checksum="c0ffee")
# Generous on purpose: the tests check that a call is bounded, not how fast this machine is.
SLACK = 5.0


class Received:
    def __init__(self, path: str, headers: dict[str, str], body: Any) -> None:
        self.path = path
        self.headers = headers
        self.body = body


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request and answers by path."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self.changed = threading.Condition()
        self.release_holds = threading.Event()  # set at teardown so held requests end
        self.pair = threading.Barrier(2, timeout=10)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output for failures

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received = Received(self.path, dict(self.headers), json.loads(raw))
                with receiver.changed:
                    receiver.requests.append(received)
                    receiver.changed.notify_all()
                status, body, extra = receiver.answer(self.path)
                try:
                    self.send_response(status)
                    for key, value in extra.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a held request: what the timeout tests want

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        route = path.split("?", 1)[0]
        if route == "/hold":  # answers only when the test is over
            self.release_holds.wait()
            return 200, b"", {}
        if route == "/pair":  # answers 200 only when two requests are in flight at once
            try:
                self.pair.wait()
            except threading.BrokenBarrierError:
                return 500, b"alone: the calls were not concurrent", {}
            return 200, b"", {}
        answers: dict[str, tuple[int, bytes, dict[str, str]]] = {
            "/gate/approve": (200, b"Approved", {}),
            "/accepted": (202, b"", {}),
            "/no-content": (204, b"", {}),
            "/gate/halt": (403, b"Forbidden\n\n  gate is   closed ", {}),
            "/crash": (500, ("panic: " + "x" * 1000).encode(), {}),
            "/moved": (302, b"", {"Location": "https://elsewhere.test/hook"}),
        }
        return answers.get(route, (200, b"", {}))

    def url(self, path: str, auth: str = "") -> str:
        host, port = self.server.server_address[:2]
        return f"{self.scheme}://{auth}{host!s}:{port}{path}"

    def wait_for(self, predicate: Callable[[list[Received]], bool], deadline: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.requests), timeout=deadline)


def serve(r: Receiver) -> Iterator[Receiver]:
    r.thread.start()
    yield r
    r.release_holds.set()
    r.pair.abort()
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve(Receiver())


@pytest.fixture
def ca_file(tmp_path: Path) -> tuple[Path, CertKey]:
    """A private CA's certificate on disk, and a serving certificate it signed for 127.0.0.1."""
    ca = CertificateAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.pair.cert_pem)
    return tmp_path / "ca.crt", ca.issue("127.0.0.1", ip_addresses=["127.0.0.1"], server=True)


@pytest.fixture
def tls_receiver(tmp_path: Path, ca_file: tuple[Path, CertKey]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*ca_file[1].write(tmp_path, "serving"))
    yield from serve(Receiver(tls=context))


@pytest.fixture
def refusing_url() -> Iterator[str]:
    # A port that is bound but not listening refuses connections, and nobody else can take it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def hook(url: str, type: str = "pre-rollout", **fields: Any) -> Webhook:
    return Webhook.model_validate({"name": "gate", "type": type, "url": url, **fields})


def ask(webhook: Webhook) -> Any:
    return run(call(webhook, payload(webhook, SUBJECT)))


# -- one call ------------------------------------------------------------------------------------


def test_pass_on_200_and_the_receiver_gets_flaggers_payload(receiver: Receiver) -> None:
    webhook = hook(receiver.url("/gate/approve"), metadata={"cmd": "test podinfo"})
    result = ask(webhook)
    assert (result.passed, result.message) == (True, "gate: HTTP 200 OK")
    [got] = receiver.requests
    assert got.headers["Content-Type"] == "application/json"
    assert got.body == {
        "name": "security-headers",
        "namespace": "shop",
        "phase": "Progressing",
        "checksum": "c0ffee",
        "metadata": {"cmd": "test podinfo"},
    }


def test_202_passes_204_does_not_as_in_flagger(receiver: Receiver) -> None:
    assert ask(hook(receiver.url("/accepted"))).passed
    result = ask(hook(receiver.url("/no-content")))
    assert not result.passed
    assert "HTTP 204" in result.message
    assert "only 200, 201 and 202 pass" in result.message


def test_403_fails_with_status_and_the_body_in_one_line(receiver: Receiver) -> None:
    result = ask(hook(receiver.url("/gate/halt")))
    assert not result.passed
    assert result.message == "gate: HTTP 403 Forbidden: Forbidden gate is closed"


def test_500_fails_with_a_short_excerpt_of_the_body(receiver: Receiver) -> None:
    result = ask(hook(receiver.url("/crash")))
    assert not result.passed
    assert result.message.startswith("gate: HTTP 500 Internal Server Error: panic: xxx")
    assert result.message.endswith("…")
    assert len(result.message) < 300


def test_redirects_are_reported_not_followed(receiver: Receiver) -> None:
    result = ask(hook(receiver.url("/moved")))
    assert not result.passed
    assert "HTTP 302" in result.message
    # Only the origin: a redirect's path may be a secret as much as the hook's own.
    assert "it points to https://elsewhere.test/…" in result.message
    assert "/hook" not in result.message
    assert [r.path for r in receiver.requests] == ["/moved"]


def test_a_receiver_that_holds_the_request_fails_within_the_timeout(receiver: Receiver) -> None:
    started = time.monotonic()
    result = ask(hook(receiver.url("/hold"), timeout="500ms"))
    elapsed = time.monotonic() - started
    assert not result.passed
    assert result.message == "gate: no answer within 500ms"
    assert elapsed < 0.5 + SLACK


def test_connection_refused_fails_with_a_message(refusing_url: str) -> None:
    result = ask(hook(refusing_url))
    assert (result.passed, result.message) == (False, "gate: connection refused")


def test_an_unresolvable_host_fails_with_a_message() -> None:
    # .invalid never resolves (RFC 2606), so this needs no network.
    result = ask(hook("http://receiver.invalid/hook", timeout="5s"))
    assert not result.passed
    assert result.message.startswith("gate: cannot resolve the host")


def test_a_port_out_of_range_fails_without_quoting_the_url() -> None:
    result = ask(hook("http://127.0.0.1:99999/secret-path"))
    assert result == GateResult(
        passed=False, message="gate: the URL cannot be requested (its host, port or characters)"
    )


def test_credentials_in_the_url_become_basic_auth_and_stay_out_of_messages(
    receiver: Receiver,
) -> None:
    result = ask(hook(receiver.url("/gate/halt?token=s3cret", auth="ops:pa%40ss@")))
    assert not result.passed
    assert "s3cret" not in result.message
    assert "pa@ss" not in result.message
    [got] = receiver.requests
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(b"ops:pa@ss").decode()


def test_https_receivers_are_verified_against_the_system_trust(
    tls_receiver: Receiver, ca_file: tuple[Path, CertKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = ask(hook(tls_receiver.url("/gate/approve")))
    assert not result.passed
    assert result.message.startswith("gate: TLS failed: ")
    assert "issuer certificate" in result.message
    assert tls_receiver.requests == []
    # A private CA is trusted the standard OpenSSL way (a bundle mounted in the pod).
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file[0]))
    result = ask(hook(tls_receiver.url("/gate/approve")))
    assert (result.passed, result.message) == (True, "gate: HTTP 200 OK")
    assert [r.path for r in tls_receiver.requests] == ["/gate/approve"]


# -- gates ---------------------------------------------------------------------------------------


def test_gate_passes_only_when_every_hook_of_its_type_passes(receiver: Receiver) -> None:
    hooks = [
        Webhook(name="tests", type=HookType.PRE_ROLLOUT, url=receiver.url("/gate/approve")),
        Webhook(name="approval", type=HookType.PRE_ROLLOUT, url=receiver.url("/gate/halt")),
        Webhook(name="other type", type=HookType.CONFIRM_PROMOTION, url=receiver.url("/crash")),
    ]
    result = run(gate(hooks, HookType.PRE_ROLLOUT, SUBJECT))
    assert not result.passed
    assert result.message.startswith("approval: HTTP 403")
    assert sorted(r.path for r in receiver.requests) == ["/gate/approve", "/gate/halt"]

    result = run(gate(hooks[:1], HookType.PRE_ROLLOUT, SUBJECT))
    assert (result.passed, result.message) == (True, "all 1 pre-rollout hooks passed")


def test_gate_asks_its_hooks_concurrently(receiver: Receiver) -> None:
    # /pair answers 200 only while another request is in flight: one after the other fails.
    hooks = [
        Webhook(name=n, type=HookType.CONFIRM_PROMOTION, url=receiver.url("/pair"), timeout="15s")
        for n in ("a", "b")
    ]
    result = run(gate(hooks, HookType.CONFIRM_PROMOTION, SUBJECT))
    assert result.passed, result.message


def test_one_rollback_hook_answering_200_asks_for_a_rollback(
    receiver: Receiver, refusing_url: str
) -> None:
    hooks = [
        Webhook(name="closed", type=HookType.ROLLBACK, url=receiver.url("/gate/halt")),
        Webhook(name="down", type=HookType.ROLLBACK, url=refusing_url),
    ]
    assert not run(gate(hooks, HookType.ROLLBACK, SUBJECT)).passed
    hooks.append(Webhook(name="open", type=HookType.ROLLBACK, url=receiver.url("/gate/approve")))
    result = run(gate(hooks, HookType.ROLLBACK, SUBJECT))
    assert (result.passed, result.message) == (True, "rollback requested: open: HTTP 200 OK")


def test_gate_returns_within_its_slowest_timeout(receiver: Receiver) -> None:
    hooks = [
        Webhook(name=f"held{i}", type=HookType.PRE_ROLLOUT, url=receiver.url("/hold"), timeout="1s")
        for i in range(3)
    ]
    started = time.monotonic()
    result = run(gate(hooks, HookType.PRE_ROLLOUT, SUBJECT))
    assert time.monotonic() - started < 1.0 + SLACK
    assert result.message == "; ".join(f"held{i}: no answer within 1s" for i in range(3))


# -- events --------------------------------------------------------------------------------------


# The events' time is the test's: the timestamp a receiver gets is then known exactly, and
# does not depend on this machine's clock or speed.
WHEN = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def event(message: str, type: str = "Normal") -> Event:
    return Event.model_validate({"message": message, "type": type, "time": WHEN})


def test_notifier_delivers_event_payloads_in_order_per_receiver(receiver: Receiver) -> None:
    slack = Webhook(
        name="slack", type=HookType.EVENT, url=receiver.url("/events"), metadata={"ch": "#rel"}
    )
    gate_hook = Webhook(name="gate", type=HookType.PRE_ROLLOUT, url=receiver.url("/gate/halt"))
    messages = [f"step {i}" for i in range(8)]

    async def scenario() -> int:
        notifier = Notifier(concurrency=4)
        sent = sum(notifier.send([slack, gate_hook], SUBJECT, event(m)) for m in messages)
        # The loop must keep running while the server is polled, so the wait is in a thread.
        arrived = await asyncio.to_thread(receiver.wait_for, lambda rs: len(rs) >= len(messages))
        assert arrived, [r.body for r in receiver.requests]
        await notifier.aclose()
        return sent

    assert run(scenario()) == len(messages)  # gate hooks are not told about events
    assert [r.path for r in receiver.requests] == ["/events"] * len(messages)
    assert [r.body["metadata"]["eventMessage"] for r in receiver.requests] == messages
    first = receiver.requests[0].body
    assert first["name"] == "security-headers"
    assert first["metadata"]["eventType"] == "Normal"
    assert first["metadata"]["ch"] == "#rel"
    assert first["metadata"]["timestamp"] == "1772366400250"  # WHEN in ms since the epoch


def test_notifier_logs_failed_deliveries_and_never_raises(
    refusing_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = Webhook(name="down", type=HookType.EVENT, url=refusing_url)

    async def scenario() -> None:
        notifier = Notifier()
        assert notifier.send([down], SUBJECT, event("Canary failed", "Warning")) == 1
        await notifier.aclose(grace_seconds=30)
        assert notifier.pending == 0

    with caplog.at_level(logging.WARNING, logger="filterrelease.hooks"):
        run(scenario())
    assert "event webhook failed: down: connection refused" in caplog.text


def test_aclose_waits_a_bounded_time_and_pending_is_bounded(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    held = Webhook(name="held", type=HookType.EVENT, url=receiver.url("/hold"), timeout="15m")

    async def scenario() -> tuple[int, int, float]:
        notifier = Notifier(concurrency=1, max_pending=2)
        sent = sum(notifier.send([held], SUBJECT, event(f"e{i}")) for i in range(5))
        assert await asyncio.to_thread(receiver.wait_for, lambda rs: len(rs) >= 1)
        started = time.monotonic()
        await notifier.aclose(grace_seconds=0.5)
        closing = time.monotonic() - started
        after_close = notifier.send([held], SUBJECT, event("late"))
        return sent, after_close, closing

    with caplog.at_level(logging.WARNING, logger="filterrelease.hooks"):
        sent, after_close, closing = run(scenario())
    assert (sent, after_close) == (2, 0)
    assert closing < 0.5 + SLACK
    assert "2 event webhook deliveries dropped at shutdown" in caplog.text
    assert caplog.text.count("dropped: 2 deliveries already waiting") == 3
