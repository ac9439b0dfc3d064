"""Kubernetes API adapter for the pod admission webhook: its MutatingWebhookConfiguration and
the Secret holding the serving certificate the replicas share.

A subclass of KubeApi for its off-the-event-loop calls and error mapping; kept apart so the
FilterRelease/WasmPlugin adapter stays about releases.
"""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client

from filterrelease.core.render import LABEL_MANAGED_BY, MANAGED_BY
from filterrelease.kube.api import KubeApi, KubeError


class AdmissionApi(KubeApi):
    def __init__(self, api_client: client.ApiClient, field_manager: str) -> None:
        super().__init__(api_client, field_manager)
        self._admission = client.AdmissionregistrationV1Api(api_client)

    async def apply_mutating_webhook_configuration(self, manifest: dict[str, Any]) -> None:
        """Server-side apply: created if absent, else brought to exactly this content."""
        await self._call(
            self._admission.patch_mutating_webhook_configuration,
            manifest["metadata"]["name"], manifest,
            field_manager=self._field_manager, force=True,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    async def namespace_uid(self, name: str) -> str:
        found = await self._call(self._core.read_namespace, name)
        return str(found.metadata.uid)

    # The shared serving certificate (admission.shared_certificate)

    async def read_secret(self, namespace: str, name: str) -> tuple[dict[str, bytes], str] | None:
        """A Secret's data, decoded, and its resourceVersion; None when it does not exist."""
        try:
            found = await self._call(self._core.read_namespaced_secret, name, namespace)
        except KubeError as err:
            if err.not_found:
                return None
            raise
        data = {k: base64.b64decode(v) for k, v in (found.data or {}).items()}
        return data, str(found.metadata.resource_version)

    async def create_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        """Refused with 409 when it exists already."""
        await self._call(self._core.create_namespaced_secret, namespace, _secret(name, data))

    async def replace_secret(
        self, namespace: str, name: str, data: dict[str, bytes], resource_version: str
    ) -> None:
        """Refused with 409 when it changed since `resource_version` was read."""
        body = _secret(name, data)
        body["metadata"]["resourceVersion"] = resource_version
        await self._call(self._core.replace_namespaced_secret, name, namespace, body)


def _secret(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
