"""In-memory stand-ins for what the Reconciler talks to (filterrelease.ports): a cluster, a
measurer with scripted results, and a module verifier.

The module verifier is a fake rather than the real Preflight over a fake registry: what the
pre-flight proves (layout, digest, proxy-wasm ABI, pull secrets) is covered by
tests/unit/test_module.py and the live-cluster tests, and the real one would need a valid wasm
binary per version. These tests are about the reconcile loop, which only sees its verdict.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from filterrelease.core import analysis
from filterrelease.core.analysis import AnalysisTarget, MeasurementPhase, MetricResult
from filterrelease.core.analysis_spec import Metric
from filterrelease.core.hooks import GateResult, HookType, Subject, Webhook
from filterrelease.core.module import ModuleFailure, VerifiedModule
from filterrelease.core.proxies import Expected, FilterKind, LoadedFilter, ProxyReading
from filterrelease.core.spec import Module
from filterrelease.core.tracks import TRACK_PREFIX
from filterrelease.ports import SelectedPod

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

Key = tuple[str, str]  # (namespace, name)


class Crash(BaseException):
    """The operator process dies. A BaseException, as a kill is: nothing in the shell may
    catch it and carry on."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Clock:
    """The injected clock: tests move it, the Reconciler reads it."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class RecordedEvent:
    involved: str
    type: str
    reason: str
    message: str


@dataclass
class FakeCluster:
    """The API server, for FilterReleases, AnalysisTemplates, WasmPlugins, pods and Events.

    Every write bumps a resourceVersion; plugin writes behave like server-side apply (create
    or update in place, the uid kept); status writes are merge patches; `writes` counts every
    write so a test can say that nothing was written."""

    releases: dict[Key, dict[str, Any]] = field(default_factory=dict)
    plugins: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, str]] = field(default_factory=dict)
    templates: dict[Key, dict[str, Any]] = field(default_factory=dict)
    events: list[RecordedEvent] = field(default_factory=list)
    writes: int = 0  # WasmPlugin, pod and release writes; Events are counted apart
    sidecars: bool = False  # every pod has a proxy to confirm (FakeProxies reads them)
    # The operator dies at this write attempt (Events included), before it takes effect: the
    # countdown is set by a test and reaches zero once.
    crash_in: int | None = None
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _uids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _bump(self, obj: dict[str, Any]) -> None:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))

    def _survive(self) -> None:
        if self.crash_in is None:
            return
        self.crash_in -= 1
        if self.crash_in <= 0:
            self.crash_in = None
            raise Crash

    def _write(self) -> None:
        self._survive()
        self.writes += 1

    def uid(self) -> str:
        return f"uid-{next(self._uids)}"

    # What tests set up

    def put_release(self, body: dict[str, Any]) -> None:
        """Create the release, or replace its spec as a user would (generation + 1)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.releases.get(key)
        stored = copy.deepcopy(body)
        if old is None:
            stored["metadata"].update(uid=self.uid(), generation=1)
        else:
            stored["metadata"] = old["metadata"] | {"generation": old["metadata"]["generation"] + 1}
            stored["status"] = old.get("status", {})
        self._bump(stored)
        self.releases[key] = stored

    def delete_release(self, namespace: str, name: str, *, collect: bool = True) -> None:
        """Delete the release as a user would; `collect`: the garbage collector has also
        removed the WasmPlugins it owns (it does so asynchronously on a real cluster)."""
        uid = self.releases.pop((namespace, name))["metadata"]["uid"]
        if collect:
            for key, plugin in list(self.plugins.items()):
                owners = plugin["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    del self.plugins[key]

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        meta = self.releases[(namespace, name)]["metadata"]
        meta.setdefault("annotations", {})[key] = value
        self._bump(self.releases[(namespace, name)])

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.releases[(namespace, name)].get("status") or {})

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    # ReleaseReader

    async def get_release(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.releases.get((namespace, name)))

    async def get_wasmplugin(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.plugins.get((namespace, name)))

    async def list_pods(
        self, namespace: str, match_labels: dict[str, str]
    ) -> dict[str, SelectedPod]:
        return {
            pod: SelectedPod(labels=dict(labels), uid=f"uid-{pod}", sidecar=self.sidecars)
            for (ns, pod), labels in self.pods.items()
            if ns == namespace and all(labels.get(k) == v for k, v in match_labels.items())
        }

    async def get_analysis_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.templates.get((namespace, name)))

    async def list_releases(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(body) for (ns, _), body in sorted(self.releases.items())
                if namespace in (None, ns)]  # fmt: skip

    async def list_tracked_pods(
        self, namespace: str | None, key: str | None = None
    ) -> dict[tuple[str, str], dict[str, str]]:
        return {
            (ns, pod): dict(labels)
            for (ns, pod), labels in self.pods.items()
            if namespace in (None, ns)
            and (key in labels if key else any(k.startswith(TRACK_PREFIX) for k in labels))
        }

    # ReleaseWriter

    async def apply_wasmplugin(
        self, manifest: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.plugins.get(key)
        stored = copy.deepcopy(manifest)
        stored["metadata"]["uid"] = old["metadata"]["uid"] if old else self.uid()
        if dry_run:
            return stored
        self._write()
        self._bump(stored)
        self.plugins[key] = stored
        return copy.deepcopy(stored)

    async def delete_wasmplugin(self, namespace: str, name: str, uid: str | None) -> None:
        self._write()
        live = self.plugins.get((namespace, name))
        if live is not None and uid in (None, live["metadata"]["uid"]):
            del self.plugins[(namespace, name)]

    async def label_pod(self, namespace: str, name: str, key: str, value: str | None) -> bool:
        self._write()
        labels = self.pods.get((namespace, name))
        if labels is None:
            return False
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        return True

    async def patch_release_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._write()
        body = self.releases[(namespace, name)]
        body["status"] = merge_patch(body.get("status") or {}, status)
        self._bump(body)

    async def remove_release_annotation(self, namespace: str, name: str, key: str) -> None:
        self._write()
        body = self.releases[(namespace, name)]
        (body["metadata"].get("annotations") or {}).pop(key, None)
        self._bump(body)

    async def emit_event(
        self, release: dict[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> None:
        self._survive()
        self.events.append(RecordedEvent(release["metadata"]["name"], type_, reason, message))


@dataclass
class FakeMeasurer:
    """Every due metric measured at once: Failed for the metrics named in `failing` (scripted by
    the test), Successful for the rest (such as the Wasm fast-fail that runs in the background)."""

    failing: set[str] = field(default_factory=set)
    calls: int = 0

    async def measure_due(
        self,
        metrics: Sequence[Metric],
        results: Mapping[str, MetricResult],
        target: AnalysisTarget,
        now: datetime,
        step_started: datetime,
    ) -> tuple[MetricResult, ...]:
        self.calls += 1
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        return tuple(
            analysis.record(
                metric,
                results.get(metric.name),
                analysis.Measurement(
                    metric=metric.name,
                    phase=(
                        MeasurementPhase.FAILED
                        if metric.name in self.failing
                        else MeasurementPhase.SUCCESSFUL
                    ),
                    started_at=stamp,
                    finished_at=stamp,
                    value=1.0,
                ),
            )
            for metric in metrics
        )


class FakeVerifier:
    """Every module verifies; its digest is made from the tag, so each version is distinct."""

    def __init__(self) -> None:
        self.calls = 0

    async def verify(
        self,
        namespace: str,
        module: Module,
        plugin_config: dict[str, Any] | None,
        generation: int,
        previous: VerifiedModule | None,
    ) -> VerifiedModule | ModuleFailure:
        self.calls += 1
        tag = module.url.rsplit(":", 1)[-1]
        digest = tag.encode().hex().rjust(64, "0")[-64:]
        repository = module.url.rsplit(":", 1)[0]
        return VerifiedModule(
            source_url=module.url,
            url=f"{repository}@sha256:{digest}",
            sha256=digest,
            layout="oci-wasm",
            abi="proxy_abi_version_0_2_1",
            generation=generation,
        )


async def no_gates(
    webhooks: Iterable[Webhook], hook_type: HookType, subject: Subject
) -> GateResult:
    raise AssertionError("these releases have no gate webhooks: nothing may ask one")


class FakeProxies:
    """Each pod's proxy as istiod and istio-agent would set it up from the cluster's
    WasmPlugins: it runs the plugins that select its pod, except that a pod in `slow` keeps
    what it ran before, and a pod in `denied` runs the deny-all fallback for its plugins."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.slow: set[str] = set()
        self.denied: set[str] = set()
        self.running: dict[str, dict[str, LoadedFilter]] = {}
        self.reads = 0

    def _now_runs(self, namespace: str, pod: str) -> dict[str, LoadedFilter]:
        labels = self.cluster.pods[(namespace, pod)]
        found: dict[str, LoadedFilter] = {}
        for (ns, name), plugin in self.cluster.plugins.items():
            spec = plugin["spec"]
            match = spec["selector"]["matchLabels"]
            if ns != namespace or any(labels.get(k) != v for k, v in match.items()):
                continue
            if pod in self.denied:
                found[name] = LoadedFilter(plugin=name, kind=FilterKind.DENY_ALL)
                continue
            url = spec["url"]
            checksum = url.rsplit("@sha256:", 1)[1] if "@sha256:" in url else spec.get("sha256")
            found[name] = LoadedFilter(
                plugin=name,
                kind=FilterKind.WASM,
                checksum=checksum,
                configuration=spec.get("pluginConfig"),
            )
        return found

    async def read(
        self, namespace: str, wants: Mapping[str, tuple[str, Expected]]
    ) -> dict[str, ProxyReading]:
        out = {}
        for pod in wants:
            self.reads += 1
            if pod not in self.slow:
                self.running[pod] = self._now_runs(namespace, pod)
            out[pod] = ProxyReading(filters=dict(self.running.get(pod, {})))
        return out
