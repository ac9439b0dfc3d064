"""kopf wiring only: each handler is a few lines that hand over to the Reconciler.

The operator is level-triggered: every watch event of a FilterRelease, or of a WasmPlugin it owns,
leads to one reconcile of that release, and a resync loop reconciles every release periodically.
No kopf timer, create/update or delete handler is used: those make kopf add finalizers and
annotations to the FilterRelease, which would block deletion while the operator is down and show
up as drift in GitOps tools. Deletion needs no handler: the garbage collector removes the
WasmPlugins through their ownerReference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kopf

from filterrelease import admission
from filterrelease.analysis import Analyzer
from filterrelease.build import build_versions
from filterrelease.config import Settings
from filterrelease.core.render import GROUP, LABEL_MANAGED_BY, LABEL_RELEASE, MANAGED_BY
from filterrelease.health import HealthServer
from filterrelease.hooks import Notifier
from filterrelease.kube.api import ISTIO_GROUP, ApiClient, KubeApi, KubeError, load_api_client
from filterrelease.kube.lease import LeaseApi
from filterrelease.kube.podlogs import PodLogs
from filterrelease.kube.proxies import ProxyAdmin
from filterrelease.leadership import Leadership, LeaseLeadership
from filterrelease.ports import DryRun
from filterrelease.preflight import Preflight
from filterrelease.providers.dryrun import EnvoyDryRun
from filterrelease.providers.dryrun_pool import WarmDryRuns
from filterrelease.providers.envoy import find_envoy
from filterrelease.providers.registry import RegistryClient
from filterrelease.reconcile import Reconciler
from filterrelease.splits import SplitRegistry
from filterrelease.telemetry import Metrics
from filterrelease.tracks import sweep

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def register(registry: kopf.OperatorRegistry, config: Settings) -> None:
    """Register the handlers on a registry of the caller's (no import-time registration)."""
    admission.register(registry, config)  # the pod admission webhook (admission.py)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the kube adapter: in-cluster ServiceAccount, else kubeconfig.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        await start(settings, config, memo)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await stop(memo)

    @kopf.on.event(GROUP, "v1alpha1", "filterreleases", registry=registry)
    async def release_event(
        namespace: str | None, name: str, type: str, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        if namespace is None:  # FilterRelease is namespaced; kopf types this for all kinds
            return
        if type == "DELETED":
            memo.splits.forget(namespace, name)
            memo.reconciler.forget(namespace, name)
            if memo.leadership.leading:  # finds it gone: takes its track labels off the pods
                await reconcile_logged(memo.reconciler, namespace, name)
            return
        memo.splits.update_from_body(body)  # before the reconcile: admission must not lag
        if memo.leadership.leading:
            await reconcile_logged(memo.reconciler, namespace, name, requeues=memo.requeues)

    @kopf.on.event(
        ISTIO_GROUP,
        "v1alpha1",
        "wasmplugins",
        labels={LABEL_MANAGED_BY: MANAGED_BY},
        registry=registry,
    )
    async def wasmplugin_event(
        namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, **_: Any
    ) -> None:
        # A WasmPlugin we own changed or went away (someone edited or deleted it): put it back.
        if memo.leadership.leading and namespace and (owner := labels.get(LABEL_RELEASE)):
            await reconcile_logged(memo.reconciler, namespace, owner, requeues=memo.requeues)


async def start(settings: kopf.OperatorSettings, config: Settings, memo: kopf.Memo) -> None:
    """Build every dependency into kopf's memo; nothing happens at import time."""
    configure_kopf(settings)
    api_client = load_api_client()
    metrics = Metrics()
    versions = build_versions()
    metrics.set_build(versions.version, versions.python, versions.kopf)
    if config.metrics_port:
        metrics.serve(config.metrics_address, config.metrics_port)
    memo.leadership = leadership_for(config, api_client, memo, metrics)
    # Only the leader writes: every write of the reconciler's asks the leadership first.
    kube = KubeApi(
        api_client, field_manager=config.field_manager, may_write=memo.leadership.may_write
    )
    memo.kube = kube
    # Pod admission: which releases are split, and kopf's webhook server (admission.py).
    memo.splits = SplitRegistry()
    memo.admission = await admission.start(settings, config, memo.splits, kube, api_client)
    memo.health = health_server(config, memo)
    if memo.health is not None:
        await memo.health.start()
    registry = RegistryClient(
        timeout=config.registry_timeout_seconds,
        ca_file=config.registry_ca_file,
        insecure_registries=config.insecure_registries,
    )
    memo.preflight = preflight = Preflight(kube, registry, metrics, dry_run_for(config, metrics))
    memo.analyzer = analyzer_for(config, api_client)
    memo.notifier = Notifier()
    memo.requeues = Requeues(memo.leadership)
    memo.reconciler = Reconciler(
        kube,
        preflight,
        metrics,
        _now,
        measurer=memo.analyzer,
        proxies=proxy_admin_for(config, api_client),
        notifier=memo.notifier,
        on_split=memo.splits.on_split,  # admission labels new pods before a split acts
    )
    memo.requeues.reconciler = memo.reconciler
    memo.resync = asyncio.create_task(resync_forever(memo.reconciler, kube, config, memo.requeues))
    await memo.leadership.start()  # last: leading starts with a reconcile of everything


async def stop(memo: kopf.Memo) -> None:
    # First: no more writes from here, and the Lease free for the next leader at once.
    await memo.leadership.stop()
    memo.resync.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await memo.resync
    await memo.requeues.close()
    await memo.notifier.aclose()
    if memo.analyzer is not None:
        memo.analyzer.close()
    await memo.admission.stop()
    if memo.health is not None:
        await memo.health.stop()
    memo.kube.close()
    memo.preflight.close()


def leadership_for(
    config: Settings, api_client: ApiClient, memo: kopf.Memo, metrics: Metrics
) -> Leadership:
    """The Lease election, or leading alone when it is off."""
    if not config.leader_election:
        log.info("leader election off: this replica reconciles alone")
        metrics.set_leading(True)
        return Leadership()
    api = LeaseApi(
        api_client, field_manager=config.field_manager, timeout=config.lease_retry_period_seconds
    )

    async def catch_up() -> None:
        # A new leader starts from the status the last one wrote: one reconcile of each
        # release now, rather than at the next resync.
        await resync_once(memo.reconciler, memo.kube, config, memo.requeues)

    metrics.set_leading(False)
    return LeaseLeadership(api, config, on_lead=catch_up, on_change=metrics.set_leading)


def health_server(config: Settings, memo: kopf.Memo) -> HealthServer | None:
    """/healthz and /readyz where FILTERRELEASE_LIVENESS_ENDPOINT says (empty: none)."""
    if not config.liveness_endpoint:
        return None
    url = urlsplit(config.liveness_endpoint)
    checks = {
        "FilterReleases loaded": lambda: bool(memo.splits.loaded),
        "webhook listening": memo.admission.listening.is_set,
    }
    return HealthServer(
        url.hostname or "0.0.0.0",  # noqa: S104  (a pod's probes come to its own IP)
        url.port or 8080,
        checks,
        leading=lambda: bool(memo.leadership.leading),
    )


def analyzer_for(config: Settings, api_client: ApiClient) -> Analyzer | None:
    if not config.prometheus_url:
        log.warning("no FILTERRELEASE_PROMETHEUS_URL: canary analysis cannot measure (holds)")
        return None
    timeout = config.analysis_timeout_seconds
    logs = PodLogs(api_client, timeout=timeout)
    return Analyzer(
        config.prometheus_url,
        logs.read,
        timeout=timeout,
        scrape_interval=timedelta(seconds=config.prometheus_scrape_seconds),
    )


def proxy_admin_for(config: Settings, api_client: ApiClient) -> ProxyAdmin | None:
    if not config.proxy_confirmation:
        log.warning("proxy confirmation is off: releases trust the written WasmPlugins")
        return None
    return ProxyAdmin(
        api_client,
        concurrency=config.proxy_read_concurrency,
        timeout=config.proxy_read_timeout_seconds,
    )


def dry_run_for(config: Settings, metrics: Metrics) -> DryRun | None:
    if not config.dry_run:
        return None
    try:
        envoy = Path(config.envoy_binary) if config.envoy_binary else find_envoy()
    except FileNotFoundError:
        log.warning("no Envoy binary: pre-flight will not load modules in Envoy (dry run off)")
        return None
    if not config.dry_run_pool_mib:
        log.info("pre-flight dry runs start %s for each check", envoy)
        return EnvoyDryRun(envoy)
    log.info("pre-flight dry runs keep modules loaded in %s (up to %d MiB)",
             envoy, config.dry_run_pool_mib)  # fmt: skip
    pool = WarmDryRuns(envoy, memory_bytes=config.dry_run_pool_mib * 2**20)
    # Read at each scrape: the pool's size and memory change between dry runs too.
    metrics.dry_run_envoys.set_function(pool.size)
    metrics.dry_run_memory.set_function(pool.memory_bytes)
    return pool


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # We post our own Events (one per action); kopf would add one per log line.
    settings.posting.enabled = False
    # kopf would watch all CRDs to notice resources appearing; ours are known in advance, and
    # reading every CRD in the cluster is a permission the operator should not need.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Should kopf ever need to store progress, keep it out of the status we own.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)


# Backoff for transient API errors (5xx, throttling, a webhook that is down); after the last
# attempt the resync loop takes over.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class Requeues:
    """Reconciles asked for by a decision (a canary step, a pause ending, a measurement due):
    at most one pending per release, the earliest wins. Timers, not sleeping tasks, so a
    thousand paused rollouts cost nothing. Dropped while this replica does not lead: the
    next leader's first reconcile schedules its own."""

    def __init__(self, leadership: Leadership) -> None:
        self._leadership = leadership
        self._timers: dict[tuple[str, str], tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconciler: Reconciler | None = None

    @property
    def leading(self) -> bool:
        return self._leadership.leading

    def schedule(self, namespace: str, name: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        key = (namespace, name)
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        if self.reconciler is None or not self._leadership.leading:
            return
        task = asyncio.create_task(reconcile_logged(self.reconciler, *key, requeues=self))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def reconcile_logged(
    reconciler: Reconciler,
    namespace: str,
    name: str,
    delays: tuple[float, ...] = RETRY_DELAYS,
    *,
    requeues: Requeues | None = None,
) -> None:
    for delay in (*delays, None):
        try:
            decision = await reconciler.reconcile(namespace, name)
            if decision is not None and decision.requeue_after is not None and requeues:
                requeues.schedule(namespace, name, decision.requeue_after)
            if decision is None or not decision.retry or delay is None:
                return
            reason = decision.trigger.value
        except KubeError as err:
            # An API hiccup must never crash the operator or block other releases.
            if not err.retriable or delay is None:
                log.warning("reconcile of %s/%s failed: %s", namespace, name, err)
                return
            reason = str(err)
        log.info("reconcile of %s/%s: retrying in %ss (%s)", namespace, name, delay, reason)
        await asyncio.sleep(delay)


async def resync_forever(
    reconciler: Reconciler, kube: KubeApi, settings: Settings, requeues: Requeues
) -> None:
    # At start too: releases deleted while no operator ran left their track labels on pods.
    await sweep_tracks(reconciler, kube, settings, requeues)
    while True:
        await asyncio.sleep(settings.resync_seconds)
        await resync_once(reconciler, kube, settings, requeues)


async def _releases_by_namespace(
    kube: KubeApi, settings: Settings, requeues: Requeues, why: str
) -> AsyncIterator[tuple[str | None, list[dict[str, Any]]]]:
    """Each watched namespace (None: all) with its releases, while this replica leads."""
    for namespace in settings.namespaces or (None,):
        if not requeues.leading:
            return
        try:
            releases = await kube.list_releases(namespace)
        except KubeError as err:
            log.warning("%s: cannot list FilterReleases: %s", why, err)
            continue
        yield namespace, releases


async def resync_once(
    reconciler: Reconciler, kube: KubeApi, settings: Settings, requeues: Requeues
) -> None:
    """Reconcile every release once (the leader only; a follower has nothing to do)."""
    async for namespace, releases in _releases_by_namespace(kube, settings, requeues, "resync"):
        for body in releases:
            if not requeues.leading:
                return
            meta = body["metadata"]
            # No backoff here: one failing release must not hold up the others' resync.
            await reconcile_logged(
                reconciler, meta["namespace"], meta["name"], delays=(), requeues=requeues
            )
        if not requeues.leading:
            return
        await _sweep(reconciler, kube, namespace, releases)


async def sweep_tracks(
    reconciler: Reconciler, kube: KubeApi, settings: Settings, requeues: Requeues
) -> None:
    """Take the track labels of releases that no longer exist off the pods (the leader only)."""
    async for namespace, releases in _releases_by_namespace(
        kube, settings, requeues, "track label clean-up"
    ):
        await _sweep(reconciler, kube, namespace, releases)


async def _sweep(
    reconciler: Reconciler, kube: KubeApi, namespace: str | None, releases: list[dict[str, Any]]
) -> None:
    try:
        await sweep(kube, reconciler.locks, namespace, releases)
    except KubeError as err:  # the next resync tries again
        log.warning("cannot clean up the track labels of deleted releases: %s", err)
