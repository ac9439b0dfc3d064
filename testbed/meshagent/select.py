"""Which WasmPlugins apply to a pod's inbound sidecar HTTP chain, in chain order, as istiod does.

Pure: objects in, list out; no clock, no I/O. The rules, each from Istio 1.30.3 (1.28 has the
same rules under the older WasmPlugin names):

* Only the proxy's own namespace and the root namespace are looked in, in that order
  (pilot/pkg/model/push_context.go, TrafficExtensionsByListenerInfo: lookupInNamespaces =
  [proxy.ConfigNamespace, RootNamespace], duplicates removed).
* Within that, all plugins were first sorted by creationTimestamp, then name, then namespace
  (pilot/pkg/model/push_context.go initTrafficExtensions -> pilot/pkg/model/config.go
  sortConfigByCreationTime). Since 1.30 the name compared is the synthetic TrafficExtension's
  `<name>~istio-translated-wasmplugin` (pilot/pkg/config/kube/extensions/translate.go), which
  changes the order of names where one is a prefix of the other ("a~..." > "ab~...").
* Selection for a sidecar: a plugin with targetRef/targetRefs is ignored altogether; otherwise
  no selector selects every pod, else selector.matchLabels must be a subset of the pod's
  labels (pilot/pkg/model/policyattachment.go ShouldAttachPolicy / isSelected).
* Type: NETWORK plugins are not in the HTTP chain; HTTP and unspecified are
  (pilot/pkg/model/extensions.go MatchType, filterChainTypeFromPluginType).
* match: no entries matches; otherwise some entry must match both mode (UNDEFINED and
  CLIENT_AND_SERVER match everything; the sidecar inbound listener is SERVER) and ports (none
  given matches; else some `number` equals the listener port)
  (pilot/pkg/model/extensions.go matchTrafficExtensionSelectors, matchMode, matchPorts,
  workloadModeForListenerClass).
* Order: the chain takes AUTHN, then AUTHZ, then STATS, then unspecified-phase plugins
  (pilot/pkg/networking/core/listener_builder.go: PopAppendHTTPTrafficExtension per phase, with
  Istio's own authn and authz filters in between). Within a phase a STABLE sort by priority,
  high first, an unset priority counting as math.MinInt32, i.e. after an explicit 0
  (pilot/pkg/model/push_context.go sortByPriority). Ties therefore keep the lookup order:
  the pod's namespace before the root namespace, then creation time, then name.

Not modelled: gateways and waypoints (targetRefs, gateway-name label), outbound listeners,
TrafficExtension objects of 1.30, WasmPlugins istiod discards (unparsable URL or pluginConfig).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ROOT_NAMESPACE = "istio-system"
# The phases in the order the HTTP chain holds them (listener_builder.go).
PHASES = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE")
# Istio >= 1.30 (pilot/pkg/config/kube/extensions/translate.go, syntheticMarker).
TRANSLATED_SUFFIX = "~istio-translated-wasmplugin"
# The sidecar inbound listener's workload mode (extensions.go workloadModeForListenerClass).
INBOUND_MODE = "SERVER"
_UNSET_PRIORITY = -(2**31)  # math.MinInt32 in sortByPriority
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class WasmPlugin:
    """The parts of a WasmPlugin object that selection and the agent need."""

    namespace: str
    name: str
    creation_timestamp: datetime = _EPOCH
    resource_version: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> WasmPlugin:
        meta = obj.get("metadata") or {}
        created = meta.get("creationTimestamp")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            creation_timestamp=_parse_time(created) if created else _EPOCH,
            resource_version=str(meta.get("resourceVersion", "")),
            spec=obj.get("spec") or {},
        )

    @property
    def phase(self) -> str:
        phase = self.spec.get("phase") or "UNSPECIFIED_PHASE"
        return phase if phase in PHASES else "UNSPECIFIED_PHASE"

    @property
    def priority(self) -> int | None:
        value = self.spec.get("priority")
        return int(value) if value is not None else None

    @property
    def plugin_type(self) -> str:
        return str(self.spec.get("type") or "UNSPECIFIED_PLUGIN_TYPE")

    def has_target_refs(self) -> bool:
        return bool(self.spec.get("targetRefs")) or bool(self.spec.get("targetRef"))

    def sort_name(self, translated: bool) -> str:
        return self.name + TRANSLATED_SUFFIX if translated else self.name


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def is_selected(plugin: WasmPlugin, labels: Mapping[str, str]) -> bool:
    """policyattachment.go ShouldAttachPolicy for a non-gateway workload."""
    if plugin.has_target_refs():
        return False
    selector = plugin.spec.get("selector")
    if selector is None:
        return True
    match_labels: Mapping[str, str] = selector.get("matchLabels") or {}
    return all(labels.get(key) == value for key, value in match_labels.items())


def in_http_chain(plugin: WasmPlugin) -> bool:
    """extensions.go MatchType(FilterChainTypeHTTP): HTTP or unspecified, not NETWORK."""
    return plugin.plugin_type != "NETWORK"


def matches_listener(plugin: WasmPlugin, port: int, mode: str = INBOUND_MODE) -> bool:
    """extensions.go matchTrafficExtensionSelectors for a listener of `mode` on `port`."""
    selectors = plugin.spec.get("match") or []
    if not selectors:
        return True
    for selector in selectors:
        wanted = selector.get("mode") or "UNDEFINED"
        mode_ok = wanted in ("UNDEFINED", "CLIENT_AND_SERVER") or wanted == mode
        ports = selector.get("ports") or []
        ports_ok = not ports or any(
            int(p.get("number") or 0) != 0 and int(p.get("number") or 0) == port for p in ports
        )
        if mode_ok and ports_ok:
            return True
    return False


def creation_order(plugins: Iterable[WasmPlugin], *, translated: bool = True) -> list[WasmPlugin]:
    """config.go sortConfigByCreationTime: creation time, then name, then namespace."""
    return sorted(
        plugins,
        key=lambda p: (p.creation_timestamp, p.sort_name(translated), p.namespace),
    )


def select_plugins(
    plugins: Iterable[WasmPlugin],
    *,
    namespace: str,
    labels: Mapping[str, str],
    listener_port: int,
    root_namespace: str = ROOT_NAMESPACE,
    translated: bool = True,
) -> list[WasmPlugin]:
    """The plugins of the pod's inbound HTTP chain, first filter first.

    `translated`: Istio >= 1.30 (WasmPlugins become TrafficExtensions named
    `<name>~istio-translated-wasmplugin`, which only matters for creation-time ties)."""
    ordered = creation_order(plugins, translated=translated)
    lookup = [namespace] if namespace == root_namespace else [namespace, root_namespace]
    by_phase: dict[str, list[WasmPlugin]] = {phase: [] for phase in PHASES}
    for ns in lookup:
        for plugin in ordered:
            if plugin.namespace != ns:
                continue
            if (
                in_http_chain(plugin)
                and is_selected(plugin, labels)
                and matches_listener(plugin, listener_port)
            ):
                by_phase[plugin.phase].append(plugin)
    chain: list[WasmPlugin] = []
    for phase in PHASES:
        # sorted() is stable, as sort.SliceStable in sortByPriority.
        chain += sorted(by_phase[phase], key=_priority_key)
    return chain


def _priority_key(plugin: WasmPlugin) -> int:
    priority = plugin.priority
    return -(priority if priority is not None else _UNSET_PRIORITY)
