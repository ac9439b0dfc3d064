"""What the shell needs from the world, as Protocols: the Reconciler and the Preflight take these,
not the concrete adapters, so tests/shell can drive the real Reconciler against in-memory fakes.

KubeApi (kube/api.py) satisfies the cluster Protocols structurally; handlers.py hands it over
and mypy checks that it fits there. Measurements are asked of a Measurer (analysis.Analyzer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from filterrelease.core.analysis import AnalysisTarget, MetricResult
from filterrelease.core.analysis_spec import Metric
from filterrelease.core.hooks import GateResult, HookType, Subject, Webhook
from filterrelease.core.module import ModuleFailure, VerifiedModule
from filterrelease.core.proxies import Expected, ProxyReading
from filterrelease.core.spec import Module


@dataclass(frozen=True)
class SelectedPod:
    """A live pod a release's workload selector matches."""

    labels: dict[str, str]
    uid: str = ""
    sidecar: bool = False  # Running, with an istio-proxy container: a proxy to confirm


class DryRun(Protocol):
    """Loads a module into a real Envoy with a plugin config (providers/dryrun_pool.WarmDryRuns,
    or dryrun.EnvoyDryRun): raises ModuleProblem when Envoy cannot run it. Blocking; called
    from the pre-flight's own threads."""

    def check(self, module: bytes, plugin_name: str | None, configuration: str) -> None: ...

    def close(self) -> None: ...


class ProxyReader(Protocol):
    """Reads what selected proxies run (kube/proxies.ProxyAdmin): pod → expectation in, pod →
    reading out. It may answer from what a proxy confirmed before."""

    async def read(
        self, namespace: str, wants: Mapping[str, tuple[str, Expected]]
    ) -> dict[str, ProxyReading]: ...


class ReleaseReader(Protocol):
    """What a reconcile reads: the release, its WasmPlugins, its pods, its AnalysisTemplates;
    the releases of a namespace and the pods with track labels (to clean up after deletions)."""

    async def get_release(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def get_wasmplugin(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_pods(
        self, namespace: str, match_labels: dict[str, str]
    ) -> dict[str, SelectedPod]: ...

    async def get_analysis_template(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_releases(self, namespace: str | None) -> list[dict[str, Any]]: ...

    async def list_tracked_pods(
        self, namespace: str | None, key: str | None = None
    ) -> dict[tuple[str, str], dict[str, str]]: ...


class ReleaseWriter(Protocol):
    """What a reconcile writes. Each write may raise kube.api.KubeError (NotLeaderError when
    this replica does not lead)."""

    async def apply_wasmplugin(
        self, manifest: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]: ...

    async def delete_wasmplugin(self, namespace: str, name: str, uid: str | None) -> None: ...

    async def label_pod(self, namespace: str, name: str, key: str, value: str | None) -> bool: ...

    async def patch_release_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None: ...

    async def remove_release_annotation(self, namespace: str, name: str, key: str) -> None: ...

    async def emit_event(
        self, release: dict[str, Any], *, type_: str, reason: str, message: str, now: datetime
    ) -> None: ...


class ReleaseCluster(ReleaseReader, ReleaseWriter, Protocol):
    """Everything the Reconciler asks of the cluster."""


class SecretReader(Protocol):
    """What the pre-flight reads: one key of a pull secret, None when it is not there."""

    async def get_secret_data(self, namespace: str, name: str, key: str) -> bytes | None: ...


class ModuleVerifier(Protocol):
    """Proves a release's module can be fetched and loaded (preflight.Preflight)."""

    async def verify(
        self,
        namespace: str,
        module: Module,
        plugin_config: dict[str, Any] | None,
        generation: int,
        previous: VerifiedModule | None,
    ) -> VerifiedModule | ModuleFailure: ...


class Measurer(Protocol):
    """Takes the measurements that are due (analysis.Analyzer)."""

    async def measure_due(
        self,
        metrics: Sequence[Metric],
        results: Mapping[str, MetricResult],
        target: AnalysisTarget,
        now: datetime,
        step_started: datetime,
    ) -> tuple[MetricResult, ...]: ...


class GateKeeper(Protocol):
    """Asks a release's gate webhooks of one type whether to go on (hooks.gate)."""

    async def __call__(
        self, webhooks: Iterable[Webhook], hook_type: HookType, subject: Subject
    ) -> GateResult: ...
