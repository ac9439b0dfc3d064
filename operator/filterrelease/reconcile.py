"""observe → decide → execute, for one FilterRelease at a time.

The decisions are made by the pure core (core.rollout.decide); this shell only gathers what the
core needs, carries out the actions it returns in order, and writes the status it computed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from filterrelease.core.actions import (
    Action,
    ApplyWasmPlugin,
    ConsumeRequest,
    DeleteWasmPlugin,
    EmitEvent,
    LabelPod,
    MarkSplit,
)
from filterrelease.core.analysis import AnalysisTarget, MetricResult
from filterrelease.core.analysis_spec import Metric
from filterrelease.core.confirmation import layout_key, proxy_needs
from filterrelease.core.decision import Decision
from filterrelease.core.failures import action_failed, action_retrying
from filterrelease.core.hooks import Event, GateResult, HookType, Subject
from filterrelease.core.module import ModuleFailure, VerifiedModule
from filterrelease.core.needs import Needs, unmeasured
from filterrelease.core.observation import Context, Observation, derive
from filterrelease.core.render import (
    ReleaseRef,
    canary_plugin_name,
    live_plugin_state,
    module_version,
    stable_plugin_name,
)
from filterrelease.core.requests import REQUEST_ANNOTATION
from filterrelease.core.rollout import decide, needs
from filterrelease.core.rollout_state import FLAGGER_PHASE
from filterrelease.core.spec import (
    FilterReleaseSpec,
    TemplateMetrics,
    expand_templates,
    parse_spec,
    referenced_templates,
)
from filterrelease.core.status import FilterReleaseStatus, merge_patch
from filterrelease.core.timestamps import parse_timestamp
from filterrelease.core.tracks import CANARY, track_label
from filterrelease.core.undo import active_undo
from filterrelease.hooks import Notifier, gate
from filterrelease.kube.api import KubeError
from filterrelease.ports import GateKeeper, Measurer, ModuleVerifier, ProxyReader, ReleaseCluster
from filterrelease.release_locks import ReleaseLocks
from filterrelease.telemetry import Metrics
from filterrelease.tracks import remove_track

log = logging.getLogger(__name__)


def _status(raw: object) -> FilterReleaseStatus:
    try:
        return FilterReleaseStatus.model_validate(raw or {})
    except ValidationError:
        # A status we cannot read (hand-edited, or from an incompatible version) is rebuilt from
        # what is observed rather than crashing the reconcile.
        log.warning("ignoring an unreadable status")
        return FilterReleaseStatus()


class SplitListener(Protocol):
    """Told, before anything relies on it, that a release's pods are (or no longer are) split,
    so that the pod admission webhook labels new pods from that moment on."""

    def __call__(
        self, namespace: str, name: str, match_labels: dict[str, str], split: bool
    ) -> None: ...


def _no_split_listener(
    namespace: str, name: str, match_labels: dict[str, str], split: bool
) -> None:
    return None


class Reconciler:
    def __init__(
        self,
        kube: ReleaseCluster,
        preflight: ModuleVerifier,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        measurer: Measurer | None = None,
        proxies: ProxyReader | None = None,
        notifier: Notifier | None = None,
        on_split: SplitListener = _no_split_listener,
        ask_gate: GateKeeper = gate,
        locks: ReleaseLocks | None = None,
    ) -> None:
        self._kube = kube
        self._preflight = preflight
        self._metrics = metrics
        self._clock = clock
        self._measurer = measurer
        # None: nothing reads the proxies, and no release waits for them (today's trust in
        # the written WasmPlugins).
        self._proxies = proxies
        self._notifier = notifier
        self._on_split = on_split
        self._ask_gate = ask_gate
        # One reconcile at a time per release: watch events and the resync loop may overlap.
        self.locks = locks or ReleaseLocks()

    async def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Bring one release's WasmPlugins and status in line with its spec."""
        async with self.locks.of(namespace, name):
            with self._metrics.reconcile_seconds.time():
                try:
                    return await self._reconcile(namespace, name)
                except KubeError:
                    self._metrics.reconcile_errors.labels(namespace, name).inc()
                    raise

    def forget(self, namespace: str, name: str) -> None:
        self._metrics.forget(namespace, name)

    async def _reconcile(self, namespace: str, name: str) -> Decision | None:
        # Read fresh rather than trusting the watch event's body: it may predate our last write.
        body = await self._kube.get_release(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            # Deleted: the garbage collector removes the owned WasmPlugins; the track labels
            # on its pods are ours to remove (under this lock: a new release of the name waits).
            self.forget(namespace, name)
            await remove_track(self._kube, namespace, track_label(name))
            return None
        obs = await self._observe(body)
        ctx = derive(obs)
        obs = await self._read_proxies(obs, ctx)
        obs = await self._answer(obs, needs(obs, ctx))
        decision = decide(obs, ctx)
        decision = await self._execute(body, obs, decision)
        self._metrics.reconciles.labels(namespace, name, decision.trigger.value).inc()
        self._metrics.set_phase(namespace, name, decision.phase)
        self._metrics.set_proxies(namespace, name, decision.status.proxies)
        self._count_rollout(namespace, name, obs, decision)
        return decision

    def _count_rollout(
        self, namespace: str, name: str, obs: Observation, decision: Decision
    ) -> None:
        status = decision.status
        running = status.rollout is not None and status.canary is not None
        step = status.rollout.step + 1 if running and status.rollout else None
        self._metrics.set_rollout(namespace, name, weight=status.canary_weight, step=step)
        # A rollout ended when the newest history entry is new in this decision.
        before = obs.status.history[0] if obs.status.history else None
        after = status.history[0] if status.history else None
        if after is not None and after != before and after.outcome in ("Promoted", "RolledBack"):
            self._metrics.rollouts.labels(namespace, name, after.outcome).inc()
        new = {m.finished_at + m.metric: m for r in obs.step_results + obs.background_results
               for m in r.measurements}  # fmt: skip
        old = obs.status.rollout
        seen = {m.finished_at + m.metric for r in (old.analysis + old.background if old else ())
                for m in r.measurements}  # fmt: skip
        for key, measurement in new.items():
            if key not in seen:
                self._metrics.record_measurement(namespace, name, measurement)

    async def _observe(self, body: dict[str, Any]) -> Observation:
        meta = body["metadata"]
        release = ReleaseRef(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
        )
        names = (stable_plugin_name(release), canary_plugin_name(release))
        found = await asyncio.gather(
            *(self._kube.get_wasmplugin(release.namespace, n) for n in names)
        )
        live = {n: p for n, p in zip(names, found, strict=True) if p is not None}
        spec = parse_spec(body.get("spec"))
        if isinstance(spec, FilterReleaseSpec) and (refs := referenced_templates(spec)):
            spec = expand_templates(spec, await self._templates(release.namespace, refs))
        status = _status(body.get("status"))
        module = None
        pods: dict[str, dict[str, str]] = {}
        sidecars: dict[str, str] = {}
        if isinstance(spec, FilterReleaseSpec):
            module = await self._preflight.verify(
                release.namespace,
                spec.module,
                spec.plugin_config,
                release.generation,
                status.module,
            )
            confirm = self._proxies is not None and not _confirmed(spec, status, module, release)
            split = _pods_matter(spec, status, release, live)
            if spec.selector is not None and (confirm or split):
                selected = await self._kube.list_pods(release.namespace, spec.selector.match_labels)
                # Listed only to ask their proxies: the layout (and status.stablePods) leaves
                # them out, as for any release that never splits.
                pods = {name: pod.labels for name, pod in selected.items()} if split else {}
                if self._proxies is not None:
                    sidecars = {name: pod.uid for name, pod in selected.items() if pod.sidecar}
        return Observation(
            release=release,
            spec=spec,
            status=status,
            live_plugins=live,
            module=module,
            now=self._clock(),
            pods=pods,
            sidecars=sidecars,
            request=(meta.get("annotations") or {}).get(REQUEST_ANNOTATION),
        )

    async def _read_proxies(self, obs: Observation, ctx: Context | None) -> Observation:
        """What the selected proxies run, for the ones proxy_needs() names."""
        wants = proxy_needs(obs, ctx)
        if self._proxies is None or not wants:
            return obs
        asked = {pod: (obs.sidecars[pod], want) for pod, want in wants.items()}
        readings = await self._proxies.read(obs.release.namespace, asked)
        return obs.model_copy(update={"proxies": readings})

    async def _templates(
        self, namespace: str, names: tuple[str, ...]
    ) -> dict[str, TemplateMetrics]:
        """Each named AnalysisTemplate's metrics, or why it cannot be used. Read at every
        reconcile: a template changed mid-rollout applies from the next measurement."""
        found: dict[str, TemplateMetrics] = {}
        for name in names:
            body = await self._kube.get_analysis_template(namespace, name)
            if body is None:
                found[name] = f"AnalysisTemplate {name!r} not found in namespace {namespace}"
                continue
            try:
                raw = (body.get("spec") or {}).get("metrics") or []
                found[name] = tuple(Metric.model_validate(m) for m in raw)
            except ValidationError as err:
                found[name] = f"AnalysisTemplate {name!r} is unusable: {err.errors()[0]['msg']}"
        return found

    async def _answer(self, obs: Observation, need: Needs) -> Observation:
        """Ask the gates and take the measurements decide() needs, concurrently."""
        if not (need.gate or need.rollback_hooks or need.step_metrics or need.background_metrics):
            return obs.model_copy(update=_results(need))
        spec = obs.spec
        if not isinstance(spec, FilterReleaseSpec) or spec.canary is None:
            raise TypeError("only a canary rollout needs gates and measurements")
        hooks = spec.canary.webhooks
        subject = Subject(
            name=obs.release.name,
            namespace=obs.release.namespace,
            phase="Progressing",
            checksum=need.checksum,
        )
        gates: dict[HookType, GateResult] = {}

        async def ask(hook_type: HookType) -> None:
            if any(h.type is hook_type for h in hooks):
                gates[hook_type] = await self._ask_gate(hooks, hook_type, subject)

        async def measure(
            metrics: tuple[Metric, ...], results: tuple[MetricResult, ...]
        ) -> tuple[MetricResult, ...]:
            if not metrics:
                return results
            new = await self._measure(obs, need, metrics, results)
            by_name = {r.name: r for r in results} | {r.name: r for r in new}
            return tuple(by_name.values())

        jobs: list[Any] = []
        if need.gate:
            jobs.append(ask(need.gate))
        if need.rollback_hooks:
            jobs.append(ask(HookType.ROLLBACK))
        step_job = measure(need.step_metrics, need.step_results)
        background_job = measure(need.background_metrics, need.background_results)
        *_, step_results, background_results = await asyncio.gather(*jobs, step_job, background_job)
        answered = need.model_copy(
            update={"step_results": step_results, "background_results": background_results}
        )
        return obs.model_copy(update=_results(answered) | {"gates": gates})

    async def _measure(
        self,
        obs: Observation,
        need: Needs,
        metrics: tuple[Metric, ...],
        results: tuple[MetricResult, ...],
    ) -> tuple[MetricResult, ...]:
        spec = obs.spec
        if not isinstance(spec, FilterReleaseSpec) or spec.selector is None:
            raise TypeError("only a canary rollout of a selector is measured")
        track = track_label(obs.release.name)
        target = AnalysisTarget(
            namespace=obs.release.namespace,
            workload_selector=spec.selector.match_labels,
            canary_pods=tuple(sorted(p for p, lb in obs.pods.items() if lb.get(track) == CANARY)),
            stable_pods=tuple(sorted(p for p, lb in obs.pods.items() if lb.get(track) != CANARY)),
            since=parse_timestamp(need.canary_since or need.step_started_at or ""),
        )
        if self._measurer is None:
            return unmeasured(metrics, results, obs.now)
        return await self._measurer.measure_due(
            metrics,
            {r.name: r for r in results},
            target,
            obs.now,
            parse_timestamp(need.step_started_at or ""),
        )

    async def _execute(
        self, body: dict[str, Any], obs: Observation, decision: Decision
    ) -> Decision:
        retry: KubeError | None = None
        for action in decision.actions:
            if isinstance(action, EmitEvent):
                continue
            try:
                await self._act(obs, action)
            except KubeError as err:
                # What ran before took effect and is safe on its own (core/layout.py); what
                # follows did not run. The next reconcile plans again from what it observes.
                if err.retriable:
                    self._metrics.wasmplugin_writes.labels("retrying").inc()
                    decision, retry = action_retrying(obs, decision, action, err.message), err
                else:
                    self._metrics.wasmplugin_writes.labels("refused").inc()
                    decision = action_failed(obs, decision, action, err.message)
                break
        # The status before the Events: a step's outcome is recorded before it is announced,
        # so an operator killed in between loses an Event, never a step (which would run again).
        old = obs.status.to_body()
        patch = merge_patch(body.get("status") or {}, decision.status.to_body())
        if decision.status.to_body() != old and patch:
            await self._kube.patch_release_status(obs.release.namespace, obs.release.name, patch)
        for action in decision.actions:
            if isinstance(action, EmitEvent):
                await self._emit(body, obs, action, decision)
        if retry is not None:
            raise retry  # the caller retries with backoff
        return decision

    async def _act(self, obs: Observation, action: Action) -> None:
        ns = obs.release.namespace
        match action:
            case ApplyWasmPlugin():
                await self._kube.apply_wasmplugin(action.manifest)
                verb = "created" if action.created else "updated"
                self._metrics.wasmplugin_writes.labels(verb).inc()
            case DeleteWasmPlugin():
                await self._kube.delete_wasmplugin(ns, action.name, action.uid)
            case LabelPod():
                await self._kube.label_pod(ns, action.pod, action.key, action.value)
            case MarkSplit():
                spec = obs.spec
                labels = (
                    spec.selector.match_labels
                    if isinstance(spec, FilterReleaseSpec) and spec.selector
                    else {}
                )
                # Admission first: from here on new pods get a track label. status.split is
                # recorded by this decision's one status write, after every action; narrowing
                # waits for a reconcile that observes it (core/layout.py), so it follows both.
                self._on_split(ns, obs.release.name, labels, action.split)
            case ConsumeRequest():
                await self._kube.remove_release_annotation(ns, obs.release.name, REQUEST_ANNOTATION)

    async def _emit(
        self, body: dict[str, Any], obs: Observation, event: EmitEvent, decision: Decision
    ) -> None:
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
        spec = obs.spec  # parsed once, in _observe
        if self._notifier is None or not isinstance(spec, FilterReleaseSpec) or not spec.canary:
            return
        rollout = decision.status.rollout
        subject = Subject(
            name=obs.release.name,
            namespace=obs.release.namespace,
            phase=FLAGGER_PHASE.get(decision.trigger, "Succeeded"),
            checksum=rollout.revision if rollout else "",
        )
        self._notifier.send(
            spec.canary.webhooks,
            subject,
            Event(message=f"{event.reason}: {event.message}", type=event.type, time=self._clock()),
        )


def _results(need: Needs) -> dict[str, Any]:
    return {"step_results": need.step_results, "background_results": need.background_results}


def _confirmed(
    spec: FilterReleaseSpec,
    status: FilterReleaseStatus,
    module: VerifiedModule | ModuleFailure,
    release: ReleaseRef,
) -> bool:
    """Every proxy confirmed the version a steady release asks for: a resync lists no pod and
    reads no proxy for it (a canary lists its pods anyway)."""
    if status.proxies is None or status.proxies.confirmed_at is None:
        return False
    undone = active_undo(status, release.generation)
    if undone is not None:
        # An undo in force: the proxies run the version it went back to, not the spec's.
        return status.proxies.target == layout_key(undone.config_hash)
    if not isinstance(module, VerifiedModule):
        return False
    desired = module_version(spec, release.generation, module).config_hash
    return status.proxies.target == layout_key(desired)


def _pods_matter(
    spec: FilterReleaseSpec,
    status: FilterReleaseStatus,
    release: ReleaseRef,
    live: dict[str, dict[str, Any]],
) -> bool:
    """Pod labels only matter while a release is (or is becoming, or was) split: a release
    without a canary strategy that never split needs no pod list at each resync."""
    if spec.canary is not None or status.split or canary_plugin_name(release) in live:
        return True
    stable = live_plugin_state(release, live.get(stable_plugin_name(release)))
    return stable is not None and stable.narrowed
