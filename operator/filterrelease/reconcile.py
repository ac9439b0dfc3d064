"""observe → decide → execute, for one FilterRelease at a time.

The decisions are made by the pure core (core.rollout.decide); this shell only gathers what the
core needs, carries out the actions it returns in order, and writes the status it computed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from filterrelease.core.actions import ApplyWasmPlugin, EmitEvent
from filterrelease.core.render import ReleaseRef, stable_plugin_name
from filterrelease.core.rollout import (
    Decision,
    Observation,
    decide,
    write_failed,
    write_retrying,
)
from filterrelease.core.spec import FilterReleaseSpec, parse_spec
from filterrelease.core.status import FilterReleaseStatus
from filterrelease.kube.api import KubeApi, KubeError
from filterrelease.preflight import Preflight
from filterrelease.telemetry import Metrics

log = logging.getLogger(__name__)


def _status(raw: object) -> FilterReleaseStatus:
    try:
        return FilterReleaseStatus.model_validate(raw or {})
    except ValidationError:
        # A status we cannot read (hand-edited, or from an incompatible version) is rebuilt from
        # what is observed rather than crashing the reconcile.
        log.warning("ignoring an unreadable status")
        return FilterReleaseStatus()


class Reconciler:
    def __init__(
        self,
        kube: KubeApi,
        preflight: Preflight,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self._kube = kube
        self._preflight = preflight
        self._metrics = metrics
        self._clock = clock
        # One reconcile at a time per release: watch events and the resync loop may overlap.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Bring one release's WasmPlugins and status in line with its spec."""
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            with self._metrics.reconcile_seconds.time():
                try:
                    return await self._reconcile(namespace, name)
                except KubeError:
                    self._metrics.reconcile_errors.inc()
                    raise

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)
        self._metrics.forget(namespace, name)

    async def _reconcile(self, namespace: str, name: str) -> Decision | None:
        # Read fresh rather than trusting the watch event's body: it may predate our last write.
        body = await self._kube.get_release(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            # Deleted: the garbage collector removes the owned WasmPlugins.
            self.forget(namespace, name)
            return None
        obs = await self._observe(body)
        decision = decide(obs)
        decision = await self._execute(body, obs, decision)
        self._metrics.reconciles.labels(namespace, name, decision.trigger.value).inc()
        self._metrics.set_phase(namespace, name, decision.phase)
        return decision

    async def _observe(self, body: dict[str, Any]) -> Observation:
        meta = body["metadata"]
        release = ReleaseRef(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
        )
        live_name = stable_plugin_name(release)
        live = await self._kube.get_wasmplugin(release.namespace, live_name)
        spec = parse_spec(body.get("spec"))
        status = _status(body.get("status"))
        module = None
        if isinstance(spec, FilterReleaseSpec):
            module = await self._preflight.verify(
                release.namespace,
                spec.module,
                spec.plugin_config,
                release.generation,
                status.module,
            )
        return Observation(
            release=release,
            spec=spec,
            status=status,
            live_plugins={live_name: live} if live is not None else {},
            module=module,
            now=self._clock(),
        )

    async def _execute(
        self, body: dict[str, Any], obs: Observation, decision: Decision
    ) -> Decision:
        retry: KubeError | None = None
        for action in decision.actions:
            if not isinstance(action, ApplyWasmPlugin):
                continue
            try:
                await self._kube.apply_wasmplugin(action.manifest)
            except KubeError as err:
                # Nothing was written: the WasmPlugin still carries what it carried before.
                if err.retriable:
                    self._metrics.wasmplugin_writes.labels("retrying").inc()
                    decision, retry = write_retrying(obs, decision, err.message), err
                else:
                    self._metrics.wasmplugin_writes.labels("refused").inc()
                    decision = write_failed(obs, decision, err.message)
                break
            self._metrics.wasmplugin_writes.labels("created" if action.created else "updated").inc()
        for action in decision.actions:
            if isinstance(action, EmitEvent):
                await self._emit(body, action)
        if decision.status.to_body() != obs.status.to_body():
            await self._kube.patch_release_status(
                obs.release.namespace, obs.release.name, decision.status.to_body()
            )
        if retry is not None:
            raise retry  # the caller retries with backoff
        return decision

    async def _emit(self, body: dict[str, Any], event: EmitEvent) -> None:
        try:
            await self._kube.emit_event(
                body,
                type_=event.type,
                reason=event.reason,
                message=event.message,
                now=self._clock(),
            )
        except KubeError as err:
            # An Event is a notification: losing one must not stop the release.
            log.warning("could not post event %s: %s", event.reason, err)
