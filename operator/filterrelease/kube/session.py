"""A person's session on the cluster, for the kubectl plugin and the dashboard: their kubeconfig
(or, in a pod, the pod's ServiceAccount), their RBAC, plain dicts out.

Everything a person does goes through the same GitOps-safe request the operator reads (the
filterrelease.dev/request annotation): nothing here writes a spec or a status.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from filterrelease.core.render import API_VERSION, GROUP
from filterrelease.core.requests import REQUEST_ANNOTATION
from filterrelease.kube.api import (
    ISTIO_GROUP,
    ISTIO_VERSION,
    RELEASE_PLURAL,
    RELEASE_VERSION,
    WASMPLUGIN_PLURAL,
    KubeError,
    _error,
)

RELEASE_KIND = "FilterRelease"
_UNDECLARED = "failed to create typed patch object"


class Session:
    """Synchronous calls as the person (each raises KubeError on a refusal or a network error)."""

    def __init__(self, api_client: client.ApiClient, namespace: str = "default") -> None:
        # Any: the client's generated methods return `object` to mypy.
        self.api_client: Any = api_client
        self.namespace = namespace  # the kubeconfig context's namespace: the default for -n
        self._custom: Any = client.CustomObjectsApi(api_client)
        self._core: Any = client.CoreV1Api(api_client)
        self._authz: Any = client.AuthorizationV1Api(api_client)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Session:
        """The user's kubeconfig (KUBECONFIG, or ~/.kube/config) and context; in a pod without
        one, the pod's ServiceAccount."""
        try:
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (config.ConfigException, FileNotFoundError, TypeError):
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException as exc:
                raise KubeError(0, f"no kubeconfig and not in a pod: {exc}") from exc
            return cls(client.ApiClient(), _incluster_namespace())
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if chosen is None:
            raise KubeError(0, f"context {context!r} is not in the kubeconfig")
        namespace = (chosen.get("context") or {}).get("namespace") or "default"
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=chosen["name"]
        )
        return cls(api_client, namespace)

    def close(self) -> None:
        self.api_client.close()

    # -- reads ---------------------------------------------------------------------------------

    def releases(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every FilterRelease in a namespace, or in the cluster for None."""
        return list(self._list_releases(namespace).get("items") or [])

    def _list_releases(self, namespace: str | None, **kwargs: Any) -> dict[str, Any]:
        try:
            if namespace is None:
                found: dict[str, Any] = self._custom.list_cluster_custom_object(
                    GROUP, RELEASE_VERSION, RELEASE_PLURAL, **kwargs
                )
            else:
                found = self._custom.list_namespaced_custom_object(
                    GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL, **kwargs
                )
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        return found

    def release(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._custom.get_namespaced_custom_object(
                GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL, name
            )
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        return found

    def watch_releases(
        self, namespace: str | None, stop: threading.Event | None = None, timeout: int = 30
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(ADDED|MODIFIED|DELETED, release) as they happen, after one ADDED per release that
        exists now; resumes by itself when a watch ends or expires. Ends when `stop` is set
        (within `timeout` seconds)."""
        version = ""
        while stop is None or not stop.is_set():
            if not version:
                listed = self._list_releases(namespace)
                version = (listed.get("metadata") or {}).get("resourceVersion") or ""
                for item in listed.get("items") or []:
                    yield "ADDED", item
            kwargs: dict[str, Any] = {"resource_version": version, "timeout_seconds": timeout}
            if namespace is None:
                call: Any = self._custom.list_cluster_custom_object
                args: tuple[Any, ...] = (GROUP, RELEASE_VERSION, RELEASE_PLURAL)
            else:
                call = self._custom.list_namespaced_custom_object
                args = (GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL)
            try:
                for event in watch.Watch().stream(call, *args, **kwargs):  # type: ignore[no-untyped-call]
                    if stop is not None and stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""  # expired (410 Gone): list again
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        yield event["type"], obj
            except ApiException as exc:
                if exc.status != 410:
                    raise _error(exc) from exc
                version = ""

    def pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        try:
            found = self._core.list_namespaced_pod(namespace, label_selector=selector)
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        return list(self.api_client.sanitize_for_serialization(found).get("items") or [])

    def wasm_plugin(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._custom.get_namespaced_custom_object(
                ISTIO_GROUP, ISTIO_VERSION, namespace, WASMPLUGIN_PLURAL, name
            )
        except (ApiException, OSError) as exc:
            error = _error(exc)
            if error.not_found:
                return None
            raise error from exc
        return found

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The release's Events, oldest first."""
        selector = f"involvedObject.kind={RELEASE_KIND},involvedObject.name={name}"
        try:
            found = self._core.list_namespaced_event(namespace, field_selector=selector)
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        items = list(self.api_client.sanitize_for_serialization(found).get("items") or [])
        return sorted(items, key=_event_time)

    def can_i(self, verb: str, namespace: str, resource: str = RELEASE_PLURAL) -> bool:
        """Whether RBAC lets this person `verb` FilterReleases (or `resource` in our group) in the
        namespace (a SelfSubjectAccessReview, as `kubectl auth can-i` asks)."""
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    group=GROUP, resource=resource, verb=verb, namespace=namespace
                )
            )
        )
        try:
            answer = self._authz.create_self_subject_access_review(review)
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        return bool(answer.status and answer.status.allowed)

    # -- writes --------------------------------------------------------------------------------

    def request(self, namespace: str, name: str, value: str) -> dict[str, Any]:
        """Ask the operator for promote, abort, undo:N ... through the request annotation: the
        spec is not touched, so a GitOps tool sees no drift."""
        patch = {"metadata": {"annotations": {REQUEST_ANNOTATION: value}}}
        try:
            found: dict[str, Any] = self._custom.patch_namespaced_custom_object(
                GROUP, RELEASE_VERSION, namespace, RELEASE_PLURAL, name, patch
            )
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        return found

    def dry_run_problems(self, manifest: dict[str, Any]) -> list[str]:
        """What the server refuses in a FilterRelease (`field: problem`, one per cause; none
        when it would be accepted), by a strict server-side dry run: unknown fields count, as
        with `kubectl apply`. Other refusals (RBAC, no such namespace) raise KubeError."""
        try:
            self._dry_run(manifest, field_validation="Strict")
        except ApiException as exc:
            error = _error(exc)
            if exc.status in (400, 422):
                return _causes(exc) or [error.message]
            # Server-side apply refuses a field the schema does not declare before validation,
            # as a 500: "failed to create typed patch object (...): .spec.x: field not declared
            # in schema". It is the manifest's problem, not the server's.
            if exc.status == 500 and _UNDECLARED in error.message:
                return [error.message.rsplit("): ", 1)[-1].lstrip(".")]
            raise error from exc
        except OSError as exc:
            raise _error(exc) from exc
        return []

    def dry_run_apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side dry run of a FilterRelease: the CRD's schema, its CEL rules and the
        operator's admission webhook judge it; nothing is stored."""
        try:
            return self._dry_run(manifest)
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc

    def _dry_run(self, manifest: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        meta = manifest.get("metadata") or {}
        namespace = meta.get("namespace") or self.namespace
        name = meta.get("name") or ""
        if manifest.get("apiVersion") != f"{GROUP}/{RELEASE_VERSION}" or manifest.get("kind") != (
            RELEASE_KIND
        ):
            raise KubeError(400, f"not a {RELEASE_KIND} ({GROUP}/{RELEASE_VERSION})")
        found: dict[str, Any] = self._custom.patch_namespaced_custom_object(
            GROUP,
            RELEASE_VERSION,
            namespace,
            RELEASE_PLURAL,
            name,
            manifest,
            dry_run="All",
            field_manager="kubectl-filterrelease",
            force=True,
            _content_type="application/apply-patch+yaml",
            **kwargs,
        )
        return found


def _causes(exc: ApiException) -> list[str]:
    """An Invalid (422) answer's causes, `field: message` each, as `kubectl apply` lists them."""
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return []
    return [
        f"{c['field']}: {c.get('message', '')}" if c.get("field") else str(c.get("message", ""))
        for c in details.get("causes") or []
    ]


def _event_time(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def _incluster_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


__all__ = ["API_VERSION", "KubeError", "Session"]
