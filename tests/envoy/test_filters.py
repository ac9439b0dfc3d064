"""The project's Go filters in the real Envoy (1.40, V8): what each does to traffic, how Envoy
reacts when one panics or rejects its configuration, and that the healthy ones survive load.

The Envoy log lines asserted here are the ones the operator's log analysis will look for; the
module's own lines come first, then Envoy's (see filters/README.md for a full excerpt)."""

from __future__ import annotations

import json
import re
import time

import pytest

from filterrelease.providers.envoy import EnvoyError
from tests.envoy.conftest import StartEnvoy, get, load

pytestmark = pytest.mark.envoy

SECURITY_CONFIG = {
    "frame_options": "DENY",
    "content_type_options": "nosniff",
    "xss_protection": "1; mode=block",
    "version": "v1.1.0",
}

# What Envoy logs (the module's proxy_log lines come through as "wasm log <names>: <message>").
PLUGIN_LOG = r"\[{level}\]\[wasm\] \[\S+\] wasm log [^:]*: {message}"
VM_FAILED = re.compile(
    r"\[error\]\[wasm\] \[\S+\] Function: proxy_on_request_headers failed: "
    r"Uncaught RuntimeError: unreachable\nProxy-Wasm plugin in-VM backtrace:\n"
)
STATIC_REJECTED = "error `Unable to create Wasm plugin {name}` initializing config"
LDS_REJECTED = "lds: listener 'ingress' config rejected: Unable to create Wasm plugin {name}"


def plugin_log(level: str, message: str) -> re.Pattern[str]:
    return re.compile(PLUGIN_LOG.format(level=level, message=re.escape(message)))


def test_security_headers(start_envoy: StartEnvoy) -> None:
    envoy = start_envoy("security-headers", json.dumps(SECURITY_CONFIG))
    resp = get(envoy.port)
    assert resp.status == 200
    assert "server" not in resp.headers, "the upstream's server header was not removed"
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("x-frame-options") == "DENY"
    assert resp.header("x-xss-protection") == "1; mode=block"
    assert resp.header("x-filter-version") == "v1.1.0"
    # The upstream echoes the request headers it got: the filter marked the request.
    assert resp.json()["x-envoy-wasm-filter"] == "active"
    assert plugin_log("info", "security-headers: started, version v1.1.0").search(envoy.log())


def test_baseline_without_filter(start_envoy: StartEnvoy) -> None:
    envoy = start_envoy(None)
    resp = get(envoy.port)
    assert resp.status == 200
    assert resp.header("server") == "upstream"
    for name in ("x-frame-options", "x-content-type-options", "x-filter-version"):
        assert name not in resp.headers
    assert "x-envoy-wasm-filter" not in resp.json()


def test_two_versions_answer_differently(start_envoy: StartEnvoy) -> None:
    """Two Envoys at once (each picks its own base id), same module, two configurations."""
    old = start_envoy("security-headers", json.dumps({**SECURITY_CONFIG, "version": "v1.0.0"}))
    new = start_envoy(
        "security-headers",
        json.dumps({**SECURITY_CONFIG, "version": "v1.1.0", "frame_options": "SAMEORIGIN"}),
    )
    a, b = get(old.port), get(new.port)
    assert (a.status, b.status) == (200, 200)
    assert (a.header("x-filter-version"), b.header("x-filter-version")) == ("v1.0.0", "v1.1.0")
    assert (a.header("x-frame-options"), b.header("x-frame-options")) == ("DENY", "SAMEORIGIN")


def test_invalid_configuration_is_rejected_at_start(start_envoy: StartEnvoy) -> None:
    """Invalid JSON: proxy_on_configure returns false; with the listener in the bootstrap
    Envoy refuses the whole configuration and exits 1."""
    envoy = start_envoy("security-headers", '{"frame_options": ', start=False)
    with pytest.raises(EnvoyError, match="exited with status 1"):
        envoy.process.start(timeout=60)
    log = envoy.log()
    assert plugin_log(
        "error",
        "security-headers: rejecting the plugin configuration: invalid plugin configuration:",
    ).search(log)
    assert "Wasm VM failed Failed to configure base Wasm plugin" in log
    assert STATIC_REJECTED.format(name="security-headers") in log


def test_local_5xx_answers_the_configured_share(start_envoy: StartEnvoy) -> None:
    envoy = start_envoy("local-5xx", '{"fail_every": 4, "status": 502, "version": "l1"}')
    statuses = []
    for _ in range(40):
        resp = get(envoy.port)
        statuses.append(resp.status)
        assert resp.header("x-filter-version") == "l1"
        if resp.status == 502:
            assert resp.body == b"local-5xx: failing this request on purpose\n"
            assert resp.header("content-type") == "text/plain"
    # Envoy runs one worker here, so the every-4th counter is exact.
    assert statuses == [200, 200, 200, 502] * 10
    lines = envoy.wait_access_lines(40)
    assert sum(" 502 - local_5xx_filter " in line for line in lines) == 10
    assert sum(" 200 - via_upstream " in line for line in lines) == 30


def test_slow_adds_latency(start_envoy: StartEnvoy) -> None:
    envoy = start_envoy("slow", '{"delay_ms": 200, "version": "s1"}')
    for _ in range(5):
        resp = get(envoy.port)
        assert resp.status == 200
        assert resp.header("x-filter-version") == "s1"
        assert resp.seconds >= 0.2, f"answered in {resp.seconds * 1000:.0f} ms"
    baseline = start_envoy("slow", '{"delay_ms": 0, "version": "s0"}')
    assert get(baseline.port).header("x-filter-version") == "s0"


def test_panicky_fail_closed(start_envoy: StartEnvoy) -> None:
    """The default failure policy (fail closed): the first panic kills the worker's VM and
    every later request on that worker gets 503 (response code details wasm_fail_stream)."""
    envoy = start_envoy("panicky", '{"panic_every": 4, "version": "p1"}')
    statuses = [get(envoy.port).status for _ in range(10)]
    assert statuses == [200, 200, 200] + [503] * 7
    log = envoy.log()
    assert plugin_log(
        "critical",
        "proxywasm: panic in proxy_on_request_headers: panicky: deliberate panic on request 4",
    ).search(log)
    # Go's runtime prints the panic to stderr; Envoy logs each fd_write as its own line.
    assert plugin_log("error", "panic: ").search(log)
    assert VM_FAILED.search(log)
    assert re.search(r"^  \d+:  0x[0-9a-f]+ - runtime\.gopanic$", log, re.MULTILINE)
    lines = envoy.wait_access_lines(10)
    assert sum(" 503 - wasm_fail_stream " in line for line in lines) == 7


def test_panicky_fail_reload(start_envoy: StartEnvoy) -> None:
    """failure_policy FAIL_RELOAD: Envoy replaces a crashed VM (after the backoff) with a
    fresh one, whose counter starts again: every 4th request fails, the others pass."""
    envoy = start_envoy(
        "panicky",
        '{"panic_every": 4, "version": "p1"}',
        failure_policy="FAIL_RELOAD",
        reload_backoff_ms=20,
    )
    for cycle in range(3):
        # Until the backoff has passed, the failed VM still fails requests: poll.
        deadline = time.monotonic() + 10
        first = get(envoy.port)
        while first.status == 503 and time.monotonic() < deadline:
            first = get(envoy.port)
        assert first.status == 200, f"cycle {cycle}: the VM never came back"
        cycle_statuses = [first.status] + [get(envoy.port).status for _ in range(3)]
        assert cycle_statuses == [200, 200, 200, 503], f"cycle {cycle}"
    assert len(re.findall("proxywasm: panic in proxy_on_request_headers", envoy.log())) == 3
    assert envoy.process.stats("wasm.panicky.")["wasm.panicky.vm_reload_success"] >= 2


def test_config_rejecting_static_listener(start_envoy: StartEnvoy) -> None:
    """A plugin that rejects its configuration makes a bootstrap listener invalid: Envoy does
    not start (exit 1), fail_open or not; fail_open only covers VMs failing later."""
    for fail_open in (False, True):
        envoy = start_envoy("config-rejecting", "{}", start=False, fail_open=fail_open)
        with pytest.raises(EnvoyError, match="exited with status 1"):
            envoy.process.start(timeout=60)
        log = envoy.log()
        assert plugin_log(
            "error", "config-rejecting: rejecting the plugin configuration on purpose (2 bytes)"
        ).search(log)
        assert "Wasm VM failed Failed to configure base Wasm plugin" in log
        assert "Plugin config-rejecting failed to load" in log
        assert STATIC_REJECTED.format(name="config-rejecting") in log


def test_config_rejecting_dynamic_listener(start_envoy: StartEnvoy) -> None:
    """Delivered like xDS (LDS from a file), the listener is rejected and Envoy keeps running
    without it: nothing listens, the rejection is counted."""
    envoy = start_envoy("config-rejecting", "{}", lds=True)
    assert envoy.port == 0, "the listener with the rejecting plugin is active"
    assert envoy.process.alive()
    stats = envoy.process.stats("listener_manager.lds.")
    assert stats["listener_manager.lds.update_rejected"] == 1
    log = envoy.log()
    assert plugin_log(
        "error", "config-rejecting: rejecting the plugin configuration on purpose"
    ).search(log)
    assert LDS_REJECTED.format(name="config-rejecting") in log
    assert "Plugin configured to fail closed failed to load" in log


def test_dynamic_listener_with_a_healthy_filter(start_envoy: StartEnvoy) -> None:
    envoy = start_envoy("security-headers", '{"version": "v2"}', lds=True)
    assert get(envoy.port).header("x-filter-version") == "v2"


LOAD_REQUESTS = 3000
NO_CRASH = ("Uncaught RuntimeError", "poll_oneoff", "fatal error", "panic")


@pytest.mark.parametrize(
    ("module", "configuration", "expected"),
    [
        ("security-headers", json.dumps(SECURITY_CONFIG), {200: LOAD_REQUESTS}),
        # Two workers, each counting its own requests: 10% give or take one per worker.
        ("local-5xx", '{"fail_every": 10, "status": 503}', None),
        ("slow", '{"delay_ms": 5}', {200: LOAD_REQUESTS}),
    ],
)
def test_load_without_vm_crash(
    start_envoy: StartEnvoy, module: str, configuration: str, expected: dict[int, int] | None
) -> None:
    """A bounded load (3000 requests, 4 client threads, 2 Envoy workers) completes with no
    VM failure: in particular no `fatal error: poll_oneoff failed` (golang/go#78513)."""
    envoy = start_envoy(module, configuration, concurrency=2)
    result = load(envoy.port, LOAD_REQUESTS, threads=4)
    print(f"\n{module}: {result.total} requests in {result.seconds:.1f}s, {result.rps:.0f}/s")
    assert not result.errors
    if expected is not None:
        assert dict(result.statuses) == expected
    else:
        assert set(result.statuses) == {200, 503}
        assert LOAD_REQUESTS // 10 - 2 <= result.statuses[503] <= LOAD_REQUESTS // 10
    log = envoy.log()
    for marker in NO_CRASH:
        assert marker not in log, f"{module}: {marker!r} in the Envoy log"
    assert envoy.process.alive()


def test_throughput_with_and_without_filter(start_envoy: StartEnvoy) -> None:
    """Requests per second through Envoy with security-headers and with no filter, in one run
    (printed, not asserted: machines are noisy)."""
    baseline = start_envoy(None, concurrency=2)
    filtered = start_envoy("security-headers", json.dumps(SECURITY_CONFIG), concurrency=2)
    load(baseline.port, 300)  # warm both up
    load(filtered.port, 300)
    without = load(baseline.port, LOAD_REQUESTS)
    with_filter = load(filtered.port, LOAD_REQUESTS)
    print(
        f"\nrequests/s, {LOAD_REQUESTS} requests, 4 threads: no filter {without.rps:.0f}, "
        f"security-headers {with_filter.rps:.0f} ({with_filter.rps / without.rps:.0%})"
    )
    assert dict(without.statuses) == {200: LOAD_REQUESTS}
    assert dict(with_filter.statuses) == {200: LOAD_REQUESTS}


def test_panicky_fail_open(start_envoy: StartEnvoy) -> None:
    """fail_open: the panicking request, and every later one, skip the failed filter and reach
    the upstream (no x-filter-version: the filter no longer runs)."""
    envoy = start_envoy("panicky", '{"panic_every": 2, "version": "p1"}', fail_open=True)
    responses = [get(envoy.port) for _ in range(4)]
    assert [(r.status, r.header("x-filter-version")) for r in responses] == [
        (200, "p1"),
        (200, None),
        (200, None),
        (200, None),
    ]
    assert VM_FAILED.search(envoy.log())
