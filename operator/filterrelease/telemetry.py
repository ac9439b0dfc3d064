"""The operator's own Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from filterrelease.core.analysis import Measurement
from filterrelease.core.rollout_state import Phase
from filterrelease.core.status import ProxiesStatus

# status.proxies' counts, one series each.
PROXY_STATES = ("stable", "canary", "pending", "fallback", "unknown", "unreachable")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "filterrelease_reconcile_total",
            "Reconciles of each FilterRelease, by what the state machine decided.",
            ["namespace", "name", "trigger"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "filterrelease_reconcile_errors_total",
            "Reconciles of each FilterRelease that failed on an API error and will be retried.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "filterrelease_reconcile_duration_seconds",
            "Time to observe, decide and execute for one FilterRelease.",
            registry=self.registry,
        )
        self.wasmplugin_writes = Counter(
            "filterrelease_wasmplugin_writes_total",
            "WasmPlugin writes, by outcome (created, updated, refused).",
            ["outcome"],
            registry=self.registry,
        )
        self.module_fetches = Counter(
            "filterrelease_module_fetches_total",
            "Requests pre-flight made to registries and module URLs, by what was fetched.",
            ["kind"],
            registry=self.registry,
        )
        self.preflights = Counter(
            "filterrelease_preflight_total",
            "Module pre-flight verdicts, by result (Verified or the failure reason).",
            ["result"],
            registry=self.registry,
        )
        self.dry_runs = Counter(
            "filterrelease_dry_runs_total",
            "Modules loaded into a pre-flight Envoy with a release's pluginConfig.",
            registry=self.registry,
        )
        self.dry_run_envoys = Gauge(
            "filterrelease_dry_run_envoys",
            "Warm pre-flight Envoys, one per module kept loaded for new pluginConfigs.",
            registry=self.registry,
        )
        self.dry_run_memory = Gauge(
            "filterrelease_dry_run_memory_bytes",
            "Their own resident memory (bounded by FILTERRELEASE_DRY_RUN_POOL_MIB).",
            registry=self.registry,
        )
        self.phase = Gauge(
            "filterrelease_release_phase",
            "1 for the phase each FilterRelease is in, 0 for the others.",
            ["namespace", "name", "phase"],
            registry=self.registry,
        )

        self.canary_weight = Gauge(
            "filterrelease_canary_weight_percent",
            "Share of each release's selected pods on the canary track (0 when not split).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.proxies = Gauge(
            "filterrelease_proxies",
            "Selected proxies of each release by what their Envoy was last seen running "
            "(status.proxies): confirmed stable or canary, pending, fallback, unknown, "
            "unreachable.",
            ["namespace", "name", "state"],
            registry=self.registry,
        )
        self.rollout_step = Gauge(
            "filterrelease_rollout_step",
            "Index (1-based) of the canary step each release runs; 0 when none runs.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.rollouts = Counter(
            "filterrelease_rollouts_total",
            "Canary rollouts that ended, by outcome (Promoted, RolledBack).",
            ["namespace", "name", "outcome"],
            registry=self.registry,
        )
        self.measurements = Counter(
            "filterrelease_analysis_measurements_total",
            "Analysis measurements taken for each release and metric, by phase (Successful, "
            "Failed, Inconclusive, Error).",
            ["namespace", "name", "metric", "phase"],
            registry=self.registry,
        )
        self.measured = Gauge(
            "filterrelease_analysis_value",
            "The last value each release's analysis metric measured, on the canary pods "
            "(track=canary) and on the stable pods (track=stable, where the provider measures "
            "them): what a canary-vs-stable panel plots.",
            ["namespace", "name", "metric", "track"],
            registry=self.registry,
        )

        self.leader = Gauge(
            "filterrelease_leader",
            "1 while this replica holds the Lease and reconciles, 0 while it follows.",
            registry=self.registry,
        )
        self.build_info = Gauge(
            "filterrelease_build_info",
            "Always 1; the labels say which build runs.",
            ["version", "python", "kopf"],
            registry=self.registry,
        )

    def set_build(self, version: str, python: str, kopf: str) -> None:
        self.build_info.labels(version, python, kopf).set(1)

    def set_leading(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)
        if not leading:
            # Per-release gauges come from the leader only: a replica that stopped leading
            # must not go on reporting phases it no longer updates (dashboards sum replicas).
            for gauge in (self.phase, self.canary_weight, self.rollout_step, self.proxies):
                gauge.clear()

    def set_rollout(
        self, namespace: str, name: str, *, weight: int | None, step: int | None
    ) -> None:
        self.canary_weight.labels(namespace, name).set(weight or 0)
        self.rollout_step.labels(namespace, name).set(step or 0)

    def set_proxies(self, namespace: str, name: str, proxies: ProxiesStatus | None) -> None:
        if proxies is None:
            return
        for state in PROXY_STATES:
            self.proxies.labels(namespace, name, state).set(getattr(proxies, state))

    def set_phase(self, namespace: str, name: str, phase: Phase) -> None:
        for p in Phase:
            self.phase.labels(namespace, name, p.value).set(1 if p == phase else 0)

    def record_measurement(self, namespace: str, name: str, measurement: Measurement) -> None:
        """Count one new measurement and keep its values as the metric's last ones."""
        metric = measurement.metric
        self.measurements.labels(namespace, name, metric, measurement.phase.value).inc()
        for track, value in (("canary", measurement.value), ("stable", measurement.baseline)):
            if value is not None:
                self.measured.labels(namespace, name, metric, track).set(value)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted release."""
        for family in (
            self.phase,
            self.reconciles,
            self.reconcile_errors,
            self.proxies,
            self.canary_weight,
            self.rollout_step,
            self.rollouts,
            self.measurements,
            self.measured,
        ):
            _remove_release(family, namespace, name)

    def serve(self, address: str, port: int) -> None:
        start_http_server(port, addr=address, registry=self.registry)


def _remove_release(family: Counter | Gauge, namespace: str, name: str) -> None:
    """Remove every series of one release from a family labelled namespace, name, ...."""
    names = family._labelnames  # prometheus_client has no public accessor
    found = {
        tuple(sample.labels[n] for n in names)
        for collected in family.collect()
        for sample in collected.samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("name") == name
    }
    for values in found:
        family.remove(*values)
