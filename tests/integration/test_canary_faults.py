"""Faulty versions the canary must catch that test_canary_e2e does not cover: a module the
proxies cannot fetch although pre-flight verified it, and a module that rejects its
pluginConfig, first stopped by the operator's Envoy dry run and then, with the dry run off, by
the canary itself.

The same real parts as test_canary_e2e (the operator under its own ServiceAccount, a real Envoy
per pod running the real filters, the real registry and Prometheus), with steady traffic
through every sidecar recording which filter versions answered each response.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from devcluster.operator_process import OperatorProcess
from localcluster.oci_publish import publish
from localcluster.registry import Registry
from meshtraffic.podlogs import CONTAINER
from tests.integration.conftest import with_custom_section
from tests.integration.test_canary_e2e import (
    NS,
    PODS,
    RELEASE,
    STEPS,
    Mesh,
    Traffic,
    brief,
    install_v1,
    operated_mesh,
    status,
    versions_of,
)
from tests.integration.test_canary_e2e import (
    report as report_mesh,
)
from tests.integration.test_meshtraffic import poll

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

TRACK = f"track.filterrelease.dev/{RELEASE}"
GROUP, VERSION, PLURAL = "filterrelease.dev", "v1alpha1", "filterreleases"
# A security-headers configuration with a typo: the filter's strict decoder refuses the unknown
# key at plugin start, the most ordinary way for a release to carry a config Envoy rejects.
TYPO_CONFIG = {"version": "bad", "frame_option": "DENY"}


@dataclass
class FaultMesh(Mesh):
    wasm: dict[str, bytes] = field(default_factory=dict)  # filters/ modules, by name
    workdir: Path = Path()


@contextmanager
def faulty_mesh(
    workdir: Path,
    wasm: dict[str, bytes],
    *,
    operator_env: Mapping[str, str] | None = None,
    report: bool = True,
) -> Iterator[FaultMesh]:
    """A MeshCluster with the operator running, v1 (security-headers) published and a meshed
    Deployment of PODS pods serving: test_canary_e2e's, for this module and the bench."""
    with operated_mesh(workdir, operator_env) as (cluster, operator):
        found = FaultMesh(cluster, operator, wasm=wasm, workdir=workdir)
        found.modules["security-headers"], _ = publish_module(found, "security-headers", "v1")
        try:
            yield found
        finally:
            if report:
                # found.operator: a test may have swapped the operator for another one.
                report_mesh(found)


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, filter_modules: dict[str, bytes]
) -> Iterator[FaultMesh]:
    with faulty_mesh(tmp_path_factory.mktemp("canary-faults"), filter_modules) as found:
        yield found


def publish_module(mesh: FaultMesh, name: str, tag: str) -> tuple[str, str]:
    """Publish filters/<name> made unique by `tag` (a custom section: same code, its own
    digest, so no blob is shared with another version); (pinned oci:// URL, the digest of the
    layer holding the module)."""
    wasm = with_custom_section(mesh.wasm[name], "filterrelease.faults", tag.encode())
    digest = publish(mesh.cluster.registry.host, f"filters/{name}", None, wasm, "oci-wasm")
    # In the oci-wasm layout the module layer is the raw module: its digest is the module's.
    layer = "sha256:" + hashlib.sha256(wasm).hexdigest()
    return f"oci://{mesh.cluster.registry.host}/filters/{name}@{digest}", layer


def blob_data(registry: Registry, digest: str) -> Path:
    """Where docker-registry's filesystem driver keeps a blob's bytes (one file per digest,
    shared by every repository)."""
    hex_digest = digest.removeprefix("sha256:")
    blobs = registry.storage_dir / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return blobs / hex_digest[:2] / hex_digest / "data"


def lose_blob(registry: Registry, repository: str, digest: str) -> None:
    """Delete a blob's bytes behind the registry's back, as a garbage collection that raced a
    push, or a storage outage, would; the manifest still resolves."""
    data = blob_data(registry, digest)
    assert data.is_file(), f"no blob at {data}: docker-registry's storage layout changed?"
    data.unlink()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(f"{registry.url}/v2/{repository}/blobs/{digest}", timeout=5).close()
    assert err.value.code == 404, err.value  # the registry itself no longer serves it
    err.value.close()


class Gate:
    """A pre-rollout webhook receiver on loopback: answers 403 until opened, then 200."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.calls = 0
        self.payloads: list[dict[str, Any]] = []
        lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    gate.calls += 1
                    gate.payloads.append(json.loads(body or b"{}"))
                answer = b"open" if gate.opened.is_set() else b"held by the test"
                self.send_response(200 if gate.opened.is_set() else 403)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: pytest shows the calls through `payloads` when it matters

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="gate")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/gate/pre-rollout"

    def __enter__(self) -> Gate:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def faulty_release(
    mesh: Mesh,
    module: str,
    config: dict[str, Any],
    *,
    webhooks: Sequence[dict[str, str]] = (),
    steps: Sequence[Any] = STEPS,
) -> None:
    """test_canary_e2e.release(), with webhooks (its release() has no place for them)."""
    canary: dict[str, Any] = {"steps": list(steps)}
    if webhooks:
        canary["webhooks"] = list(webhooks)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FilterRelease",
        "metadata": {"name": RELEASE, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "phase": "AUTHN",
            "priority": 10,
            "failStrategy": "FAIL_CLOSE",
            "module": {"url": mesh.modules[module]},
            "pluginConfig": config,
            "strategy": {"canary": canary},
        },
    }
    mesh.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


class Watcher:
    """Watches the workload's pods and the release through the API (watch streams: every
    change arrives, within milliseconds; a poll could miss a pod that is canary for less than
    a second, which a fast rollback does): which pods were ever on the canary track, and the
    monotonic times the status first said the rollout was aborted (the decision to roll back)
    and rolled back (every pod back)."""

    def __init__(self, mesh: Mesh) -> None:
        self.canary_pods: set[str] = set()
        self.aborted: str | None = None
        self.aborted_seen: float | None = None
        self.rolled_back_seen: float | None = None
        self._api = config.new_client_from_config(str(mesh.cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        core = client.CoreV1Api(self._api)
        custom = client.CustomObjectsApi(self._api)
        self._threads = [
            threading.Thread(
                target=self._watch,
                args=(core.list_namespaced_pod, (NS,), {"label_selector": "app=web"}, self._pod),
                name="watch-pods",
                daemon=True,
            ),
            threading.Thread(
                target=self._watch,
                args=(
                    custom.list_namespaced_custom_object,
                    (GROUP, VERSION, NS, PLURAL),
                    {"field_selector": f"metadata.name={RELEASE}"},
                    self._release,
                ),
                name="watch-release",
                daemon=True,
            ),
        ]
        self._ready = threading.Barrier(len(self._threads) + 1)

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        try:
            self._ready.wait(timeout=30)  # both listed: nothing from here on is missed
        except threading.BrokenBarrierError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._api.close()

    def _watch(
        self,
        list_fn: Callable[..., Any],
        args: tuple[str, ...],
        selector: dict[str, str],
        seen: Callable[[Any], None],
    ) -> None:
        version: str | None = None
        first = True
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = list_fn(*args, **selector, _request_timeout=10)
                    items, meta = _field(listing, "items"), _field(listing, "metadata")
                    for item in items:
                        seen(item)
                    version = _field(meta, "resource_version")
                    if first:
                        first = False
                        self._ready.wait(timeout=30)
                # Short server-side timeouts: the loop looks at the stop flag every second.
                for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
                    list_fn, *args, **selector, resource_version=version, timeout_seconds=1,
                    _request_timeout=10,
                ):  # fmt: skip
                    if event["type"] == "ERROR":
                        version = None  # expired: list again
                        break
                    seen(event["object"])
                    version = _field(_field(event["object"], "metadata"), "resource_version")
            except client.ApiException:
                version = None  # 410 Gone and the like: list again
            except Exception:  # the API busy or restarting: try again shortly
                self._stop.wait(0.2)

    def _pod(self, pod: Any) -> None:
        labels = pod.metadata.labels or {}
        if labels.get(TRACK) == "canary":
            self.canary_pods.add(pod.metadata.name)

    def _release(self, body: Any) -> None:
        now = time.monotonic()
        current = body.get("status") or {}
        aborted = (current.get("rollout") or {}).get("aborted")
        if aborted and self.aborted_seen is None:
            self.aborted, self.aborted_seen = aborted, now
        history = current.get("history") or [{}]
        if history[0].get("outcome") == "RolledBack" and self.rolled_back_seen is None:
            self.rolled_back_seen = now


def _field(obj: Any, name: str) -> Any:
    """A field of a typed client object or of a plain dict (custom objects come as dicts)."""
    if isinstance(obj, dict):
        return obj.get({"resource_version": "resourceVersion"}.get(name, name))
    return getattr(obj, name)


def wait_rolled_back(mesh: Mesh, traffic: Traffic, timeout: float = 240) -> dict[str, Any]:
    """The rollout rolled back (recorded in history), then every sidecar answering v1 only;
    the final status."""

    def rolled_back() -> dict[str, Any] | None:
        current = status(mesh)
        history = current.get("history") or [{}]
        return current if history[0].get("outcome") == "RolledBack" else None

    final = poll(rolled_back, timeout=timeout, what="rolled back",
                 on_timeout=lambda: brief(mesh))  # fmt: skip
    poll(lambda: all_v1_lately(traffic) or None, timeout=30, what="every response back on v1")
    return final


def all_v1_lately(traffic: Traffic, seconds: float = 2) -> bool:
    """Every sidecar answered in the last `seconds`, each time with 200 and v1 alone."""
    recent = traffic.since(time.monotonic() - seconds)
    return len({s[1] for s in recent}) == PODS and all(
        s[2] == 200 and versions_of(s[3]) == ["v1"] for s in recent
    )


def condition(current: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in current.get("conditions", []) if c["type"] == kind), {})


def proxy_log(mesh: Mesh, pod: str) -> str:
    return mesh.cluster.kubectl("logs", "-n", NS, pod, "-c", CONTAINER, check=False).stdout


def good_plugin(mesh: Mesh) -> dict[str, Any]:
    out = mesh.cluster.kubectl("get", "wasmplugin", RELEASE, "-n", NS, "-o", "json").stdout
    return dict(json.loads(out)["spec"])


@contextmanager
def operator_without_dry_run(mesh: Mesh) -> Iterator[OperatorProcess]:
    """Replace the running operator by one with FILTERRELEASE_DRY_RUN=false (only one operator
    may run: two would fight over the same releases); the first one is back afterwards."""
    first = mesh.operator
    env = {**first.extra_env, "FILTERRELEASE_DRY_RUN": "false"}
    second = OperatorProcess(
        first.kubeconfig,
        first.log_path.with_name("operator-no-dry-run.log"),
        resync_seconds=first.resync_seconds,
        extra_env=env,
    )
    first.stop()
    try:
        second.start()
        mesh.operator = second
        yield second
    except BaseException:
        print(f"\n--- operator without dry run ---\n{second.log_tail(60)}")
        raise
    finally:
        second.stop()
        mesh.operator = first
        first.start()


@pytest.mark.timeout(600)
def test_a_module_lost_from_the_registry_after_preflight_is_rolled_back_by_wasm_fast_fail(
    mesh: FaultMesh,
) -> None:
    install_v1(mesh)
    good = good_plugin(mesh)
    url, layer = publish_module(mesh, "security-headers", f"unfetchable-{time.time_ns()}")
    mesh.modules["unfetchable"] = url
    manifest_digest = url.rsplit("@sha256:", 1)[1]
    with Gate() as gate, Watcher(mesh) as watcher, Traffic(mesh) as traffic:
        t0 = time.monotonic()
        faulty_release(
            mesh,
            "unfetchable",
            {"version": "bad"},
            webhooks=[{"name": "hold", "type": "pre-rollout", "url": gate.url}],
            # After the first step nothing but the Wasm fast-fail (background analysis, which
            # runs while paused) can end the rollout: with STEPS' analysis the success rate of
            # the deny-all's 403s could beat it on a slow machine, and which check won would
            # be a race.
            steps=[{"setWeight": 25}, {"pause": {}}],
        )

        def holding() -> dict[str, Any] | None:
            current = status(mesh)
            return current if gate.calls and (current.get("rollout") or {}).get("gate") else None

        # The gate is asked only once pre-flight has verified the module: from here until it
        # opens, the module is verified and no pod has moved.
        held = poll(holding, timeout=120, what="the pre-rollout gate asked and holding",
                    on_timeout=lambda: brief(mesh))  # fmt: skip
        assert held["module"]["sha256"] == manifest_digest
        assert condition(held, "ModuleVerified")["status"] == "True"
        assert held["rollout"]["gate"].startswith("pre-rollout"), held["rollout"]
        assert held["phase"] == "Progressing"
        assert not watcher.canary_pods
        assert gate.payloads[0]["name"] == RELEASE
        lose_blob(mesh.cluster.registry, "filters/security-headers", layer)
        gate.opened.set()
        final = wait_rolled_back(mesh, traffic)
        samples = traffic.since(t0)
        errors = dict(traffic.load.result.errors)
    canary = watcher.canary_pods
    aborted = final["rollout"]["aborted"]
    assert "analysis failed: wasm-fast-fail" in aborted, aborted
    # Whichever signal of the failed fetch came first: istio-agent counts it both as a failed
    # fetch and as a failed config conversion, and logs "error in converting the wasm config to
    # local: cannot fetch Wasm module" (the reason is cut at 256 characters, so the tail of that
    # line may be missing).
    assert re.search(
        r"failed module fetch|cannot fetch Wasm module|failed Wasm config conversion", aborted
    ), aborted
    assert final["history"][0]["outcome"] == "RolledBack"
    assert final["stable"]["pluginConfig"] == {"version": "v1"}
    assert good_plugin(mesh) == good  # exactly the last good content
    # The canary pods' agents could not fetch it and put the deny-all filter in its place.
    assert 0 < len(canary) < PODS, canary
    for pod in canary:
        log = proxy_log(mesh, pod)
        assert "cannot fetch Wasm module" in log, pod
        assert "applying deny RBAC filter" in log, pod
    # Users of a canary pod got the deny-all's 403 until the rollback (none at all when the
    # fast-fail beat every new connection to it); nothing else, and from no other pod.
    bad = [s for s in samples if s[2] != 200 or versions_of(s[3]) != ["v1"]]
    assert {s[1] for s in bad} <= canary, bad[:10]
    assert {s[2] for s in bad} <= {403}, bad[:10]
    assert not any("bad" in versions_of(s[3]) for s in samples)  # the module never ran
    print(f"unfetchable: {len(bad)} responses 403, from {sorted(canary)}")
    # A pod that changes track gets a new listener (its filter chain names another plugin); the
    # old one drains and then closes its keep-alive connections: a request racing that close
    # fails at the connection level. It may happen on canary pods, never on the others.
    assert {pod for _, pod in errors} <= canary, errors


@pytest.mark.timeout(600)
def test_a_config_rejecting_version_is_stopped_by_the_dry_run_or_else_by_the_canary(
    mesh: FaultMesh,
) -> None:
    install_v1(mesh)
    good = good_plugin(mesh)
    with Watcher(mesh) as watcher, Traffic(mesh) as traffic:
        t0 = time.monotonic()
        faulty_release(mesh, "security-headers", TYPO_CONFIG)

        def refused() -> dict[str, Any] | None:
            current = status(mesh)
            verified = condition(current, "ModuleVerified")
            return current if verified.get("status") == "False" else None

        rejected = poll(refused, timeout=120, what="ModuleVerified=False",
                        on_timeout=lambda: brief(mesh))  # fmt: skip
        module_condition = condition(rejected, "ModuleVerified")
        assert module_condition["reason"] == "ConfigRejected", module_condition
        assert "frame_option" in module_condition["message"], module_condition
        assert rejected["phase"] == "Degraded"
        # Held while the operator looks again at its resyncs (each one counts a verdict).
        poll(
            lambda: mesh.operator.metric("filterrelease_preflight_total", result="ConfigRejected")
            >= 3 or None,
            timeout=60, what="three pre-flight verdicts",
        )  # fmt: skip
        assert status(mesh)["phase"] == "Degraded"
        assert not watcher.canary_pods
        dry_run_samples = traffic.since(t0)
        t1 = time.monotonic()

        with operator_without_dry_run(mesh):
            final = wait_rolled_back(mesh, traffic)
        samples = traffic.since(t1)
        errors = dict(traffic.load.result.errors)
    # With the dry run: no sidecar ever answered with it, every response v1 from start to end.
    assert dry_run_samples
    assert all(s[2] == 200 and versions_of(s[3]) == ["v1"] for s in dry_run_samples)
    # Without: the canary caught it and everything went back.
    canary = watcher.canary_pods
    aborted = final["rollout"]["aborted"]
    assert re.search(r"analysis failed: (wasm-fast-fail|success-rate)", aborted), aborted
    assert final["history"][0]["outcome"] == "RolledBack"
    assert final["stable"]["pluginConfig"] == {"version": "v1"}
    assert condition(final, "ModuleVerified")["status"] == "True"  # no dry run: verified
    assert good_plugin(mesh) == good
    assert 0 < len(canary) < PODS, canary
    bad = [s for s in samples if s[2] != 200 or versions_of(s[3]) != ["v1"]]
    assert {s[1] for s in bad} <= canary, bad[:10]
    assert not any("bad" in versions_of(s[3]) for s in samples)  # Envoy never ran it
    # A pod that changes track gets a new listener (its filter chain names another plugin); the
    # old one drains and then closes its keep-alive connections: a request racing that close
    # fails at the connection level. It may happen on canary pods, never on the others.
    assert {pod for _, pod in errors} <= canary, errors
    print(f"without the dry run: {len(bad)} bad responses, codes {sorted({s[2] for s in bad})}")
