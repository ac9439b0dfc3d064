"""Watching the cluster: a small list-then-watch informer over the official client.

Objects stay plain dicts (the JSON the apiserver sent): the agent reads a few fields and
needs no models. A watch that breaks or expires (410) starts over with a fresh list.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

WATCH_TIMEOUT_S = 240
_RETRY_S = 1.0

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


def api_client(kubeconfig: Path) -> Any:
    return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Informer:
    """Keeps every object of one kind in memory; calls `on_change()` after each change."""

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        on_change: Callable[[], None],
        log: Callable[[str], None],
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._on_change = on_change
        self._log = log
        self._lock = threading.Lock()
        self._items: dict[Key, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._response: Any = None
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items.values())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # Unblocks the watch thread's read (urllib3 >= 2.3).
            try:
                response.shutdown()
            except Exception as exc:  # best effort: the watch times out anyway
                self._log(f"{self.name}: closing the watch failed: {exc!r}")

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._list_and_watch()
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._log(f"{self.name}: {type(exc).__name__}: {exc}; listing again")
                self._stop.wait(_RETRY_S)

    def _list_and_watch(self) -> None:
        response = self._list_call(_preload_content=False)
        data = json.loads(response.data)
        with self._lock:
            self._items = {_key(obj): obj for obj in data.get("items") or []}
        self.synced.set()
        self._on_change()
        version = str(data["metadata"]["resourceVersion"])
        while not self._stop.is_set():
            response = self._list_call(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_S,
                _preload_content=False,
            )
            self._response = response
            try:
                if self._stop.is_set():
                    return
                for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # expired: list again
                            return
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    version = str(obj["metadata"]["resourceVersion"])
                    if kind == "BOOKMARK":
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self._items.pop(_key(obj), None)
                        else:
                            self._items[_key(obj)] = obj
                    self._on_change()
            finally:
                self._response = None
                response.release_conn()


class Cluster:
    """The kinds the agent watches, and on-demand reads (pull secrets)."""

    def __init__(
        self, kubeconfig: Path, on_change: Callable[[], None], log: Callable[[str], None]
    ) -> None:
        self._api = api_client(kubeconfig)
        self.core = client.CoreV1Api(self._api)
        custom = client.CustomObjectsApi(self._api)

        def wasmplugins(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(
                "extensions.istio.io", "v1alpha1", "wasmplugins", **kwargs
            )

        self.pods = Informer("pods", self.core.list_pod_for_all_namespaces, on_change, log)
        self.namespaces = Informer("namespaces", self.core.list_namespace, on_change, log)
        self.wasmplugins = Informer("wasmplugins", wasmplugins, on_change, log)
        self._informers = (self.namespaces, self.wasmplugins, self.pods)

    def start(self) -> None:
        for informer in self._informers:
            informer.start()

    def wait_synced(self, timeout: float) -> bool:
        return all(informer.synced.wait(timeout) for informer in self._informers)

    def synced(self) -> bool:
        """Whether every list (pods, namespaces, WasmPlugins) has arrived at least once."""
        return all(informer.synced.is_set() for informer in self._informers)

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()
        for informer in self._informers:
            informer.join(5)
        self._api.close()

    def docker_config(self, namespace: str, name: str) -> bytes | None:
        """istiod's GetDockerCredential (pilot/pkg/credentials/kube/secrets.go): the
        .dockerconfigjson of a kubernetes.io/dockerconfigjson Secret, else None."""
        try:
            response: Any = self.core.read_namespaced_secret(
                name, namespace, _preload_content=False
            )
            secret = json.loads(response.data)
        except client.exceptions.ApiException:
            return None
        if secret.get("type") != "kubernetes.io/dockerconfigjson":
            return None
        encoded = (secret.get("data") or {}).get(".dockerconfigjson")
        return base64.b64decode(encoded) if encoded else None
