"""Kubernetes API adapter: FilterReleases, WasmPlugins and Events.

The official client is synchronous; every call runs in a worker thread (asyncio.to_thread) so a
slow API server never freezes kopf's event loop. Errors come out as KubeError, so the shell above
never needs the client's exception types.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from filterrelease.core.proxies import ISTIO_PROXY_CONTAINER
from filterrelease.core.render import API_VERSION, GROUP, KIND
from filterrelease.core.timestamps import timestamp
from filterrelease.core.tracks import is_reserved
from filterrelease.ports import SelectedPod

RELEASE_VERSION = "v1alpha1"
RELEASE_PLURAL = "filterreleases"
TEMPLATE_PLURAL = "analysistemplates"
ISTIO_GROUP = "extensions.istio.io"
ISTIO_VERSION = "v1alpha1"
WASMPLUGIN_PLURAL = "wasmplugins"


class KubeError(Exception):
    """An API call failed. status is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def retriable(self) -> bool:
        # 4xx other than conflict/throttling means the request itself is wrong: retrying as is
        # cannot help. Everything else (5xx, network) may pass on the next attempt.
        return self.status == 0 or self.status in (409, 429) or self.status >= 500


class NotLeaderError(KubeError):
    """A write refused because this replica does not hold the Lease (leadership.py)."""

    def __init__(self) -> None:
        super().__init__(0, "not the leader: this replica does not write")

    @property
    def retriable(self) -> bool:
        return False  # the leader does the work; retrying here would only repeat the refusal


def _error(exc: Exception) -> KubeError:
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message") or str(exc.reason)
        except (ValueError, AttributeError):
            message = str(exc.reason)
        return KubeError(int(exc.status or 0), message)
    return KubeError(0, f"{type(exc).__name__}: {exc}")


# Re-exported so the shell can pass the client around without importing `kubernetes`.
ApiClient = client.ApiClient


def _has_sidecar(pod: Any) -> bool:
    """Running, with an istio-proxy container (injected, or a native sidecar among the init
    containers): a proxy whose admin can be read."""
    if (pod.status.phase if pod.status else None) != "Running":
        return False
    spec = pod.spec
    containers = [*(spec.containers or ()), *(spec.init_containers or ())] if spec else []
    return any(c.name == ISTIO_PROXY_CONTAINER for c in containers)


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    except config.ConfigException:
        api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
        return api_client


class KubeApi:
    def __init__(
        self,
        api_client: client.ApiClient,
        field_manager: str,
        *,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = api_client
        # Asked before every write of the reconciler's: only the leader writes (leadership.py).
        self._may_write = may_write
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._field_manager = field_manager

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _fence(self) -> None:
        if not self._may_write():
            raise NotLeaderError

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except (ApiException, OSError) as exc:
                raise _error(exc) from exc
            except Exception as exc:  # urllib3 wraps connection errors in its own types
                if type(exc).__module__.startswith("urllib3"):
                    raise _error(exc) from exc
                raise

        return await asyncio.to_thread(run)

    # FilterReleases

    async def _get_custom(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        """One namespaced custom object; None when it does not exist."""
        try:
            body: dict[str, Any] = await self._call(
                self._custom.get_namespaced_custom_object, group, version, namespace, plural, name
            )
        except KubeError as err:
            if err.not_found:
                return None
            raise
        return body

    async def get_release(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_custom(GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL, name)

    async def list_releases(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace:
            found = await self._call(
                self._custom.list_namespaced_custom_object,
                GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL,
            )  # fmt: skip
        else:
            found = await self._call(
                self._custom.list_cluster_custom_object, GROUP, RELEASE_VERSION, RELEASE_PLURAL
            )
        return list(found.get("items", []))

    async def patch_release_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._fence()
        # A JSON merge patch of the status subresource: the spec, which belongs to the user or to
        # GitOps, is never written by the operator.
        await self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL, name, {"status": status},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    async def get_analysis_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_custom(GROUP, RELEASE_VERSION, namespace, TEMPLATE_PLURAL, name)

    # WasmPlugins

    async def get_wasmplugin(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_custom(
            ISTIO_GROUP, ISTIO_VERSION, namespace, WASMPLUGIN_PLURAL, name
        )

    async def apply_wasmplugin(
        self, manifest: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply: creates, or updates in place; never deletes and recreates.

        force=True takes back fields someone else changed by hand: the FilterRelease is the
        source of truth for its WasmPlugins.
        """
        if not dry_run:
            self._fence()
        meta = manifest["metadata"]
        body: dict[str, Any] = await self._call(
            self._custom.patch_namespaced_custom_object,
            ISTIO_GROUP, ISTIO_VERSION, meta["namespace"], WASMPLUGIN_PLURAL, meta["name"],
            manifest,
            field_manager=self._field_manager, force=True, dry_run="All" if dry_run else None,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip
        return body

    async def delete_wasmplugin(self, namespace: str, name: str, uid: str | None) -> None:
        """Delete one WasmPlugin; with a uid, only that object (a plugin recreated under the
        same name by someone else is left alone). Gone already counts as done."""
        self._fence()
        body: dict[str, Any] = {"preconditions": {"uid": uid}} if uid else {}
        try:
            await self._call(
                self._custom.delete_namespaced_custom_object,
                ISTIO_GROUP, ISTIO_VERSION, namespace, WASMPLUGIN_PLURAL, name, body=body,
            )  # fmt: skip
        except KubeError as err:
            if not err.not_found:
                raise

    # Pods

    async def list_pods(
        self, namespace: str, match_labels: dict[str, str]
    ) -> dict[str, SelectedPod]:
        """Live pods the selector matches (terminating ones left out: they are going away and
        keep what they run), by name."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        found = await self._call(self._core.list_namespaced_pod, namespace, label_selector=selector)
        return {
            pod.metadata.name: SelectedPod(
                labels=dict(pod.metadata.labels or {}),
                uid=pod.metadata.uid or "",
                sidecar=_has_sidecar(pod),
            )
            for pod in found.items
            if pod.metadata.deletion_timestamp is None
        }

    async def list_tracked_pods(
        self, namespace: str | None, key: str | None = None
    ) -> dict[tuple[str, str], dict[str, str]]:
        """Live pods that carry a track label ((namespace, name) → labels): the one `key`, or,
        without one, any (a label selector cannot match a key prefix, so every pod is listed
        and the rest left out here). namespace None: every namespace."""
        selector = key or ""
        if namespace:
            found = await self._call(
                self._core.list_namespaced_pod, namespace, label_selector=selector
            )
        else:
            found = await self._call(
                self._core.list_pod_for_all_namespaces, label_selector=selector
            )
        return {
            (pod.metadata.namespace, pod.metadata.name): dict(pod.metadata.labels or {})
            for pod in found.items
            if pod.metadata.deletion_timestamp is None
            and any(is_reserved(k) for k in pod.metadata.labels or {})
        }

    async def label_pod(self, namespace: str, name: str, key: str, value: str | None) -> bool:
        """Set (None: remove) one label; False when the pod is gone."""
        self._fence()
        patch = {"metadata": {"labels": {key: value}}}
        try:
            await self._call(self._core.patch_namespaced_pod, name, namespace, patch)
        except KubeError as err:
            if err.not_found:
                return False
            raise
        return True

    async def remove_release_annotation(self, namespace: str, name: str, key: str) -> None:
        """Consume a manual request: the annotation goes, the spec is never touched."""
        self._fence()
        await self._call(
            self._custom.patch_namespaced_custom_object,
            GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL, name,
            {"metadata": {"annotations": {key: None}}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    # Secrets

    async def get_secret_data(self, namespace: str, name: str, key: str) -> bytes | None:
        """One key of a Secret, decoded; None when the Secret or the key does not exist."""
        try:
            secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        except KubeError as err:
            if err.not_found:
                return None
            raise
        value = (secret.data or {}).get(key)
        return base64.b64decode(value) if value is not None else None

    # Events

    async def emit_event(
        self,
        release: dict[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        self._fence()
        meta = release["metadata"]
        stamp = timestamp(now)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": self._field_manager},
            "reportingComponent": f"{GROUP}/{self._field_manager}",
            "reportingInstance": self._field_manager,
        }
        await self._call(self._core.create_namespaced_event, meta["namespace"], event)
