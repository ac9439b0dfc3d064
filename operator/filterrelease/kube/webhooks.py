"""Kubernetes API adapter for the pod admission webhook: its MutatingWebhookConfiguration.

A subclass of KubeApi for its off-the-event-loop calls and error mapping; kept apart so the
FilterRelease/WasmPlugin adapter stays about releases.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from filterrelease.kube.api import KubeApi


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
