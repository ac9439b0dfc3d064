"""Pre-flight dry runs that cost milliseconds for a new pluginConfig: one warm Envoy per module.

Starting Envoy and compiling a module in V8 takes about 1.5 s here; handing an already-loaded
module a new plugin configuration takes about 10 ms. So each module (sha256 and plugin name)
gets one long-lived Envoy whose Wasm filter comes over ECDS from a file, as a sidecar's comes
from istiod. A check replaces that file and watches Envoy's own ECDS counters:

  * update_rejected went up: the plugin refused the config (proxy_on_configure returned false,
    or the VM failed to start): ConfigRejected, with Envoy's Wasm lines from this check alone;
  * update_success went up: one request goes through the filter; a 5xx is InvalidModule (the
    module crashed at its first request), and that Envoy is dropped: a VM that failed is not
    trusted to judge the next config.

Anything else (Envoy exited, no ECDS answer in time, a port that will not answer) is not a
verdict: that Envoy is dropped and the check runs once more in a fresh Envoy (dryrun.py), so a
broken warm Envoy can never turn into a wrong verdict. A rejected config leaves the previous
one in place (Envoy keeps the last good filter config), so the next check starts clean.

The pool is bounded by memory: after each check the warm Envoys' own resident memory (about
72 MiB each with a 2 MB Go module; the binary's ~64 MiB of pages are shared by all) is summed,
and the least recently used are stopped until it fits (the one just used always stays).
Checks of one module run one at a time on its Envoy; different modules run in parallel.
Every Envoy is started with `die_with_parent`, so a SIGKILLed operator leaves none behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from filterrelease.core.module import ModuleProblem, Reason
from filterrelease.providers.dryrun import (
    EnvoyDryRun,
    OkHandler,
    config_rejected,
    crashed,
    one_request,
)
from filterrelease.providers.envoy import EnvoyError, EnvoyProcess
from filterrelease.providers.envoy_bootstrap import WasmFilter, bootstrap_config, ecds_response

log = logging.getLogger(__name__)

FILTER_NAME = "preflight"
_STATS = "extension_config_discovery.http_filter." + FILTER_NAME + "."
# Envoy writes the log line explaining a rejection just before it counts the rejection; the
# file is flushed line by line, but give it this long to appear before reporting without it.
_LOG_GRACE_SECONDS = 1.0


class _NoVerdictError(Exception):
    """The warm Envoy could not give a verdict (not: the module is bad)."""


class _WarmEnvoy:
    """One Envoy with one module loaded, taking plugin configs over ECDS."""

    def __init__(
        self, envoy: Path, module: bytes, plugin_name: str | None, upstream: int, timeout: float
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="filterrelease-warm-"))
        self._module = self.dir / "plugin.wasm"
        self._module.write_bytes(module)
        self._ecds = self.dir / "ecds.json"
        self._name = plugin_name or FILTER_NAME
        self._timeout = timeout
        self._version = 0
        self.lock = threading.Lock()
        config = bootstrap_config(
            listener_port=0, upstream_port=upstream, ecds=(FILTER_NAME, self._ecds)
        )
        self.process = EnvoyProcess(config, self.dir, envoy=envoy, die_with_parent=True)
        self._port: int | None = None

    def check(self, configuration: str) -> None:
        """Raise the verdict's ModuleProblem, or _NoVerdictError."""
        before = self._counts() if self._port is not None else (0, 0)
        offset = self._log_size()
        self._write(configuration)
        if self._port is None:
            try:
                self.process.start(timeout=self._timeout)
                self._port = self.process.listener_port()
            except EnvoyError as err:
                raise _NoVerdictError(str(err)) from err
        after = self._await_update(before)
        if after[1] > before[1]:
            raise config_rejected(self._log_since(offset, wait_for_wasm=True))
        status = one_request(self._port)
        if status >= 500:
            raise crashed(status, self._log_since(offset, wait_for_wasm=True))

    def _write(self, configuration: str) -> None:
        self._version += 1
        wasm = WasmFilter(module=self._module, name=self._name, configuration=configuration)
        document = ecds_response(FILTER_NAME, wasm, str(self._version))
        staged = self.dir / "ecds.json.next"
        staged.write_text(json.dumps(document))
        # A rename: Envoy's file watch sees one whole new file, never a half-written one.
        os.replace(staged, self._ecds)

    def _counts(self) -> tuple[int, int]:
        """(updates accepted, updates rejected) so far."""
        try:
            stats = self.process.stats(_STATS)
        except (OSError, EnvoyError) as err:
            raise _NoVerdictError(f"envoy's admin did not answer: {err}") from err
        return stats.get(_STATS + "update_success", 0), stats.get(_STATS + "update_rejected", 0)

    def _await_update(self, before: tuple[int, int]) -> tuple[int, int]:
        deadline = time.monotonic() + self._timeout
        while True:
            if not self.process.alive():
                raise _NoVerdictError(f"envoy exited (status {self.process.returncode})")
            counts = self._counts()
            if counts[0] > before[0] or counts[1] > before[1]:
                return counts
            if time.monotonic() >= deadline:
                raise _NoVerdictError(f"envoy took no ECDS update in {self._timeout:g}s")
            time.sleep(0.005)

    def _log_size(self) -> int:
        try:
            return self.process.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int, *, wait_for_wasm: bool) -> str:
        deadline = time.monotonic() + _LOG_GRACE_SECONDS
        while True:
            with contextlib.suppress(OSError), self.process.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
                if not wait_for_wasm or "wasm" in text or time.monotonic() >= deadline:
                    return text
            if time.monotonic() >= deadline:
                return ""
            time.sleep(0.02)

    def memory_bytes(self) -> int:
        return self.process.private_memory_bytes()

    def stop(self) -> None:
        self.process.stop(grace=2)
        shutil.rmtree(self.dir, ignore_errors=True)


class WarmDryRuns:
    """The dry run the operator uses: a memory-bounded pool of warm Envoys, one per module."""

    def __init__(self, envoy: Path, *, memory_bytes: int, timeout: float = 30.0) -> None:
        self._envoy = envoy
        self._memory_bytes = memory_bytes
        self._timeout = timeout
        self._cold = EnvoyDryRun(envoy, timeout)
        self._lock = threading.Lock()
        self._warm: OrderedDict[tuple[str, str | None], _WarmEnvoy] = OrderedDict()
        self._upstream: http.server.ThreadingHTTPServer | None = None
        self._closed = False
        # What the pool did, for the operator's metrics and the tests: checks answered by a
        # warm Envoy, Envoys started, Envoys stopped to fit the memory bound or after a crash,
        # checks that fell back to a fresh Envoy.
        self.counts = {"warm": 0, "started": 0, "evicted": 0, "fallback": 0}

    def check(self, module: bytes, plugin_name: str | None, configuration: str) -> None:
        """Raise ConfigRejected or InvalidModule if Envoy cannot run the module as configured."""
        key = (hashlib.sha256(module).hexdigest(), plugin_name)
        warm = self._take(key, module, plugin_name)
        try:
            with warm.lock:
                warm.check(configuration)
            self._count("warm")
        except ModuleProblem as problem:
            self._count("warm")
            if problem.reason is Reason.INVALID_MODULE:
                self._drop(key, warm)  # its VM failed: judge the next config afresh
            raise
        except _NoVerdictError as err:
            log.warning("warm dry run of module %s gave no verdict (%s): once more, cold",
                        key[0][:12], str(err).splitlines()[0])  # fmt: skip
            self._drop(key, warm)
            self._count("fallback")
            self._cold.check(module, plugin_name, configuration)
        finally:
            # Outside the Envoy's lock: two checks fitting the pool at once must not each
            # hold the Envoy the other wants to stop.
            self._fit(key)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _take(self, key: tuple[str, str | None], module: bytes, name: str | None) -> _WarmEnvoy:
        with self._lock:
            if self._closed:
                raise RuntimeError("the dry-run pool is closed")
            warm = self._warm.get(key)
            if warm is None:
                if self._upstream is None:
                    self._upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OkHandler)
                    threading.Thread(
                        target=self._upstream.serve_forever, name="dry-run-upstream", daemon=True
                    ).start()
                upstream = int(self._upstream.server_address[1])
                warm = _WarmEnvoy(self._envoy, module, name, upstream, self._timeout)
                self._warm[key] = warm
                self.counts["started"] += 1
            self._warm.move_to_end(key)
            return warm

    def _drop(self, key: tuple[str, str | None], warm: _WarmEnvoy) -> None:
        with self._lock:
            if self._warm.get(key) is warm:
                del self._warm[key]
                self.counts["evicted"] += 1
        # Stopping an Envoy takes up to its drain (~0.1 s): not on the path of a verdict.
        threading.Thread(target=warm.stop, name="dry-run-evict", daemon=True).start()

    def _fit(self, keep: tuple[str, str | None]) -> None:
        """Stop the least recently used Envoys (never `keep`) until the pool fits its bound."""
        while True:
            with self._lock:
                sizes = {key: warm.memory_bytes() for key, warm in self._warm.items()}
                if sum(sizes.values()) <= self._memory_bytes:
                    return
                victim = next((k for k in self._warm if k != keep), None)
                if victim is None:
                    return
                warm = self._warm[victim]
            with warm.lock:  # not while a check of it is under way
                self._drop(victim, warm)

    def memory_bytes(self) -> int:
        """The warm Envoys' own resident memory now."""
        with self._lock:
            return sum(warm.memory_bytes() for warm in self._warm.values())

    def size(self) -> int:
        with self._lock:
            return len(self._warm)

    def close(self) -> None:
        """Stop every warm Envoy and the upstream; checks after this raise."""
        with self._lock:
            self._closed = True
            warm, self._warm = list(self._warm.values()), OrderedDict()
            upstream, self._upstream = self._upstream, None
        for envoy in warm:
            envoy.stop()
        if upstream is not None:
            upstream.shutdown()
            upstream.server_close()
