"""The mesh agent's WasmPlugin selection and ordering (istiod's rules), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meshagent.select import ROOT_NAMESPACE, WasmPlugin, select_plugins

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def plugin(name: str, namespace: str = "app", *, age: int = 0, **spec: Any) -> WasmPlugin:
    """A plugin created `age` seconds after T0."""
    return WasmPlugin(namespace, name, T0 + timedelta(seconds=age), "1", spec)


def names(
    plugins: list[WasmPlugin],
    labels: dict[str, str] | None = None,
    *,
    namespace: str = "app",
    port: int = 8080,
    translated: bool = True,
) -> list[str]:
    chosen = select_plugins(
        plugins,
        namespace=namespace,
        labels=labels if labels is not None else {"app": "a", "version": "v1"},
        listener_port=port,
        translated=translated,
    )
    return [p.name for p in chosen]


SELECTION_CASES: list[tuple[str, list[WasmPlugin], list[str]]] = [
    ("no selector: every pod of the namespace", [plugin("all")], ["all"]),
    (
        "matchLabels is a subset of the pod's labels",
        [
            plugin("a", selector={"matchLabels": {"app": "a"}}),
            plugin("a-v1", age=1, selector={"matchLabels": {"app": "a", "version": "v1"}}),
            plugin("b", selector={"matchLabels": {"app": "b"}}),
            plugin("a-v2", selector={"matchLabels": {"app": "a", "version": "v2"}}),
            plugin("extra", selector={"matchLabels": {"app": "a", "tier": "web"}}),
        ],
        ["a", "a-v1"],
    ),
    ("empty matchLabels selects all", [plugin("e", selector={"matchLabels": {}})], ["e"]),
    (
        "other namespaces do not apply, the root namespace does",
        [
            plugin("mine"),
            plugin("theirs", "other"),
            plugin("root", ROOT_NAMESPACE, age=1),
            plugin("root-b", ROOT_NAMESPACE, selector={"matchLabels": {"app": "b"}}),
        ],
        ["mine", "root"],
    ),
    (
        "targetRef or targetRefs: ignored for sidecars",
        [
            plugin("ref", targetRef={"kind": "Gateway", "name": "gw"}),
            plugin("refs", targetRefs=[{"kind": "Service", "name": "a"}]),
            plugin("both", selector={}, targetRefs=[{"kind": "Service", "name": "a"}]),
            plugin("plain"),
        ],
        ["plain"],
    ),
    (
        "NETWORK plugins are not in the HTTP chain",
        [plugin("net", type="NETWORK"), plugin("http", type="HTTP"), plugin("unset", age=1)],
        ["http", "unset"],
    ),
    (
        "match.mode: SERVER, UNDEFINED, CLIENT_AND_SERVER apply inbound; CLIENT does not",
        [
            plugin("server", match=[{"mode": "SERVER"}]),
            plugin("undefined", age=1, match=[{"mode": "UNDEFINED"}]),
            plugin("both", age=2, match=[{"mode": "CLIENT_AND_SERVER"}]),
            plugin("client", age=3, match=[{"mode": "CLIENT"}]),
            plugin("no-mode", age=4, match=[{"ports": [{"number": 8080}]}]),
        ],
        ["server", "undefined", "both", "no-mode"],
    ),
    (
        "match.ports must include the listener port",
        [
            plugin("8080", match=[{"ports": [{"number": 9090}, {"number": 8080}]}]),
            plugin("9090", age=1, match=[{"ports": [{"number": 9090}]}]),
            plugin("client-8080", age=2, match=[{"mode": "CLIENT", "ports": [{"number": 8080}]}]),
        ],
        ["8080"],
    ),
    (
        "any one match entry is enough",
        [
            plugin(
                "any", match=[{"mode": "CLIENT"}, {"mode": "SERVER", "ports": [{"number": 8080}]}]
            )
        ],
        ["any"],
    ),
]


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [pytest.param(p, e, id=i) for i, p, e in SELECTION_CASES],
)
def test_selection(plugins: list[WasmPlugin], expected: list[str]) -> None:
    assert names(plugins) == expected


def test_port_zero_matches_no_port_selector() -> None:
    plugins = [plugin("ported", match=[{"ports": [{"number": 0}]}]), plugin("free", age=1)]
    assert names(plugins, port=0) == ["free"]


def test_root_namespace_pod_sees_each_plugin_once() -> None:
    plugins = [plugin("root", ROOT_NAMESPACE)]
    assert names(plugins, namespace=ROOT_NAMESPACE) == ["root"]


ORDER_CASES: list[tuple[str, list[WasmPlugin], list[str]]] = [
    (
        "phases: AUTHN, AUTHZ, STATS, then unspecified, whatever the priority",
        [
            plugin("none", priority=1000),
            plugin("stats", phase="STATS", priority=-5),
            plugin("authz", phase="AUTHZ"),
            plugin("authn", phase="AUTHN", priority=-1000),
            plugin("explicit-unspecified", age=1, phase="UNSPECIFIED_PHASE", priority=999),
        ],
        ["authn", "authz", "stats", "none", "explicit-unspecified"],
    ),
    (
        "within a phase: higher priority first",
        [
            plugin("low", phase="AUTHZ", priority=1),
            plugin("high", phase="AUTHZ", priority=100),
            plugin("negative", phase="AUTHZ", priority=-3),
        ],
        ["high", "low", "negative"],
    ),
    (
        "unset priority comes after an explicit 0 and after negatives",
        [
            plugin("unset", priority=None),
            plugin("zero", age=5, priority=0),
            plugin("minus", age=9, priority=-7),
        ],
        ["zero", "minus", "unset"],
    ),
    (
        "ties: older first",
        [plugin("young", age=10, priority=5), plugin("old", age=1, priority=5)],
        ["old", "young"],
    ),
    (
        "ties in the same second: by name",
        [plugin("b"), plugin("a"), plugin("c")],
        ["a", "b", "c"],
    ),
    (
        "ties across namespaces: the pod's namespace before the root namespace, even if younger",
        [plugin("root", ROOT_NAMESPACE, age=0), plugin("local", age=60)],
        ["local", "root"],
    ),
    (
        "priority still beats namespace",
        [plugin("root", ROOT_NAMESPACE, priority=10), plugin("local", priority=1)],
        ["root", "local"],
    ),
]


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [pytest.param(p, e, id=i) for i, p, e in ORDER_CASES],
)
def test_order(plugins: list[WasmPlugin], expected: list[str]) -> None:
    assert names(plugins) == expected


@pytest.mark.parametrize(
    ("translated", "expected"),
    [
        # 1.28 compares the plain names: "a" < "ab".
        pytest.param(False, ["a", "ab"], id="istio-1.28"),
        # 1.30 compares "a~istio-translated-wasmplugin" with "ab~...": '~' sorts after 'b'.
        pytest.param(True, ["ab", "a"], id="istio-1.30"),
    ],
)
def test_same_second_name_tie_break_by_version(translated: bool, expected: list[str]) -> None:
    plugins = [plugin("a"), plugin("ab")]
    assert names(plugins, translated=translated) == expected


def test_from_object_reads_what_the_apiserver_sends() -> None:
    obj = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {
            "name": "headers",
            "namespace": "shop",
            "creationTimestamp": "2026-03-04T05:06:07Z",
            "resourceVersion": "42",
        },
        "spec": {"url": "oci://r/x:1", "phase": "STATS", "priority": 7},
    }
    p = WasmPlugin.from_object(obj)
    assert (p.namespace, p.name, p.resource_version) == ("shop", "headers", "42")
    assert p.creation_timestamp == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert (p.phase, p.priority, p.plugin_type) == ("STATS", 7, "UNSPECIFIED_PLUGIN_TYPE")
