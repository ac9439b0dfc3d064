"""The pod admission webhook: every new pod of a split release starts on its stable track.

While a release is split, its stable WasmPlugin selects only pods labelled
`track.filterrelease.dev/<release>=stable` (core/tracks.py). A pod created then (a scale-up, a
rescheduled pod) would carry no track label, be selected by no WasmPlugin and serve without the
filter. This mutating webhook adds the label on CREATE, from the SplitRegistry in memory.

kopf serves the webhook (TLS, AdmissionReview in and out, our handler); the
MutatingWebhookConfiguration is ours, not kopf's `settings.admission.managed`: kopf's managed
configuration has no namespaceSelector (nolar/kopf#864), so it would send every pod of the
cluster, kube-system and the operator's own included, through a webhook that fails closed.
Ours only covers meshed namespaces, never the operator's own, and stays in place while the
operator is down or restarting: a pod that cannot be admitted is retried by its controller, a pod
admitted unlabelled during a split runs without its filter.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kopf

from filterrelease.admission_tls import ServingCertificate, as_ip, issue
from filterrelease.config import Settings
from filterrelease.core.render import LABEL_MANAGED_BY, MANAGED_BY
from filterrelease.core.tracks import STABLE, admission_labels, selects, track_label
from filterrelease.kube.admission import AdmissionApi
from filterrelease.kube.api import ApiClient, KubeApi, KubeError
from filterrelease.splits import SplitRegistry, split_from_body

log = logging.getLogger(__name__)

HANDLER_ID = "pod-tracks"  # kopf routes /<handler id> to the handler
# How long a pod's admission waits for the start-up list of FilterReleases; the API server's
# own deadline for the call (TIMEOUT_SECONDS) must be longer, or the wait would be pointless.
LOAD_WAIT_SECONDS = 5.0
TIMEOUT_SECONDS = 10
# One read of a release that may have split since our watch last showed it (confirmed_splits).
CONFIRM_SECONDS = 3.0
SERVICE_PORT = 443  # the webhook Service's port (deploy/operator/deployment.yaml)
# Namespaces never sent through the webhook, whatever their labels: a fail-closed webhook on
# the control plane's own pods can keep a cluster from recovering.
ALWAYS_EXEMPT = ("kube-system",)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


# -- the handler -------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, config: Settings) -> None:
    """The mutating handler for pods; nothing when the webhook is off (kopf refuses to start
    with an admission handler and no server)."""
    if not config.webhook_enabled:
        return

    @kopf.on.mutate("v1", "pods", id=HANDLER_ID, operations=["CREATE"], registry=registry)
    async def pod_tracks(
        body: kopf.Body, namespace: str | None, patch: kopf.Patch, memo: kopf.Memo, **_: Any
    ) -> None:
        splits: SplitRegistry = memo.splits
        if not await splits.wait_loaded(LOAD_WAIT_SECONDS):
            # Without the list we cannot tell whether the pod needs a label: refuse, and let
            # its controller retry, rather than admit a pod that might miss its filter.
            raise kopf.AdmissionError(
                "filterrelease has not loaded its FilterReleases yet; retry", code=503
            )
        if namespace is None:  # the API server sets it before admission; never seen
            raise kopf.AdmissionError("pod without a namespace", code=400)
        labels = body.metadata.labels
        added = admission_labels(labels, splits.in_namespace(namespace))
        added |= await confirmed_splits(memo.kube, namespace, labels, splits, added)
        for key, value in added.items():
            patch.metadata.labels[key] = value
        if added:
            pod = body.metadata.name or f"{body.metadata.get('generateName', '')}*"
            log.info("pod %s/%s joins the stable track of %s", namespace, pod, sorted(added))


async def confirmed_splits(
    kube: KubeApi,
    namespace: str,
    labels: Mapping[str, str],
    splits: SplitRegistry,
    added: Mapping[str, str],
) -> dict[str, str]:
    """Track labels for the releases our watch does not show split but that may be split by now.

    Every replica answers from its own watch, and the leader splits a release by writing
    status.split before it lists the pods it labels; a follower's watch may deliver that write a
    moment after a pod it admits. So for a release that can split (it has a canary strategy)
    and selects the pod, a read of the release itself decides: any admission after the split
    was written sees it. A read that fails labels the pod anyway: a track label too many is
    harmless, one too few is a pod without its filter.
    """
    found: dict[str, str] = {}
    for release in splits.unsplit_canaries(namespace):
        key = track_label(release.name)
        if key in labels or key in added or not selects(release.match_labels, labels):
            continue
        try:
            current = await asyncio.wait_for(
                kube.get_release(namespace, release.name), CONFIRM_SECONDS
            )
        except (KubeError, TimeoutError) as err:
            log.warning("cannot read %s/%s, labelling the pod stable: %s",
                        namespace, release.name, err)  # fmt: skip
            found[key] = STABLE
            continue
        if current is not None and split_from_body(current) is not None:
            found[key] = STABLE
    return found


# -- start-up and clean-up ---------------------------------------------------------------------


class Admission:
    """What start() builds and stop() takes down again."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.cert_dir: Path | None = None
        # Set once the webhook server listens (readiness, health.py).
        self.listening = asyncio.Event()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("admission task failed")
        if self.cert_dir is not None:
            shutil.rmtree(self.cert_dir, ignore_errors=True)


async def start(
    settings: kopf.OperatorSettings,
    config: Settings,
    splits: SplitRegistry,
    kube: KubeApi,
    api_client: ApiClient,
) -> Admission:
    """Load the split releases, and configure kopf's webhook server (it starts after startup).

    `api_client` is shared with the other adapters, which close it.
    """
    admission = Admission()
    admission.tasks.append(asyncio.create_task(load_splits(splits, kube, config.namespaces)))
    if not config.webhook_enabled:
        admission.listening.set()  # nothing to wait for
        return admission
    api = AdmissionApi(api_client, field_manager=config.field_manager)
    names = server_names(config)
    if config.webhook_cert_file:
        certfile, keyfile = Path(config.webhook_cert_file), Path(config.webhook_key_file)
        tls: dict[str, Any] = {"cafile": config.webhook_ca_file or None}
    else:
        shared = await shared_certificate(api, config, names)
        admission.cert_dir = Path(tempfile.mkdtemp(prefix="filterrelease-webhook-"))
        certfile, keyfile = shared.write(admission.cert_dir)
        tls = {"cadata": shared.ca_pem}
    settings.admission.server = TrackWebhookServer(
        publish=lambda client_config: publish(api, config, client_config),
        listening=admission.listening,
        addr=config.webhook_address,
        port=config.webhook_port,
        host=names[0],
        certfile=str(certfile),
        pkeyfile=str(keyfile),
        **tls,
    )
    settings.admission.managed = None  # the configuration is ours: see the module docstring
    return admission


async def shared_certificate(
    api: AdmissionApi, config: Settings, names: list[str]
) -> ServingCertificate:
    """The replicas' one serving certificate, kept in a Secret in the operator's namespace.

    The first replica to start makes it (create fails for all but one racing replica, which
    then read the winner's); a certificate that no longer names every name the API server may
    call, or is close to its end, is replaced (with the resourceVersion read, so two replicas
    never replace it with two different ones). Retries until the API server answers: the
    webhook cannot serve without it."""
    namespace, name = config.home_namespace, config.webhook_secret_name
    backoff = iter(RETRY_DELAYS)
    delay = 0.0
    while True:
        try:
            found = await api.read_secret(namespace, name)
            now = datetime.now(UTC)
            if found is not None:
                data, version = found
                current = ServingCertificate.from_secret_data(data)
                if current is not None and current.serves(names, now):
                    return current
                fresh = issue(names, now)
                log.info("replacing the webhook certificate in Secret %s/%s", namespace, name)
                await api.replace_secret(namespace, name, fresh.as_secret_data(), version)
                return fresh
            fresh = issue(names, now)
            await api.create_secret(namespace, name, fresh.as_secret_data())
            log.info("webhook certificate made and kept in Secret %s/%s", namespace, name)
            return fresh
        except KubeError as err:
            if err.status == 409:  # another replica wrote it first: use theirs
                continue
            delay = next(backoff, delay)
            log.warning("cannot keep the webhook certificate in Secret %s/%s (retrying in %ss): "
                        "%s", namespace, name, delay, err)  # fmt: skip
            await asyncio.sleep(delay)


async def load_splits(
    splits: SplitRegistry, kube: KubeApi, namespaces: Iterable[str], delays: Iterable[float] = ()
) -> None:
    """List every FilterRelease once, retrying until the API server answers."""
    backoff = iter(delays or RETRY_DELAYS)
    delay = 0.0
    while True:
        try:
            bodies: list[dict[str, Any]] = []
            for namespace in tuple(namespaces) or (None,):
                bodies += await kube.list_releases(namespace)
        except KubeError as err:
            delay = next(backoff, delay)
            log.warning("cannot list FilterReleases (retrying in %ss): %s", delay, err)
            await asyncio.sleep(delay)
            continue
        splits.load(bodies)
        log.info("split releases loaded from %d FilterReleases", len(bodies))
        return


# -- serving and the webhook configuration -----------------------------------------------------


class TrackWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS server, which also writes our MutatingWebhookConfiguration each time it
    (re)starts listening: at start, and when certificate files from a Secret were renewed."""

    def __init__(
        self,
        *,
        publish: Callable[[kopf.WebhookClientConfig], Any],
        listening: asyncio.Event,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._publish = publish
        self._listening = listening

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for client_config in super().__call__(fn):
            # Already listening: the API server can call us once the configuration lands.
            self._listening.set()
            await self._publish(client_config)
            yield client_config


async def publish(
    api: AdmissionApi, config: Settings, client_config: kopf.WebhookClientConfig
) -> None:
    """Write the configuration, retrying until it lands (the server is up meanwhile)."""
    delay = 0.0
    backoff = iter(RETRY_DELAYS)
    while True:
        try:
            owner = None
            if config.operator_namespace:
                owner = await api.namespace_uid(config.operator_namespace)
            await api.apply_mutating_webhook_configuration(
                webhook_configuration(config, client_config, owner_uid=owner)
            )
        except KubeError as err:
            delay = next(backoff, delay)
            log.warning("cannot write the webhook configuration (retrying in %ss): %s", delay, err)
            await asyncio.sleep(delay)
            continue
        log.info("webhook configuration %s written", config.webhook_configuration_name)
        return


def server_names(config: Settings) -> list[str]:
    """The names the API server may call the webhook by, the one it will use first."""
    names: list[str] = []
    if config.webhook_url and (host := urlsplit(config.webhook_url).hostname):
        names.append(host)
    if config.webhook_host:
        names.append(config.webhook_host)
    if config.webhook_service:
        namespace, name = service_ref(config.webhook_service)
        names += [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    address = config.webhook_address
    ip = as_ip(address)
    if ip is not None and ip.is_unspecified:  # listening everywhere: loopback is one of them
        address = "127.0.0.1" if ip.version == 4 else "::1"
    names.append(address)
    return list(dict.fromkeys(names))


def service_ref(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"webhook service must be namespace/name, not {text!r}")
    return namespace, name


def parse_labels(text: str) -> dict[str, str]:
    """`a=b,c=d` → {"a": "b", "c": "d"} (equality only, as namespaceSelector.matchLabels)."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"namespace selector items are key=value, not {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def webhook_configuration(
    config: Settings, client_config: Mapping[str, Any], *, owner_uid: str | None = None
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration for the pod webhook, from kopf's client config."""
    path = f"/{HANDLER_ID}"
    client: dict[str, Any] = {}
    if config.webhook_url:
        client["url"] = config.webhook_url.rstrip("/") + path
    elif config.webhook_service:
        namespace, name = service_ref(config.webhook_service)
        client["service"] = {"namespace": namespace, "name": name, "port": SERVICE_PORT}
        client["service"]["path"] = path
    else:
        client["url"] = str(client_config["url"]).rstrip("/") + path
    if client_config.get("caBundle"):
        client["caBundle"] = client_config["caBundle"]

    exempt = sorted({*ALWAYS_EXEMPT, config.operator_namespace} - {""})
    expressions: list[dict[str, Any]] = [
        {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": exempt}
    ]
    if config.namespaces:  # an operator watching some namespaces only answers for those
        values = sorted(config.namespaces)
        expressions.append({"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": values})
    namespace_selector: dict[str, Any] = {"matchExpressions": expressions}
    if labels := parse_labels(config.webhook_namespace_selector):
        namespace_selector["matchLabels"] = labels

    metadata: dict[str, Any] = {
        "name": config.webhook_configuration_name,
        "labels": {LABEL_MANAGED_BY: MANAGED_BY},
    }
    if owner_uid:
        # Uninstalling (deleting the operator's namespace) must not leave a fail-closed webhook
        # behind with nothing to answer it: the garbage collector removes it with the namespace.
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "name": config.operator_namespace,
                "uid": owner_uid,
            }
        ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            {
                "name": config.webhook_configuration_name,
                "admissionReviewVersions": ["v1"],
                "clientConfig": client,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "operations": ["CREATE"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": namespace_selector,
                "failurePolicy": config.webhook_failure_policy,
                "matchPolicy": "Equivalent",
                # Nothing but the patch: safe to call for dry runs.
                "sideEffects": "None",
                # A later webhook may add labels that make the pod match a release's selector.
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": TIMEOUT_SECONDS,
            }
        ],
    }
