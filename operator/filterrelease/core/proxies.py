"""What each selected proxy really runs, read from its Envoy, against what it should run. Pure.

Istio reports no per-proxy load status for WasmPlugins. Each sidecar's Envoy does: its admin
config dump lists the extension configs (ECDS) it accepted, as `istioctl proxy-config ecds`
shows them. A WasmPlugin `<ns>/<name>` reaches a proxy as one ECDS resource named
`extensions.istio.io/wasmplugin/<ns>.<name>` (Istio up to 1.29) or
`extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin` (1.30). After
istio-agent fetched the module, the resource is a Wasm filter whose module is a local file
named by its checksum (`<cache>/<sha256 of the URL>/<checksum>.wasm`; for an oci:// URL the
checksum is the manifest digest, which the operator pins in the URL) and whose configuration
is the pluginConfig as JSON. When istio-agent could not fetch or convert it, the resource is an
RBAC filter instead: no rules (allow everything: FAIL_OPEN) or empty rules (deny everything:
FAIL_CLOSE). Envoy keeps the last config it accepted when it rejects (NACKs) a new one, so
the dump is what serves.

A proxy confirms a version when its filter for the plugin that selects its pod carries that
version's module checksum and pluginConfig, and it has no filter of the release's other
plugin (one version per proxy).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from filterrelease.core.status import ModuleVersion

ISTIO_PROXY_CONTAINER = "istio-proxy"
ADMIN_PORT = 15000  # istio-proxy's Envoy admin
# The config dump's ECDS part only: the rest (clusters, listeners, secrets) is large and
# may carry things the operator has no need to read.
ECDS_DUMP_PATH = "/config_dump?resource=ecds_filters"
ECDS_PREFIXES = ("extensions.istio.io/wasmplugin/", "extensions.istio.io/trafficextension/")
TRANSLATED_SUFFIX = "~istio-translated-wasmplugin"
_WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
MAX_LAGGING_SHOWN = 10  # status.proxies.lagging names at most this many pods


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )


class FilterKind(StrEnum):
    WASM = "Wasm"
    DENY_ALL = "DenyAll"  # istio-agent's fallback for a module it could not fetch (FAIL_CLOSE)
    ALLOW_ALL = "AllowAll"  # the same for FAIL_OPEN: the filter is skipped
    OTHER = "Other"


class LoadedFilter(_Model):
    """One of the namespace's WasmPlugins as one proxy runs it."""

    plugin: str  # the WasmPlugin's name
    kind: FilterKind
    checksum: str | None = None  # the module's checksum (hex), for a Wasm filter
    configuration: Any = None  # the pluginConfig it runs with (parsed JSON), None if none


class ProxyReading(_Model):
    """What the shell read from one pod's proxy: its filters (the namespace's WasmPlugins, by
    plugin name), or why it could not read them."""

    filters: dict[str, LoadedFilter] | None = None
    error: str | None = None
    # The admin did not answer in time: a busy proxy (Envoy's main thread compiles a new module
    # and serves its admin), not one that cannot be read: it is waited for, never trusted.
    busy: bool = False


class Expected(_Model):
    """The filter one proxy should run: the plugin that selects its pod, and its version."""

    plugin: str
    other: str  # the release's other plugin: a proxy must not run both
    track: str  # stable or canary
    version: str  # the version's label, to show
    config_hash: str
    checksum: str | None
    plugin_config: dict[str, Any] | None = None


class Verdict(StrEnum):
    CONFIRMED = "Confirmed"  # runs the expected version, and only it
    PENDING = "Pending"  # runs nothing of the release yet, or the version it had before
    FALLBACK = "Fallback"  # runs istio-agent's deny-all/allow-all stand-in
    UNKNOWN = "Unknown"  # runs a version that is neither, or both plugins at once
    UNREACHABLE = "Unreachable"  # its admin could not be read


class PodCheck(_Model):
    verdict: Verdict
    runs: str  # what it runs, in words


# -- reading a config dump ---------------------------------------------------------------------


def plugin_of(resource_name: str, namespace: str) -> str | None:
    """The WasmPlugin name an ECDS resource carries, if it is one of `namespace`'s."""
    for prefix in ECDS_PREFIXES:
        if resource_name.startswith(prefix):
            rest = resource_name[len(prefix) :].removesuffix(TRANSLATED_SUFFIX)
            ns, _, name = rest.partition(".")
            return name if ns == namespace and name else None
    return None


def _ecds_entries(dump: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The TypedExtensionConfigs of a config dump, whole (`configs[].ecds_filters[]`) or asked
    for with ?resource=ecds_filters (`configs[]` are the entries themselves)."""
    for config in dump.get("configs") or ():
        if not isinstance(config, Mapping):
            continue
        entries = config.get("ecds_filters")
        for entry in entries if isinstance(entries, list) else (config,):
            ecds = entry.get("ecds_filter") if isinstance(entry, Mapping) else None
            if isinstance(ecds, Mapping):
                yield ecds


def _module_checksum(vm_config: Mapping[str, Any]) -> str | None:
    code = vm_config.get("code") or {}
    local = (code.get("local") or {}).get("filename")
    if isinstance(local, str) and local.endswith(".wasm"):
        return posixpath.basename(local).removesuffix(".wasm")
    remote = code.get("remote") or {}
    sha = remote.get("sha256")
    return sha if isinstance(sha, str) and sha else None


def _configuration(config: Mapping[str, Any]) -> Any:
    raw = config.get("configuration")
    value = raw.get("value") if isinstance(raw, Mapping) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def loaded_filter(plugin: str, typed_config: Mapping[str, Any]) -> LoadedFilter:
    kind = typed_config.get("@type")
    if kind == _RBAC_TYPE:
        denies = "rules" in typed_config  # empty rules deny everything; no rules allow all
        return LoadedFilter(
            plugin=plugin, kind=FilterKind.DENY_ALL if denies else FilterKind.ALLOW_ALL
        )
    if kind != _WASM_TYPE:
        return LoadedFilter(plugin=plugin, kind=FilterKind.OTHER)
    config = typed_config.get("config") or {}
    return LoadedFilter(
        plugin=plugin,
        kind=FilterKind.WASM,
        checksum=_module_checksum(config.get("vm_config") or {}),
        configuration=_configuration(config),
    )


def parse_ecds_dump(dump: Mapping[str, Any], namespace: str) -> dict[str, LoadedFilter]:
    """The namespace's WasmPlugins one proxy runs, by plugin name."""
    found: dict[str, LoadedFilter] = {}
    for ecds in _ecds_entries(dump):
        plugin = plugin_of(str(ecds.get("name") or ""), namespace)
        if plugin is not None:
            found[plugin] = loaded_filter(plugin, ecds.get("typed_config") or {})
    return found


# -- judging -------------------------------------------------------------------------------------


def module_checksum(version: ModuleVersion) -> str | None:
    """The checksum istio-agent names the module file by: the digest an oci:// URL is pinned
    to, otherwise the sha256 the WasmPlugin carries."""
    if "@sha256:" in version.url:
        return version.url.rsplit("@sha256:", 1)[1]
    return version.sha256.removeprefix("sha256:") if version.sha256 else None


def expected(plugin: str, other: str, track: str, version: ModuleVersion) -> Expected:
    return Expected(
        plugin=plugin,
        other=other,
        track=track,
        version=version.version,
        config_hash=version.config_hash,
        checksum=module_checksum(version),
        plugin_config=version.plugin_config,
    )


def _runs(loaded: LoadedFilter, versions: Mapping[str, str]) -> str:
    if loaded.kind is FilterKind.DENY_ALL:
        return "deny-all fallback (module not loaded)"
    if loaded.kind is FilterKind.ALLOW_ALL:
        return "allow-all fallback (module not loaded)"
    if loaded.kind is FilterKind.OTHER:
        return "a filter that is not Wasm"
    short = (loaded.checksum or "?")[:12]
    return versions.get(loaded.checksum or "", f"module {short}")


def _matches(loaded: LoadedFilter, want: Expected) -> bool:
    return (
        loaded.kind is FilterKind.WASM
        and (want.checksum is None or loaded.checksum == want.checksum)
        and (loaded.configuration or None) == (want.plugin_config or None)
    )


def check_pod(
    want: Expected, reading: ProxyReading, known: Mapping[str, Expected] = {}
) -> PodCheck:
    """Whether one proxy runs what it should. `known`: the release's versions in play (stable,
    canary) by checksum, so a proxy still on the other one reads as pending, not unknown."""
    if reading.filters is None:
        verdict = Verdict.PENDING if reading.busy else Verdict.UNREACHABLE
        return PodCheck(verdict=verdict, runs=reading.error or "admin not readable")
    names = {c: k.version for c, k in known.items()}
    mine = reading.filters.get(want.plugin)
    theirs = reading.filters.get(want.other)
    if mine is not None and theirs is not None:
        # Both plugins' configs are in the dump while the listener changes over from one to
        # the other (the old listener drains): not there yet, and not a failure.
        both = f"{_runs(theirs, names)}, changing over to {_runs(mine, names)}"
        return PodCheck(verdict=Verdict.PENDING, runs=both)
    loaded = mine or theirs
    if loaded is None:
        return PodCheck(verdict=Verdict.PENDING, runs="no filter of this release yet")
    runs = _runs(loaded, names)
    if loaded.kind in (FilterKind.DENY_ALL, FilterKind.ALLOW_ALL):
        return PodCheck(verdict=Verdict.FALLBACK, runs=runs)
    if mine is not None and _matches(mine, want):
        return PodCheck(verdict=Verdict.CONFIRMED, runs=want.version)
    if loaded.kind is FilterKind.WASM and any(_matches(loaded, k) for k in known.values()):
        return PodCheck(verdict=Verdict.PENDING, runs=runs)
    return PodCheck(verdict=Verdict.UNKNOWN, runs=runs)
