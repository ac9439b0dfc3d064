"""Faulty versions for the canary to catch (test_canary_faults and bench/canary_rollback): a
mesh with v1 published, modules published with their own digests, a blob lost behind the
registry's back, a pre-rollout gate, and watchers of the pods' tracks and the release."""

from __future__ import annotations

import hashlib
import json
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

from localcluster.oci_publish import publish
from localcluster.registry import Registry
from tests.support.canary import (
    NS,
    PODS,
    RELEASE,
    STEPS,
    Mesh,
    Traffic,
    brief,
    operated_mesh,
    status,
    versions_of,
)
from tests.support.canary import report as report_mesh
from tests.support.polling import poll
from tests.support.wasm import with_custom_section

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
    Deployment of PODS pods serving: operated_mesh's, for test_canary_faults and the bench."""
    with operated_mesh(workdir, operator_env) as (cluster, operator):
        found = FaultMesh(cluster, operator, wasm=wasm, workdir=workdir)
        found.modules["security-headers"], _ = publish_module(found, "security-headers", "v1")
        try:
            yield found
        finally:
            if report:
                # found.operator: a test may have swapped the operator for another one.
                report_mesh(found)


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
    wasm_fast_fail: bool = True,
) -> None:
    """tests.support.canary.release(), with webhooks (it has no place for them)."""
    canary: dict[str, Any] = {"steps": list(steps)}
    if not wasm_fast_fail:
        canary["wasmFastFail"] = False
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
