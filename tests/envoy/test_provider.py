"""filterrelease.providers.envoy: the pure bootstrap builder, and the process wrapper and
validator on the real Envoy."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterrelease.providers.envoy import EnvoyError, EnvoyProcess, validate_config
from filterrelease.providers.envoy_bootstrap import (
    RUNTIME_V8,
    WASM_FILTER,
    WasmFilter,
    bootstrap_config,
    lds_response,
    listener_config,
)
from tests.envoy.conftest import get

MODULE = Path("/modules/security-headers.wasm")


def addresses(node: Any) -> Iterator[str]:
    """Every socket address in a config."""
    if isinstance(node, dict):
        if "socket_address" in node:
            yield node["socket_address"]["address"]
        for value in node.values():
            yield from addresses(value)
    elif isinstance(node, list):
        for value in node:
            yield from addresses(value)


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return filters


def test_bootstrap_binds_loopback_only() -> None:
    config = bootstrap_config(
        listener_port=10000, upstream_port=10001, admin_port=10002, wasm=WasmFilter(MODULE, "f")
    )
    assert set(addresses(config)) == {"127.0.0.1"}
    assert config["admin"]["address"]["socket_address"]["port_value"] == 10002
    json.dumps(config)  # serialisable as is


def test_bootstrap_wasm_filter_before_router() -> None:
    wasm = WasmFilter(MODULE, "sec", configuration='{"version":"v1"}', root_id="r", vm_id="vm")
    filters = http_filters(bootstrap_config(listener_port=0, upstream_port=1, wasm=wasm))
    assert [f["name"] for f in filters] == [WASM_FILTER, "envoy.filters.http.router"]
    plugin = filters[0]["typed_config"]["config"]
    assert plugin["name"] == "sec"
    assert plugin["root_id"] == "r"
    assert plugin["vm_config"] == {
        "vm_id": "vm",
        "runtime": RUNTIME_V8,
        "code": {"local": {"filename": str(MODULE)}},
    }
    assert plugin["configuration"]["value"] == '{"version":"v1"}'
    assert plugin["fail_open"] is False
    assert "failure_policy" not in plugin


def test_bootstrap_defaults_ids_to_the_name() -> None:
    filters = http_filters(
        bootstrap_config(listener_port=0, upstream_port=1, wasm=WasmFilter(MODULE, "p"))
    )
    plugin = filters[0]["typed_config"]["config"]
    assert (plugin["root_id"], plugin["vm_config"]["vm_id"]) == ("p", "p")


def test_bootstrap_failure_policy_replaces_fail_open() -> None:
    wasm = WasmFilter(MODULE, "p", failure_policy="FAIL_RELOAD", reload_backoff_ms=250)
    plugin = http_filters(bootstrap_config(listener_port=0, upstream_port=1, wasm=wasm))[0][
        "typed_config"
    ]["config"]
    assert plugin["failure_policy"] == "FAIL_RELOAD"
    assert "fail_open" not in plugin
    assert plugin["reload_config"] == {"backoff": {"base_interval": "0.250s"}}


def test_bootstrap_without_wasm_is_just_the_router() -> None:
    filters = http_filters(bootstrap_config(listener_port=0, upstream_port=1))
    assert [f["name"] for f in filters] == ["envoy.filters.http.router"]


def test_bootstrap_with_lds_leaves_the_listener_out(tmp_path: Path) -> None:
    config = bootstrap_config(listener_port=0, upstream_port=1, lds_path=tmp_path / "lds.json")
    assert "listeners" not in config["static_resources"]
    assert config["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == str(
        tmp_path / "lds.json"
    )
    response = lds_response(listener_config(listener_port=0))
    assert response["resources"][0]["@type"] == response["type_url"]
    assert response["resources"][0]["name"] == "ingress"


def test_wasm_filter_rejects_a_backoff_that_crashes_envoy() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        WasmFilter(MODULE, "p", failure_policy="FAIL_RELOAD", reload_backoff_ms=1)
    with pytest.raises(ValueError, match="needs a name"):
        WasmFilter(MODULE, "")


@pytest.mark.envoy
@pytest.mark.parametrize(
    "variant",
    ["baseline", "stdout-log", "fail-open", "fail-reload", "lds"],
)
def test_envoy_validates_the_bootstraps(
    variant: str, modules: dict[str, Path], tmp_path: Path
) -> None:
    """The real Envoy (--mode validate) accepts every shape of bootstrap we build."""
    wasm = WasmFilter(modules["security-headers"], "security-headers", configuration="{}")
    variants: dict[str, dict[str, Any]] = {
        "baseline": {"access_log": tmp_path / "access.log"},
        "stdout-log": {"wasm": wasm},
        "fail-open": {"wasm": WasmFilter(wasm.module, wasm.name, fail_open=True)},
        "fail-reload": {
            "wasm": WasmFilter(
                wasm.module, wasm.name, failure_policy="FAIL_RELOAD", reload_backoff_ms=100
            )
        },
        "lds": {"wasm": wasm, "lds_path": tmp_path / "lds.json"},
    }
    kwargs = variants[variant]
    if variant == "lds":
        (tmp_path / "lds.json").write_text(
            json.dumps(lds_response(listener_config(listener_port=0, wasm=wasm)))
        )
    result = validate_config(bootstrap_config(listener_port=0, upstream_port=1, **kwargs), tmp_path)
    assert result.ok, result.output[-3000:]
    assert "OK" in result.output


@pytest.mark.envoy
def test_validate_runs_the_plugins_configuration(modules: dict[str, Path], tmp_path: Path) -> None:
    wasm = WasmFilter(modules["config-rejecting"], "config-rejecting", configuration="{}")
    result = validate_config(
        bootstrap_config(listener_port=0, upstream_port=1, wasm=wasm), tmp_path
    )
    assert not result.ok
    assert result.returncode == 1
    assert "config-rejecting: rejecting the plugin configuration on purpose" in result.output
    assert "Unable to create Wasm plugin config-rejecting" in result.output


@pytest.mark.envoy
def test_process_inline_config_fixed_base_id_and_stop(upstream_port: int, tmp_path: Path) -> None:
    """--config-yaml and an explicit --base-id; stop() ends the whole process group."""
    config = bootstrap_config(listener_port=0, upstream_port=upstream_port)
    base_id = 40000 + os.getpid() % 20000
    proc = EnvoyProcess(config, tmp_path, inline_config=True, base_id=base_id)
    try:
        proc.start(timeout=60)
        assert "--config-yaml" in proc.argv
        assert get(proc.listener_port()).status == 200
        pid = proc.pid
        assert pid is not None
    finally:
        proc.stop()
    assert not proc.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def never_ready_config(upstream_port: int, xds_port: int) -> dict[str, Any]:
    """A bootstrap Envoy runs but can never call ready: its listeners come over gRPC LDS from a
    port that refuses connections, and initial_fetch_timeout 0s makes Envoy wait for that
    first answer forever (a refused stream does not end the wait; it is retried)."""
    config = bootstrap_config(listener_port=0, upstream_port=upstream_port)
    del config["static_resources"]["listeners"]
    config["static_resources"]["clusters"].append(
        {
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "xds",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": xds_port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    config["dynamic_resources"] = {
        "lds_config": {
            "resource_api_version": "V3",
            "initial_fetch_timeout": "0s",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
        }
    }
    return config


@pytest.fixture
def refusing_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and nobody else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.envoy
def test_envoy_validates_the_never_ready_bootstrap(
    upstream_port: int, refusing_port: int, tmp_path: Path
) -> None:
    """The configuration below is one Envoy accepts: not being ready is all that is wrong."""
    result = validate_config(never_ready_config(upstream_port, refusing_port), tmp_path)
    assert result.ok, result.output[-3000:]


@pytest.mark.envoy
def test_process_not_ready_in_time_is_stopped(
    upstream_port: int, refusing_port: int, tmp_path: Path
) -> None:
    """An Envoy that runs but never becomes ready: start() gives up at its deadline, not
    before, and stops the process. Deterministic on any machine: no speed makes it ready."""
    config = never_ready_config(upstream_port, refusing_port)
    proc = EnvoyProcess(config, tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(EnvoyError, match=r"not ready after 1s"):
            proc.start(timeout=1.0)
        assert time.monotonic() - started >= 1.0
        assert not proc.alive()
        pid = proc.pid
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    finally:
        proc.stop()


@pytest.mark.envoy
def test_process_that_exits_reports_its_log(tmp_path: Path) -> None:
    config = bootstrap_config(listener_port=0, upstream_port=1)
    config["static_resources"]["clusters"][0]["type"] = "NO_SUCH_TYPE"
    proc = EnvoyProcess(config, tmp_path)
    try:
        with pytest.raises(EnvoyError, match="exited with status 1") as err:
            proc.start(timeout=60)
        assert "NO_SUCH_TYPE" in str(err.value)
    finally:
        proc.stop()
