"""What istiod sends a sidecar for one selected WasmPlugin (pure).

The ECDS resource istiod builds is a Wasm filter whose module is still REMOTE (an HTTP URI
with the plugin's url and sha256), plus hints for istio-agent in VM environment variables:
the pull secret's content, the pull policy, the plugin's resourceVersion
(pilot/pkg/model/extensions.go buildWasmConfig, buildVMConfig, buildDataSource;
pilot/pkg/networking/core/extension/extensionfilter.go updatePluginConfig). istio-agent then
fetches the module and rewrites the resource (meshagent.fetch). `RemoteWasm` holds exactly
that resource's content, flattened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from meshagent.select import WasmPlugin

# pilot/pkg/model/extensions.go (1.28: WasmPluginResourceNamePrefix).
RESOURCE_PREFIX_1_30 = "extensions.istio.io/trafficextension/"
RESOURCE_PREFIX_1_28 = "extensions.istio.io/wasmplugin/"
# Envoy's PluginConfig.failure_policy for each failStrategy (extensions.go buildWasmConfig;
# the enum's zero value is FAIL_CLOSE, so an unset failStrategy fails closed).
FAILURE_POLICIES = {
    "FAIL_CLOSE": "FAIL_CLOSED",
    "FAIL_OPEN": "FAIL_OPEN",
    "FAIL_RELOAD": "FAIL_RELOAD",
}


@dataclass(frozen=True)
class RemoteWasm:
    """One ECDS resource as istiod sends it (before istio-agent's rewrite)."""

    resource_name: str  # the HTTP filter's name in the listener and the ECDS resource name
    config_name: str  # PluginConfig.name: "<namespace>.<name>"
    root_id: str  # spec.pluginName
    configuration: str | None  # spec.pluginConfig as JSON; None when empty
    url: str  # with a scheme (none given means oci://)
    sha256: str
    # None: no imagePullSecret; b"": one is named but istiod could not read it.
    pull_secret: bytes | None
    pull_policy: str  # UNSPECIFIED_POLICY | IfNotPresent | Always
    resource_version: str
    failure_policy: str  # FAIL_CLOSED | FAIL_OPEN | FAIL_RELOAD
    env: tuple[tuple[str, str], ...] = ()
    host_env_keys: tuple[str, ...] = ()

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


def plugin_name(plugin: WasmPlugin, *, translated: bool) -> str:
    """The object's name inside istiod (1.30 translates WasmPlugins into TrafficExtensions
    named `<name>~istio-translated-wasmplugin`)."""
    return plugin.sort_name(translated)


def resource_name(plugin: WasmPlugin, *, translated: bool) -> str:
    prefix = RESOURCE_PREFIX_1_30 if translated else RESOURCE_PREFIX_1_28
    return f"{prefix}{plugin.namespace}.{plugin_name(plugin, translated=translated)}"


def pull_secret_name(plugin: WasmPlugin) -> str | None:
    """The Secret (in the plugin's namespace, whatever namespace the reference names) that
    holds the pull credentials (extensions.go: the namespace is forcibly the plugin's)."""
    ref = str(plugin.spec.get("imagePullSecret") or "")
    if not ref:
        return None
    ref = ref.removeprefix("kubernetes://")
    return ref.rsplit("/", 1)[-1] or None


def normalized_url(url: str) -> str:
    """extensions.go: "when no scheme is given, default to oci://"."""
    return url if "://" in url else f"oci://{url}"


def remote_wasm(
    plugin: WasmPlugin, *, translated: bool, pull_secret: bytes | None = None
) -> RemoteWasm:
    """The ECDS resource istiod sends for `plugin`; `pull_secret` is the .dockerconfigjson of
    the plugin's pull secret (b"" when it names one that is missing or of the wrong type)."""
    spec = plugin.spec
    config = spec.get("pluginConfig")
    configuration = json.dumps(config, separators=(",", ":"), sort_keys=True) if config else None
    env: list[tuple[str, str]] = []
    host_keys: list[str] = []
    for entry in (spec.get("vmConfig") or {}).get("env") or []:
        if entry.get("valueFrom", "INLINE") == "HOST":
            host_keys.append(str(entry["name"]))
        else:
            env.append((str(entry["name"]), str(entry.get("value", ""))))
    has_secret_ref = pull_secret_name(plugin) is not None
    return RemoteWasm(
        resource_name=resource_name(plugin, translated=translated),
        config_name=f"{plugin.namespace}.{plugin_name(plugin, translated=translated)}",
        root_id=str(spec.get("pluginName") or ""),
        configuration=configuration,
        url=normalized_url(str(spec.get("url") or "")),
        sha256=str(spec.get("sha256") or ""),
        pull_secret=(pull_secret or b"") if has_secret_ref else None,
        pull_policy=str(spec.get("imagePullPolicy") or "UNSPECIFIED_POLICY"),
        resource_version=plugin.resource_version,
        failure_policy=FAILURE_POLICIES.get(str(spec.get("failStrategy") or ""), "FAIL_CLOSED"),
        env=tuple(env),
        host_env_keys=tuple(host_keys),
    )
