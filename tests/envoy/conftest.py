"""Fixtures for tests on the real Envoy: the filter modules built from filters/ (Go), a loopback
upstream, and Envoy processes started through the operator's own provider
(filterrelease.providers.envoy), all stopped by the fixtures, also when a test fails."""

from __future__ import annotations

import http.client
import http.server
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from filterrelease.providers.envoy import EnvoyProcess
from filterrelease.providers.envoy_bootstrap import (
    WasmFilter,
    bootstrap_config,
    lds_response,
    listener_config,
)

ROOT = Path(__file__).resolve().parents[2]
FILTERS = ("security-headers", "panicky", "local-5xx", "slow", "config-rejecting")


@pytest.fixture(scope="session")
def modules() -> dict[str, Path]:
    """Every filter's .wasm, built (or taken from the cache) by filters/build.sh."""
    if shutil.which("go") is None:
        pytest.fail("go is not on PATH: the filter modules are built from Go source")
    proc = subprocess.run(
        ["bash", str(ROOT / "filters" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"filters/build.sh failed:\n{proc.stderr}")
    out = Path(proc.stdout.strip().splitlines()[-1])
    found = {name: out / f"{name}.wasm" for name in FILTERS}
    missing = [str(p) for p in found.values() if not p.is_file()]
    assert not missing, f"build.sh did not produce {missing}"
    return found


class _Upstream(http.server.BaseHTTPRequestHandler):
    """200 with `server: upstream` and, as a JSON body, the request headers it received."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else Nagle + delayed ACK add 40 ms per response

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def version_string(self) -> str:
        return "upstream"

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="upstream", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    seconds: float

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def get(port: int, path: str = "/", timeout: float = 10) -> Response:
    """One GET on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.monotonic()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        seconds = time.monotonic() - t0
        headers: dict[str, list[str]] = {}
        for k, v in resp.getheaders():
            headers.setdefault(k.lower(), []).append(v)
        return Response(resp.status, headers, body, seconds)
    finally:
        conn.close()


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


def load(port: int, total: int, threads: int = 4, deadline_s: float = 120) -> LoadResult:
    """`total` GETs from `threads` keep-alive connections; stops at the deadline either way."""
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        statuses: Counter[int] = Counter()
        errors: Counter[str] = Counter()
        for i in range(count):
            if time.monotonic() > stop_at:
                errors["deadline"] += count - i
                break
            try:
                conn.request("GET", "/load")
                resp = conn.getresponse()
                resp.read()
                statuses[resp.status] += 1
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                errors[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()
        with lock:
            result.statuses.update(statuses)
            result.errors.update(errors)

    shares = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]
    pool = [
        threading.Thread(target=worker, args=(n,), name=f"load-{i}") for i, n in enumerate(shares)
    ]
    t0 = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join(deadline_s + 30)
    result.seconds = time.monotonic() - t0
    return result


@dataclass
class RunningEnvoy:
    process: EnvoyProcess
    port: int  # the listener's; 0 when it has none (rejected)
    access_log: Path

    def log(self) -> str:
        return self.process.log_text()

    def access_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_access_lines(self, count: int, timeout: float = 15) -> list[str]:
        """Envoy writes access logs asynchronously: poll until `count` lines are there."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


# start_envoy(module, configuration, *, start=True, lds=False, concurrency=1, **WasmFilter kw)
StartEnvoy = Callable[..., RunningEnvoy]


@pytest.fixture
def start_envoy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    modules: dict[str, Path],
    upstream_port: int,
) -> Iterator[StartEnvoy]:
    """Starts Envoys for one test (module None: no Wasm filter); stops all of them after it,
    and prints their log tails if the test failed."""
    started: list[EnvoyProcess] = []

    def _start(
        module: str | None,
        configuration: str = "",
        *,
        start: bool = True,
        lds: bool = False,
        concurrency: int = 1,
        **wasm_kw: Any,
    ) -> RunningEnvoy:
        workdir = tmp_path_factory.mktemp(f"envoy-{module or 'baseline'}")
        access_log = workdir / "access.log"
        wasm = None
        if module is not None:
            wasm = WasmFilter(
                module=modules[module], name=module, configuration=configuration, **wasm_kw
            )
        lds_path = workdir / "lds.json" if lds else None
        config = bootstrap_config(
            listener_port=0,
            upstream_port=upstream_port,
            wasm=wasm,
            access_log=access_log,
            lds_path=lds_path,
        )
        if lds_path is not None:
            listener = listener_config(listener_port=0, wasm=wasm, access_log=access_log)
            lds_path.write_text(json.dumps(lds_response(listener)))
        proc = EnvoyProcess(config, workdir, concurrency=concurrency)
        started.append(proc)
        if not start:
            return RunningEnvoy(proc, 0, access_log)
        proc.start(timeout=60)
        ports = proc.listener_ports()
        return RunningEnvoy(proc, ports.get("ingress", 0), access_log)

    yield _start

    failed = getattr(request.node, "rep_call", None)
    for proc in started:
        proc.stop()
        if failed is not None and failed.failed:
            print(f"\n--- envoy log tail ({proc.log_path}) ---\n{proc.log_tail(60)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
