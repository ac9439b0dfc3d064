"""The operator's per-release metrics: the last measured values, canary and stable, and every
series of a release gone once it is deleted."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from filterrelease.core.analysis import Measurement, MeasurementPhase
from filterrelease.telemetry import Metrics


def measured(value: float | None, baseline: float | None, phase: str = "Successful") -> Measurement:
    return Measurement(
        metric="success",
        phase=MeasurementPhase(phase),
        value=value,
        baseline=baseline,
        started_at="2026-12-04T10:00:00Z",
        finished_at="2026-12-04T10:00:01Z",
    )


def sample(registry: CollectorRegistry, family: str, **labels: str) -> float | None:
    return registry.get_sample_value(family, labels)


def test_a_measurement_sets_the_last_values_and_counts_by_release_and_metric() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_measurement("shop", "headers", measured(99.0, 99.9))
    metrics.record_measurement("shop", "headers", measured(97.5, None, "Failed"))
    key = {"namespace": "shop", "name": "headers", "metric": "success"}
    # The canary's value is the newest; the stable one stays at the last one measured.
    assert sample(registry, "filterrelease_analysis_value", **key, track="canary") == 97.5
    assert sample(registry, "filterrelease_analysis_value", **key, track="stable") == 99.9
    counted = "filterrelease_analysis_measurements_total"
    assert sample(registry, counted, **key, phase="Successful") == 1
    assert sample(registry, counted, **key, phase="Failed") == 1


def test_forget_drops_every_series_of_the_release_and_only_those() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for name in ("headers", "auth"):
        metrics.record_measurement("shop", name, measured(99.0, 98.0))
        metrics.reconcile_errors.labels("shop", name).inc()
        metrics.set_rollout("shop", name, weight=25, step=1)
    metrics.forget("shop", "headers")
    names = ("filterrelease_analysis_value", "filterrelease_reconcile_errors_total",
             "filterrelease_canary_weight_percent")  # fmt: skip
    for family in registry.collect():
        for s in family.samples:
            if s.name in names or s.name.startswith("filterrelease_analysis_measurements"):
                assert s.labels["name"] == "auth", s
    left = sample(registry, "filterrelease_analysis_value", namespace="shop", name="auth",
                  metric="success", track="stable")  # fmt: skip
    assert left == 98.0
