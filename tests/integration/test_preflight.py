"""Module pre-flight on the real local cluster, against a real OCI registry and real filter
modules: each layout Istio accepts is pinned to its manifest digest; each bad module is reported
with its reason and leaves the applied WasmPlugin exactly as it was."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from localcluster.oci_publish import ACCEPTED_LAYOUTS, REJECTED_LAYOUTS, publish
from localcluster.registry import Registry
from tests.support.kubectl import apply_json
from tests.support.releases import (
    NAME,
    TIMEOUT,
    condition,
    example,
    plugin,
    release,
    release_with,
    wait_events,
    wait_ready,
)
from tests.support.wasm import Published, wasm_module

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]


def wait_module_condition(cluster: LocalCluster, namespace: str, status: str) -> Any:
    def seen() -> bool:
        c = condition(release(cluster, namespace, NAME), "ModuleVerified")
        return bool(c and c["status"] == status and c.get("observedGeneration", 0) >= 2)

    cluster.wait_for(seen, timeout=TIMEOUT, what=f"ModuleVerified={status} for generation 2")
    return release(cluster, namespace, NAME)


@pytest.mark.parametrize("layout", ACCEPTED_LAYOUTS)
def test_each_accepted_layout_is_released_pinned_to_its_digest(
    istio_cluster: LocalCluster, namespace: str, published: Published, layout: str
) -> None:
    repository = f"filters/layout-{layout}"
    digest = publish(
        published.registry,
        repository,
        "v1",
        published.modules["security-headers"],
        layout,  # type: ignore[arg-type]
    )
    body = release_with(namespace, published, published.url("v1", repository))
    assert apply_json(istio_cluster, body).returncode == 0
    status = wait_ready(istio_cluster, namespace, NAME)["status"]
    pinned = f"oci://{published.registry}/{repository}@{digest}"
    live = plugin(istio_cluster, namespace, NAME)["spec"]
    assert live["url"] == pinned
    assert live["sha256"] == digest.removeprefix("sha256:")
    assert status["module"]["layout"] == layout
    assert status["module"]["abi"] == "proxy_abi_version_0_2_1"
    assert status["applied"]["version"] == "v1"


def _publish_bad(published: Published, case: str) -> tuple[str, dict[str, str]]:
    """Publish what a bad case needs; return its module URL and extra module fields."""
    reg = published.registry
    good = published.modules["security-headers"]
    if case == "missing-tag":
        return published.url("v9.9.9"), {}
    if case == "wrong-sha256":
        return published.url("v1.1.0"), {"sha256": "0" * 64}
    if case in REJECTED_LAYOUTS:
        publish(reg, f"filters/bad-{case}", "v1", good, case)
        return published.url("v1", f"filters/bad-{case}"), {}
    if case == "not-wasm":
        publish(reg, "filters/bad-not-wasm", "v1", b"#!/bin/sh\necho not a module\n", "oci-wasm")
        return published.url("v1", "filters/bad-not-wasm"), {}
    if case == "wasm-without-proxy-abi":
        publish(reg, "filters/bad-plain-wasm", "v1", wasm_module("main"), "oci-wasm")
        return published.url("v1", "filters/bad-plain-wasm"), {}
    raise AssertionError(case)


BAD = [
    ("missing-tag", "NotFound", "does not exist"),
    ("wrong-sha256", "ChecksumMismatch", "spec.module.sha256 is 0000"),
    ("oras-single", "UnsupportedFormat", "oras push"),
    ("compat-no-plugin", "UnsupportedFormat", "holds no file named plugin.wasm"),
    ("wasm-three-layers", "UnsupportedFormat", "3 layer(s)"),
    ("not-wasm", "InvalidModule", "not valid Wasm"),
    ("wasm-without-proxy-abi", "InvalidModule", "exports no proxy-wasm ABI version"),
]


@pytest.mark.parametrize(("case", "reason", "message"), BAD, ids=[c for c, _, _ in BAD])
def test_bad_module_is_reported_and_the_applied_plugin_untouched(
    istio_cluster: LocalCluster,
    namespace: str,
    published: Published,
    case: str,
    reason: str,
    message: str,
) -> None:
    assert (
        apply_json(istio_cluster, example(namespace, registry=published.registry)).returncode == 0
    )
    wait_ready(istio_cluster, namespace, NAME)
    before = plugin(istio_cluster, namespace, NAME)

    url, extra = _publish_bad(published, case)
    assert (
        apply_json(istio_cluster, release_with(namespace, published, url, **extra)).returncode == 0
    )
    body = wait_module_condition(istio_cluster, namespace, "False")
    verified = condition(body, "ModuleVerified")
    assert verified is not None
    assert verified["reason"] == reason
    assert message in verified["message"], verified["message"]
    assert body["status"]["phase"] == "Degraded"
    assert body["status"]["stable"]["url"] == published.pinned("v1.1.0")
    assert "the proxies keep version v1.1.0" in body["status"]["message"]
    after = plugin(istio_cluster, namespace, NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    found = wait_events(istio_cluster, namespace, NAME, "ModuleRejected")
    assert ("Warning", "ModuleRejected") in [e[:2] for e in found]


def _dockerconfig(registry: str, user: str, password: str) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"username": user, "password": password, "auth": auth}}})


def _secret(cluster: LocalCluster, namespace: str, config: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "registry-creds", "namespace": namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))


def test_pull_secret_is_honoured(
    istio_cluster: LocalCluster, namespace: str, published: Published
) -> None:
    reg = istio_cluster.auth_registry
    user, password = istio_cluster.registry_credentials
    digest = publish(
        reg.host, "private/security-headers", "v1", published.modules["security-headers"],
        "oci-compat", auth=(user, password),
    )  # fmt: skip
    url = f"oci://{reg.host}/private/security-headers:v1"

    def reason() -> str | None:
        c = condition(release(istio_cluster, namespace, NAME), "ModuleVerified")
        return f"{c['status']}/{c['reason']}: {c['message']}" if c else None

    body = release_with(namespace, published, url)
    assert apply_json(istio_cluster, body).returncode == 0
    istio_cluster.wait_for(lambda: "needs credentials" in (reason() or ""), timeout=TIMEOUT,
                           what="Unauthorized without a pull secret")  # fmt: skip
    assert reason().startswith("False/Unauthorized")  # type: ignore[union-attr]

    body["spec"]["module"]["imagePullSecret"] = "registry-creds"
    assert apply_json(istio_cluster, body).returncode == 0
    istio_cluster.wait_for(lambda: "does not exist" in (reason() or ""), timeout=TIMEOUT,
                           what="Unauthorized for a missing Secret")  # fmt: skip

    _secret(istio_cluster, namespace, _dockerconfig(reg.host, user, "wrong-password"))
    istio_cluster.wait_for(lambda: "were refused" in (reason() or ""), timeout=TIMEOUT,
                           what="Unauthorized for wrong credentials")  # fmt: skip
    assert plugin(istio_cluster, namespace, NAME) is None  # nothing was ever rendered

    _secret(istio_cluster, namespace, _dockerconfig(reg.host, user, password))
    status = wait_ready(istio_cluster, namespace, NAME, generation=2)["status"]
    assert status["module"]["url"] == f"oci://{reg.host}/private/security-headers@{digest}"
    live = plugin(istio_cluster, namespace, NAME)["spec"]
    assert live["imagePullSecret"] == "registry-creds"  # the proxies need it too
    assert live["url"].endswith(digest)


def test_a_module_verified_with_one_release_s_secret_is_not_taken_as_pullable_by_another(
    istio_cluster: LocalCluster, namespace: str, published: Published
) -> None:
    """Pre-flight remembers verified modules, but not across credentials: a release in another
    namespace that pins the same private digest without a pull secret is refused, as its
    proxies would be, instead of being waved through on the first release's verification."""
    reg = istio_cluster.auth_registry
    user, password = istio_cluster.registry_credentials
    digest = publish(
        reg.host, "private/shared", "v1", published.modules["security-headers"],
        "oci-compat", auth=(user, password),
    )  # fmt: skip
    pinned = f"oci://{reg.host}/private/shared@{digest}"
    _secret(istio_cluster, namespace, _dockerconfig(reg.host, user, password))
    body = release_with(namespace, published, pinned)
    body["spec"]["module"]["imagePullSecret"] = "registry-creds"
    assert apply_json(istio_cluster, body).returncode == 0
    wait_ready(istio_cluster, namespace, NAME, generation=1)

    other = f"{namespace}-nosecret"
    istio_cluster.kubectl("create", "namespace", other)
    try:
        assert apply_json(istio_cluster, release_with(other, published, pinned)).returncode == 0

        def reason() -> str | None:
            c = condition(release(istio_cluster, other, NAME), "ModuleVerified")
            return f"{c['status']}/{c['reason']}: {c['message']}" if c else None

        istio_cluster.wait_for(
            lambda: "needs credentials" in (reason() or ""),
            timeout=TIMEOUT,
            what="Unauthorized without a pull secret",
        )
        assert plugin(istio_cluster, other, NAME) is None
    finally:
        # Gone before the test ends: a release that keeps failing pre-flight is asked about at
        # every resync, which later tests counting the operator's registry requests would see.
        istio_cluster.kubectl("delete", "filterrelease", NAME, "-n", other, "--ignore-not-found")
        istio_cluster.kubectl("delete", "namespace", other, "--wait=false")


@pytest.fixture
def flaky_registry(tmp_path: Path) -> Iterator[Callable[[], Registry]]:
    """A registry that a test can stop and start again on the same port and storage."""
    instances: list[Registry] = []

    def start() -> Registry:
        port = instances[0].port if instances else None
        registry = Registry(tmp_path, name="flaky", port=port)
        registry.start()
        instances.append(registry)
        return registry

    try:
        yield start
    finally:
        for registry in instances:
            registry.stop()


def test_registry_down_holds_then_resumes(
    istio_cluster: LocalCluster,
    namespace: str,
    published: Published,
    flaky_registry: Callable[[], Registry],
) -> None:
    reg = flaky_registry()
    module = published.modules["security-headers"]
    publish(reg.host, "filters/sec", "v1", module, "oci-wasm")
    publish(reg.host, "filters/sec", "v2", module + b"\0\x02\x01v", "oci-wasm")
    body = release_with(namespace, published, f"oci://{reg.host}/filters/sec:v1")
    assert apply_json(istio_cluster, body).returncode == 0
    wait_ready(istio_cluster, namespace, NAME)
    before = plugin(istio_cluster, namespace, NAME)

    reg.stop()
    body["spec"]["module"]["url"] = f"oci://{reg.host}/filters/sec:v2"
    assert apply_json(istio_cluster, body).returncode == 0
    held = wait_module_condition(istio_cluster, namespace, "Unknown")
    assert condition(held, "ModuleVerified")["reason"] == "RegistryUnavailable"  # type: ignore[index]
    assert held["status"]["phase"] == "Progressing"
    assert condition(held, "Degraded")["status"] == "False"  # type: ignore[index]
    after = plugin(istio_cluster, namespace, NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    flaky_registry()  # back, same port and storage
    status = wait_ready(istio_cluster, namespace, NAME, generation=2)["status"]
    assert status["applied"]["version"] == "v2"


def test_resyncs_do_not_hit_the_registry(
    istio_cluster: LocalCluster, namespace: str, published: Published, operator: OperatorProcess
) -> None:
    assert (
        apply_json(istio_cluster, example(namespace, registry=published.registry)).returncode == 0
    )
    wait_ready(istio_cluster, namespace, NAME)
    fetches = operator.metric("filterrelease_module_fetches_total", kind="manifest")
    labels = {"namespace": namespace, "name": NAME, "trigger": "InSync"}
    start = operator.metric("filterrelease_reconcile_total", **labels)
    istio_cluster.wait_for(
        lambda: operator.metric("filterrelease_reconcile_total", **labels) >= start + 3,
        timeout=TIMEOUT,
        what="three resyncs",
    )
    assert operator.metric("filterrelease_module_fetches_total", kind="manifest") == fetches


class _ModuleServer(http.server.BaseHTTPRequestHandler):
    modules: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        data = self.modules.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def module_server(published: Published) -> Iterator[str]:
    _ModuleServer.modules = {"/security-headers.wasm": published.modules["security-headers"]}
    # Port 0: the kernel's choice, bound at once (a port picked, closed and bound again later
    # could be taken in between).
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModuleServer)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_module_is_checked_against_the_binary_sha256(
    istio_cluster: LocalCluster, namespace: str, published: Published, module_server: str
) -> None:
    url = f"{module_server}/security-headers.wasm"
    sha = hashlib.sha256(published.modules["security-headers"]).hexdigest()
    assert apply_json(istio_cluster, release_with(namespace, published, url)).returncode == 0
    status = wait_ready(istio_cluster, namespace, NAME)["status"]
    live = plugin(istio_cluster, namespace, NAME)["spec"]
    assert (live["url"], live["sha256"]) == (url, sha)
    assert status["module"]["layout"] == "http"

    body = release_with(namespace, published, url, sha256="f" * 64)
    assert apply_json(istio_cluster, body).returncode == 0
    failed = wait_module_condition(istio_cluster, namespace, "False")
    assert condition(failed, "ModuleVerified")["reason"] == "ChecksumMismatch"  # type: ignore[index]
    assert plugin(istio_cluster, namespace, NAME)["spec"]["sha256"] == sha


DRY_RUN = [
    ("config-rejecting", {}, "ConfigRejected", "rejecting the plugin configuration on purpose"),
    (
        "security-headers",
        {"frame_option": "DENY"},
        "ConfigRejected",
        'unknown key "frame_option"',
    ),
    (
        "panicky",
        {"panic_every": 1},
        "InvalidModule",
        "answered its first request in Envoy with HTTP 503",
    ),
]


@pytest.mark.parametrize(
    ("module", "config", "reason", "message"),
    DRY_RUN,
    ids=["rejects-config", "config-typo", "crashes"],
)
def test_dry_run_in_envoy_catches_what_only_loading_shows(
    istio_cluster: LocalCluster,
    namespace: str,
    published: Published,
    module: str,
    config: dict[str, Any],
    reason: str,
    message: str,
) -> None:
    v1 = example(namespace, registry=published.registry)
    assert apply_json(istio_cluster, v1).returncode == 0
    wait_ready(istio_cluster, namespace, NAME)
    before = plugin(istio_cluster, namespace, NAME)

    publish(published.registry, f"filters/{module}", "v1", published.modules[module], "oci-wasm")
    bad = release_with(namespace, published, published.url("v1", f"filters/{module}"))
    bad["spec"]["pluginConfig"] = config
    assert apply_json(istio_cluster, bad).returncode == 0
    body = wait_module_condition(istio_cluster, namespace, "False")
    verified = condition(body, "ModuleVerified")
    assert verified is not None
    assert verified["reason"] == reason
    assert message in verified["message"], verified["message"]
    after = plugin(istio_cluster, namespace, NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_released_modules_were_loaded_in_envoy(
    istio_cluster: LocalCluster, namespace: str, published: Published, operator: OperatorProcess
) -> None:
    v1 = example(namespace, registry=published.registry)
    assert apply_json(istio_cluster, v1).returncode == 0
    assert wait_ready(istio_cluster, namespace, NAME)["status"]["module"]["dryRun"] is True
    # The module stays loaded in a warm Envoy for the next pluginConfig, and its memory shows.
    assert operator.metric("filterrelease_dry_run_envoys") >= 1
    assert operator.metric("filterrelease_dry_run_memory_bytes") > 2**20
