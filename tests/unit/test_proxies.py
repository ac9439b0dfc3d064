"""What a proxy runs, read from its Envoy's ECDS dump, and whether the proxies confirm a layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from filterrelease.core.confirmation import check_proxies, proxy_needs
from filterrelease.core.module import VerifiedModule
from filterrelease.core.observation import Observation, derive
from filterrelease.core.proxies import (
    FilterKind,
    ProxyReading,
    Verdict,
    check_pod,
    expected,
    module_checksum,
    parse_ecds_dump,
    plugin_of,
)
from filterrelease.core.render import ReleaseRef, module_version
from filterrelease.core.rollout import decide
from filterrelease.core.rollout_state import Phase, Trigger
from filterrelease.core.spec import parse_spec
from filterrelease.core.status import ConditionType, FilterReleaseStatus

DIGEST = "ab" * 32
OTHER = "cd" * 32
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def wasm(checksum: str, config: str | None) -> dict[str, Any]:
    inner: dict[str, Any] = {
        "name": "shop.headers",
        "root_id": "headers",
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": f"/var/lib/istio/data/0f0f/{checksum}.wasm"}},
        },
    }
    if config is not None:
        inner["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": config,
        }
    return {"@type": WASM, "config": inner}


def dump(*entries: tuple[str, dict[str, Any]], whole: bool = False) -> dict[str, Any]:
    """A config dump as Envoy's admin gives it, asked for ?resource=ecds_filters (each config
    is one entry) or whole (one EcdsConfigDump holding them)."""
    items = [
        {
            "version_info": "3",
            "ecds_filter": {
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": name,
                "typed_config": typed,
            },
            "last_updated": "2026-12-04T12:00:00Z",
        }
        for name, typed in entries
    ]
    if whole:
        return {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump",
                    "ecds_filters": items,
                }
            ]
        }
    return {"configs": [{"@type": "x.EcdsFilterConfig", **i} for i in items]}


def test_both_istio_resource_names_are_read() -> None:
    assert plugin_of("extensions.istio.io/wasmplugin/shop.headers", "shop") == "headers"
    translated = "extensions.istio.io/trafficextension/shop.headers~istio-translated-wasmplugin"
    assert plugin_of(translated, "shop") == "headers"
    assert plugin_of("extensions.istio.io/wasmplugin/other.headers", "shop") is None
    assert plugin_of("envoy.filters.http.router", "shop") is None


def test_a_wasm_filter_and_the_fallbacks_are_told_apart() -> None:
    found = parse_ecds_dump(
        dump(
            ("extensions.istio.io/wasmplugin/shop.headers", wasm(DIGEST, '{"version":"v1"}')),
            ("extensions.istio.io/wasmplugin/shop.denied", {"@type": RBAC, "rules": {}}),
            ("extensions.istio.io/wasmplugin/shop.allowed", {"@type": RBAC}),
            ("extensions.istio.io/wasmplugin/other.headers", wasm(OTHER, None)),
        ),
        "shop",
    )
    assert set(found) == {"headers", "denied", "allowed"}
    assert found["headers"].kind is FilterKind.WASM
    assert found["headers"].checksum == DIGEST
    assert found["headers"].configuration == {"version": "v1"}
    assert found["denied"].kind is FilterKind.DENY_ALL
    assert found["allowed"].kind is FilterKind.ALLOW_ALL
    whole = parse_ecds_dump(
        dump(("extensions.istio.io/wasmplugin/shop.headers", wasm(DIGEST, None)), whole=True),
        "shop",
    )
    assert whole["headers"].checksum == DIGEST
    assert whole["headers"].configuration is None


def version(config: dict[str, Any], digest: str = DIGEST) -> Any:
    spec = parse_spec(
        {
            "selector": {"matchLabels": {"app": "web"}},
            "module": {"url": f"oci://registry.local/filters/h@sha256:{digest}"},
            "pluginConfig": config,
        }
    )
    return module_version(spec, 1, verified(digest))  # type: ignore[arg-type]


def verified(digest: str) -> VerifiedModule:
    return VerifiedModule(
        source_url=f"oci://registry.local/filters/h@sha256:{digest}",
        url=f"oci://registry.local/filters/h@sha256:{digest}",
        sha256=digest,
        layout="oci-wasm",
        abi="proxy_abi_version_0_2_1",
        generation=1,
    )


def reading(*entries: tuple[str, dict[str, Any]]) -> ProxyReading:
    return ProxyReading(filters=parse_ecds_dump(dump(*entries), "shop"))


def test_each_pod_verdict() -> None:
    v1, v2 = version({"version": "v1"}, DIGEST), version({"version": "v2"}, OTHER)
    assert module_checksum(v1) == DIGEST
    want = expected("headers-canary", "headers", "canary", v2)
    known = {
        DIGEST: expected("headers", "headers-canary", "stable", v1),
        OTHER: want,
    }
    stable_name = "extensions.istio.io/wasmplugin/shop.headers"
    canary_name = "extensions.istio.io/wasmplugin/shop.headers-canary"
    runs_v2 = reading((canary_name, wasm(OTHER, '{"version":"v2"}')))
    assert check_pod(want, runs_v2, known).verdict is Verdict.CONFIRMED
    still_v1 = reading((stable_name, wasm(DIGEST, '{"version":"v1"}')))
    assert check_pod(want, still_v1, known).verdict is Verdict.PENDING
    changing = reading(
        (stable_name, wasm(DIGEST, '{"version":"v1"}')),
        (canary_name, wasm(OTHER, '{"version":"v2"}')),
    )
    assert check_pod(want, changing, known).verdict is Verdict.PENDING
    denied = reading((canary_name, {"@type": RBAC, "rules": {}}))
    check = check_pod(want, denied, known)
    assert check.verdict is Verdict.FALLBACK
    assert "deny-all" in check.runs
    stale_config = reading((canary_name, wasm(OTHER, '{"version":"v3"}')))
    assert check_pod(want, stale_config, known).verdict is Verdict.UNKNOWN
    nothing = ProxyReading(filters={})
    assert check_pod(want, nothing, known).verdict is Verdict.PENDING
    unreadable = ProxyReading(error="port-forward refused (403)")
    assert check_pod(want, unreadable, known).verdict is Verdict.UNREACHABLE
    # A proxy too busy to answer in time (compiling the new module) is waited for, not trusted.
    busy = ProxyReading(error="admin did not answer within 3s", busy=True)
    assert check_pod(want, busy, known).verdict is Verdict.PENDING


def observation(
    proxies: dict[str, ProxyReading], *, now: datetime = NOW, status: Any = None
) -> Observation:
    spec = parse_spec(
        {
            "selector": {"matchLabels": {"app": "web"}},
            "module": {"url": f"oci://registry.local/filters/h@sha256:{DIGEST}"},
            "pluginConfig": {"version": "v1"},
            "proxyConfirmation": {"timeoutSeconds": 30},
        }
    )
    release = ReleaseRef(namespace="shop", name="headers", uid="u1", generation=1)
    base = Observation(
        release=release,
        spec=spec,
        status=status or FilterReleaseStatus(),
        live_plugins={},
        module=verified(DIGEST),
        now=now,
        pods={"web-0": {"app": "web"}, "web-1": {"app": "web"}},
        sidecars={"web-0": "u-0", "web-1": "u-1"},
        proxies=proxies,
    )
    return base


def written(obs: Observation) -> Observation:
    """The observation after the first decision's WasmPlugin write is live."""
    first = decide(obs)
    manifest = next(a.manifest for a in first.actions if hasattr(a, "manifest"))
    assert first.trigger is Trigger.CONVERGING  # written; Ready waits for the proxies
    assert first.phase is Phase.PROGRESSING
    return obs.model_copy(update={"live_plugins": {"headers": manifest}, "status": first.status})


V1 = ("extensions.istio.io/wasmplugin/shop.headers", wasm(DIGEST, '{"version":"v1"}'))


def test_a_direct_release_is_ready_once_every_proxy_confirms() -> None:
    obs = written(observation({}))
    assert set(proxy_needs(obs, derive(obs))) == {"web-0", "web-1"}
    half = obs.model_copy(update={"proxies": {"web-0": reading(V1), "web-1": reading()}})
    waiting = decide(half)
    assert waiting.trigger is Trigger.CONVERGING
    assert waiting.status.proxies is not None
    assert waiting.status.proxies.ready == "1/2"
    assert waiting.status.stable is None  # not the last known good before the proxies say so
    assert waiting.requeue_after is not None
    both = half.model_copy(update={"proxies": {"web-0": reading(V1), "web-1": reading(V1)},
                                   "status": waiting.status})  # fmt: skip
    done = decide(both)
    assert done.trigger is Trigger.IN_SYNC
    assert done.phase is Phase.HEALTHY
    assert done.status.proxies is not None
    assert done.status.proxies.ready == "2/2"
    assert done.status.stable is not None
    ready = done.status.condition(ConditionType.READY)
    assert ready is not None
    assert ready.status == "True"


def test_past_the_timeout_the_lagging_proxies_are_named() -> None:
    obs = written(observation({}))
    first = decide(obs.model_copy(update={"proxies": {"web-0": reading(V1), "web-1": reading()}}))
    later = obs.model_copy(
        update={
            "now": NOW + timedelta(seconds=31),
            "status": first.status,
            "proxies": {"web-0": reading(V1), "web-1": reading()},
        }
    )
    late = decide(later)
    assert late.trigger is Trigger.NOT_CONVERGED
    assert late.phase is Phase.DEGRADED
    assert "web-1" in (late.status.message or "")
    assert "not converged after 30s" in (late.status.message or "")


def test_a_deny_all_fallback_degrades_a_direct_release_at_once() -> None:
    obs = written(observation({}))
    denied = ("extensions.istio.io/wasmplugin/shop.headers", {"@type": RBAC, "rules": {}})
    bad = decide(
        obs.model_copy(update={"proxies": {"web-0": reading(V1), "web-1": reading(denied)}})
    )
    assert bad.trigger is Trigger.NOT_CONVERGED
    assert "deny-all fallback" in (bad.status.message or "")


def test_unreachable_proxies_are_trusted_without_a_canary_by_default() -> None:
    obs = written(observation({}))
    gone = ProxyReading(error="port-forward refused (403)")
    trusted = decide(obs.model_copy(update={"proxies": {"web-0": gone, "web-1": gone}}))
    assert trusted.trigger is Trigger.IN_SYNC
    assert trusted.status.proxies is not None
    assert trusted.status.proxies.unreachable == 2
    assert check_proxies(
        obs.model_copy(update={"proxies": {"web-0": gone, "web-1": gone}}), derive(obs)
    ).unreachable
