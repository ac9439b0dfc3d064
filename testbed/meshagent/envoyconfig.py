"""The Envoy configuration of one sidecar, as istiod would send it, in files (pure builders).

A real sidecar gets its inbound listener over LDS and each WasmPlugin's filter config over
ECDS: the listener names the filters and marks each one `config_discovery`, and istiod sends
the filter's config (after istio-agent rewrote the remote module into a local file) as a
separate TypedExtensionConfig resource
(pilot/pkg/networking/core/extension/extensionfilter.go toEnvoyHTTPTrafficExtension:
type_urls = [Wasm, RBAC], initial_fetch_timeout 0 i.e. the listener waits for the config).

Here both come from files (Envoy's `path_config_source`): `lds.json` holds the listener and
`ecds/<n>.json` one TypedExtensionConfig each. Envoy watches the files and applies a replaced
file in place: a changed filter config (ECDS) takes effect for new streams without touching
the listener; a changed filter list (LDS) makes a new listener, the old one drains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshagent.layout import ACCESS_LOG_FIELDS

LOOPBACK = "127.0.0.1"
LISTENER_NAME = "virtualInbound"
_T = "type.googleapis.com/"
WASM_HTTP_TYPE = _T + "envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_HTTP_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
TYPED_EXTENSION_CONFIG_TYPE = _T + "envoy.config.core.v3.TypedExtensionConfig"
LISTENER_TYPE = _T + "envoy.config.listener.v3.Listener"
_HCM_TYPE = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_TYPE = _T + "envoy.extensions.filters.http.router.v3.Router"
_FILE_LOG_TYPE = _T + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
_STRING_VALUE_TYPE = _T + "google.protobuf.StringValue"
RUNTIME_V8 = "envoy.wasm.runtime.v8"
# Stat prefixes of istio-agent's fallback filters (pkg/wasm/convert.go).
DEFAULT_ALLOW_STAT_PREFIX = "wasm-default-allow"
DEFAULT_DENY_STAT_PREFIX = "wasm-default-deny"


def inbound_cluster(port: int) -> str:
    """Istio's name for the inbound cluster of a port."""
    return f"inbound|{port}||"


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def bootstrap(
    *, upstream_port: int, lds_path: Path, cluster_port: int, admin_port: int = 0
) -> dict[str, Any]:
    """Admin on loopback (`admin_port`, or any free port for 0), one static cluster to the
    app, listeners from LDS."""
    name = inbound_cluster(cluster_port)
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "clusters": [
                {
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _address(upstream_port)}}]}
                        ],
                    },
                }
            ]
        },
        "dynamic_resources": {
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(lds_path)},
            }
        },
    }


def listener(
    *,
    port: int,
    cluster_port: int,
    filters: Sequence[tuple[str, Path]],
    access_log: Path,
) -> dict[str, Any]:
    """The inbound listener on 127.0.0.1:`port`: HCM -> the ECDS filters (name, file) in
    order -> router -> the app. The upstream's `server` header is passed through, as Istio's
    sidecars do, so a filter removing it can be seen to."""
    http_filters: list[dict[str, Any]] = [
        {
            "name": name,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": str(path)},
                    "resource_api_version": "V3",
                    "initial_fetch_timeout": "0s",
                },
                "type_urls": [WASM_HTTP_TYPE, RBAC_HTTP_TYPE],
            },
        }
        for name, path in filters
    ]
    http_filters.append(
        {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}
    )
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": f"inbound_0.0.0.0_{cluster_port}",
        "codec_type": "AUTO",
        "server_header_transformation": "PASS_THROUGH",
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _FILE_LOG_TYPE,
                    "path": str(access_log),
                    "log_format": {"json_format": dict(ACCESS_LOG_FIELDS)},
                },
            }
        ],
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [
                {
                    "name": "inbound|http",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "default",
                            "match": {"prefix": "/"},
                            # Istio's inbound routes have no timeout.
                            "route": {"cluster": inbound_cluster(cluster_port), "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": http_filters,
    }
    return {
        "name": LISTENER_NAME,
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def discovery_response(
    type_url: str, resources: Sequence[Mapping[str, Any]], version: str
) -> dict[str, Any]:
    """A DiscoveryResponse: what a path_config_source file holds."""
    return {
        "version_info": version,
        "type_url": type_url,
        "resources": [{"@type": type_url, **resource} for resource in resources],
    }


def lds_file(listener_config: Mapping[str, Any], version: str) -> dict[str, Any]:
    return discovery_response(LISTENER_TYPE, [listener_config], version)


def ecds_file(name: str, typed_config: Mapping[str, Any], version: str) -> dict[str, Any]:
    """One TypedExtensionConfig (Envoy's ECDS takes exactly one resource per response)."""
    return discovery_response(
        TYPED_EXTENSION_CONFIG_TYPE, [{"name": name, "typed_config": dict(typed_config)}], version
    )


def wasm_filter(
    *,
    name: str,
    root_id: str,
    configuration: str | None,
    module: Path,
    failure_policy: str | None,
    env: Mapping[str, str] | None = None,
    host_env_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """envoy.extensions.filters.http.wasm.v3.Wasm with a local module, as istio-agent
    forwards it after rewriting the remote code (pkg/wasm/convert.go rewriteVMConfig)."""
    vm_config: dict[str, Any] = {
        "runtime": RUNTIME_V8,
        "code": {"local": {"filename": str(module)}},
    }
    if env or host_env_keys:
        variables: dict[str, Any] = {}
        if env:
            variables["key_values"] = dict(env)
        if host_env_keys:
            variables["host_env_keys"] = list(host_env_keys)
        vm_config["environment_variables"] = variables
    config: dict[str, Any] = {"name": name, "root_id": root_id, "vm_config": vm_config}
    if configuration is not None:
        config["configuration"] = {"@type": _STRING_VALUE_TYPE, "value": configuration}
    if failure_policy is not None:
        config["failure_policy"] = failure_policy
    return {"@type": WASM_HTTP_TYPE, "config": config}


def rbac_filter(*, allow: bool) -> dict[str, Any]:
    """istio-agent's stand-in for a module it could not fetch (pkg/wasm/convert.go): no rules
    allows everything, empty rules deny everything (403)."""
    if allow:
        return {"@type": RBAC_HTTP_TYPE, "rules_stat_prefix": DEFAULT_ALLOW_STAT_PREFIX}
    return {"@type": RBAC_HTTP_TYPE, "rules": {}, "rules_stat_prefix": DEFAULT_DENY_STAT_PREFIX}
