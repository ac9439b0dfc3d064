"""The analysis core: metric specs, scheduling, Argo's counters and verdicts, worst-wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from filterrelease.core.analysis import (
    MAX_MEASUREMENTS,
    WASM_POLL,
    AnalysisPhase,
    Measurement,
    MeasurementPhase,
    MetricResult,
    Reading,
    assess,
    assess_all,
    is_due,
    measurement,
    record,
    requeue_after,
)
from filterrelease.core.analysis_spec import (
    AnalysisSpec,
    Metric,
    ProviderKind,
    step_analysis_problem,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
S, F, I, E = (  # noqa: E741
    MeasurementPhase.SUCCESSFUL,
    MeasurementPhase.FAILED,
    MeasurementPhase.INCONCLUSIVE,
    MeasurementPhase.ERROR,
)
ISTIO = {"istio": {"successRate": {"minPercent": 99}}}


def metric(**fields: Any) -> Metric:
    raw: dict[str, Any] = {"name": "m", "provider": ISTIO, **fields}
    return Metric.model_validate(raw)


def m_at(phase: MeasurementPhase, at: datetime, name: str = "m") -> Measurement:
    return Measurement(
        metric=name,
        phase=phase,
        value=1.0,
        message=phase.value.lower(),
        started_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        finished_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def run(m: Metric, phases: list[MeasurementPhase], every: timedelta | None = None) -> MetricResult:
    step = every or m.interval_delta
    result: MetricResult | None = None
    for i, phase in enumerate(phases):
        result = record(m, result, m_at(phase, T0 + (i + 1) * step, m.name))
    assert result is not None
    return result


# -- parsing --------------------------------------------------------------------------------


def test_a_metric_parses_from_the_crd_shape() -> None:
    m = Metric.model_validate(
        {
            "name": "success",
            "interval": "1m",
            "count": 5,
            "failureLimit": 1,
            "inconclusiveLimit": 2,
            "provider": {
                "istio": {
                    "successRate": {"minPercent": 99, "maxDropPercent": 0.5},
                    "latencyP99": {"maxMilliseconds": 250, "maxIncreasePercent": 20},
                    "minRequests": 50,
                }
            },
        }
    )
    assert m.provider.kind == ProviderKind.ISTIO
    assert m.interval_delta == timedelta(minutes=1)
    assert m.model_dump(by_alias=True, exclude_none=True)["provider"]["istio"]["latencyP99"] == {
        "maxMilliseconds": 250,
        "maxIncreasePercent": 20,
    }


BAD_METRICS: list[tuple[dict[str, Any], str]] = [
    ({"provider": {}}, "exactly one of istio, prometheus, wasm or proxyLogs"),
    ({"provider": {"wasm": {}, "istio": ISTIO["istio"]}}, "exactly one of"),
    ({"provider": {"datadog": {}}}, "Extra inputs are not permitted"),
    ({"provider": {"istio": {}}}, "istio needs successRate, latencyP99 or minRequests"),
    ({"provider": {"istio": {"successRate": {}}}}, "successRate needs minPercent"),
    ({"provider": {"istio": {"latencyP99": {}}}}, "latencyP99 needs maxMilliseconds"),
    ({"provider": {"istio": {"successRate": {"minPercent": 101}}}}, "less than or equal to 100"),
    (
        {"provider": {"prometheus": {"query": "up", "successCondition": "result <"}}},
        "successCondition 'result <': unexpected end of the condition",
    ),
    (
        {"provider": {"prometheus": {"query": "x{pod=~'{{ pods }}'}", "successCondition": "1<2"}}},
        "unknown placeholder '{{ pods }}'",
    ),
    ({"provider": {"proxyLogs": {"patterns": ["("]}}}, "'(' is not a regular expression"),
    ({"provider": {"proxyLogs": {"patterns": []}}}, "at least 1 item"),
    ({"interval": "30 s"}, "String should match pattern"),
    ({"interval": "0s"}, "interval must be at least 1s"),
    ({"count": 0}, "greater than or equal to 1"),
    ({"count": 2, "failureLimit": 2}, "count must be greater than failureLimit"),
    ({"count": 1, "inconclusiveLimit": 3}, "count must be greater than inconclusiveLimit"),
    ({"name": ""}, "at least 1 character"),
    ({"intervall": "1m"}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_METRICS)
def test_bad_metrics_say_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        metric(**fields)
    assert message in str(err.value)


def test_metric_names_are_unique_in_an_analysis() -> None:
    with pytest.raises(ValidationError, match="metric name 'm' is used twice"):
        AnalysisSpec.model_validate(
            {"metrics": [{"name": "m", "provider": ISTIO}, {"name": "m", "provider": ISTIO}]}
        )
    spec = AnalysisSpec.model_validate({"templates": [{"name": "slo"}]})
    assert spec.templates[0].name == "slo"


@pytest.mark.parametrize(
    ("fields", "count"),
    [
        ({}, 1),  # neither count nor interval: once (Argo)
        ({"count": 3}, 3),
        ({"interval": "1m"}, None),  # interval without count: a guard
        ({"provider": {"wasm": {}}}, None),  # wasm: a guard unless counted
        ({"provider": {"wasm": {}}, "count": 4}, 4),
    ],
)
def test_effective_count(fields: dict[str, Any], count: int | None) -> None:
    assert metric(**fields).effective_count == count


def test_a_step_of_guards_only_could_never_finish() -> None:
    guard = metric(interval="1m")
    assert step_analysis_problem([guard]) is not None
    assert step_analysis_problem([guard, metric(count=2)]) is None
    assert step_analysis_problem([]) is None


# -- assess: Argo's semantics ---------------------------------------------------------------

ASSESS = [
    # (metric fields, measurement phases, expected phase)
    ({"count": 3}, [], AnalysisPhase.RUNNING),
    ({"count": 3}, [S, S], AnalysisPhase.RUNNING),
    ({"count": 3}, [S, S, S], AnalysisPhase.SUCCESSFUL),
    ({"count": 3}, [F], AnalysisPhase.FAILED),  # failureLimit 0: the first failure
    ({"count": 3, "failureLimit": 1}, [F, S], AnalysisPhase.RUNNING),
    ({"count": 3, "failureLimit": 1}, [F, S, S], AnalysisPhase.SUCCESSFUL),
    ({"count": 3, "failureLimit": 1}, [F, F], AnalysisPhase.FAILED),
    ({"count": 3}, [I], AnalysisPhase.INCONCLUSIVE),
    ({"count": 3, "inconclusiveLimit": 1}, [I, S, S], AnalysisPhase.SUCCESSFUL),
    ({"count": 5, "failureLimit": 1, "inconclusiveLimit": 1}, [F, I, F], AnalysisPhase.FAILED),
    # Errors neither fail nor count: they hold.
    ({"count": 2}, [E, E, E, E, E, E], AnalysisPhase.ERROR),
    ({"count": 2}, [S, E], AnalysisPhase.ERROR),
    ({"count": 2}, [S, E, S], AnalysisPhase.SUCCESSFUL),
    ({"count": 2}, [E, S], AnalysisPhase.RUNNING),
    # Failed beats Successful when both thresholds are crossed by the same measurement.
    ({"count": 2, "failureLimit": 1}, [F, F], AnalysisPhase.FAILED),
    # A guard never succeeds by itself.
    ({"interval": "10s"}, [S] * 20, AnalysisPhase.RUNNING),
    ({"interval": "10s", "failureLimit": 2}, [S, F, S, F, F], AnalysisPhase.FAILED),
    ({}, [S], AnalysisPhase.SUCCESSFUL),  # measured once
]


@pytest.mark.parametrize(("fields", "phases", "expected"), ASSESS)
def test_assess(
    fields: dict[str, Any], phases: list[MeasurementPhase], expected: AnalysisPhase
) -> None:
    m = metric(**fields)
    result = run(m, phases) if phases else None
    assert assess(m, result) == expected
    if result is not None:
        assert result.phase == expected


def test_counters_follow_argo() -> None:
    m = metric(count=10, failureLimit=5, inconclusiveLimit=5)
    result = run(m, [S, E, E, F, I, E, S])
    assert (result.count, result.successful, result.failed, result.inconclusive) == (4, 2, 1, 1)
    assert (result.error, result.consecutive_error) == (3, 0)
    result = record(m, result, m_at(E, T0 + timedelta(hours=1)))
    assert result.consecutive_error == 1
    assert result.phase == AnalysisPhase.ERROR
    assert "could not be taken" in result.message


def test_only_the_last_measurements_are_kept_and_messages_are_short() -> None:
    m = metric(interval="1s")
    result = run(m, [S] * 25)
    assert len(result.measurements) == MAX_MEASUREMENTS
    assert result.count == 25
    assert result.measurements[-1].finished_at == "2026-01-01T12:00:25Z"
    long = Measurement(metric="m", phase=F, message="x" * 1000, started_at="", finished_at="")
    assert len(long.message) == 256


def test_a_final_result_does_not_change() -> None:
    m = metric(count=1)
    done = run(m, [F])
    assert record(m, done, m_at(S, T0 + timedelta(hours=1))) == done


def test_values_that_json_cannot_hold_are_dropped() -> None:
    reading = Reading(phase=I, value=float("nan"), message="no data")
    stamped = measurement(metric(), reading, T0, T0 + timedelta(seconds=2))
    assert stamped.value is None
    assert stamped.model_dump(by_alias=True, exclude_none=True) == {
        "metric": "m",
        "phase": "Inconclusive",
        "message": "no data",
        "startedAt": "2026-01-01T12:00:00Z",
        "finishedAt": "2026-01-01T12:00:02Z",
    }


def test_wasm_fails_at_the_first_failure_whatever_the_limit() -> None:
    m = metric(provider={"wasm": {}}, failureLimit=3)
    assert run(m, [S, F]).phase == AnalysisPhase.FAILED


def test_wasm_records_repeated_successes_once_an_interval_failures_at_once() -> None:
    m = metric(provider={"wasm": {}}, interval="30s", count=2)
    tick = timedelta(seconds=5)
    result = record(m, None, m_at(S, T0))
    for i in range(1, 6):  # five reconciles within the interval: nothing new to write
        assert record(m, result, m_at(S, T0 + i * tick)) is result
    failed = record(m, result, m_at(F, T0 + tick))
    assert failed.phase == AnalysisPhase.FAILED
    result = record(m, result, m_at(S, T0 + 6 * tick))
    assert (result.count, result.phase) == (2, AnalysisPhase.SUCCESSFUL)


def test_wasm_records_a_change_of_phase_at_once() -> None:
    m = metric(provider={"wasm": {}}, interval="1m")
    second = timedelta(seconds=1)
    outage = record(m, record(m, None, m_at(S, T0)), m_at(E, T0 + second))
    assert outage.phase == AnalysisPhase.ERROR
    assert record(m, outage, m_at(E, T0 + 2 * second)) is outage
    recovered = record(m, outage, m_at(S, T0 + 3 * second))
    assert (recovered.phase, recovered.count, recovered.error) == (AnalysisPhase.RUNNING, 2, 1)


# -- scheduling -----------------------------------------------------------------------------


def test_the_first_measurement_waits_one_interval_then_each_follows_the_last() -> None:
    m = metric(interval="1m", count=3)
    assert not is_due(m, None, T0 + timedelta(seconds=59), T0)
    assert is_due(m, None, T0 + timedelta(minutes=1), T0)
    result = record(m, None, m_at(S, T0 + timedelta(seconds=75)))
    assert not is_due(m, result, T0 + timedelta(seconds=134), T0)
    assert is_due(m, result, T0 + timedelta(seconds=135), T0)
    # Errors are retried on the same schedule.
    result = record(m, result, m_at(E, T0 + timedelta(seconds=135)))
    assert not is_due(m, result, T0 + timedelta(seconds=194), T0)
    assert is_due(m, result, T0 + timedelta(seconds=195), T0)


def test_a_metric_without_interval_uses_the_default() -> None:
    m = metric()
    assert not is_due(m, None, T0 + timedelta(seconds=29), T0)
    assert is_due(m, None, T0 + timedelta(seconds=30), T0)


def test_wasm_is_always_due_until_final_and_final_metrics_never_are() -> None:
    wasm = metric(provider={"wasm": {}}, interval="5m")
    assert is_due(wasm, None, T0, T0)
    result = record(wasm, None, m_at(S, T0))
    assert is_due(wasm, result, T0 + timedelta(seconds=1), T0)
    failed = record(wasm, result, m_at(F, T0 + timedelta(seconds=2)))
    assert not is_due(wasm, failed, T0 + timedelta(hours=1), T0)
    once = metric()
    done = record(once, None, m_at(S, T0 + timedelta(seconds=30)))
    assert not is_due(once, done, T0 + timedelta(hours=1), T0)


def test_requeue_after_says_when_the_next_metric_is_due() -> None:
    a, b = metric(name="a", interval="1m", count=2), metric(name="b", interval="20s", count=2)
    now = T0 + timedelta(seconds=5)
    assert requeue_after([a, b], {}, now, T0) == timedelta(seconds=15)
    assert requeue_after([a, b], {}, T0 + timedelta(minutes=5), T0) == timedelta(0)
    wasm = metric(name="w", provider={"wasm": {}})
    assert requeue_after([a, wasm], {}, now, T0) == WASM_POLL
    done = {"a": run(a, [F])}
    assert requeue_after([a], done, now, T0) is None


# -- worst wins -----------------------------------------------------------------------------

P = AnalysisPhase
WORST = [
    ([P.SUCCESSFUL, P.SUCCESSFUL], P.SUCCESSFUL),
    ([P.SUCCESSFUL, P.RUNNING], P.RUNNING),
    ([P.RUNNING, P.ERROR], P.ERROR),
    ([P.SUCCESSFUL, P.ERROR], P.ERROR),  # an outage never promotes
    ([P.ERROR, P.INCONCLUSIVE], P.INCONCLUSIVE),
    ([P.ERROR, P.FAILED], P.FAILED),  # ... and never hides a failure
    ([P.INCONCLUSIVE, P.FAILED], P.FAILED),
    ([P.SUCCESSFUL, P.FAILED, P.RUNNING, P.ERROR, P.INCONCLUSIVE], P.FAILED),
]

_TO_REACH = {
    P.SUCCESSFUL: [S],
    P.RUNNING: [],
    P.ERROR: [E],
    P.INCONCLUSIVE: [I],
    P.FAILED: [F],
}


@pytest.mark.parametrize(("phases", "expected"), WORST)
def test_assess_all_worst_wins(phases: list[AnalysisPhase], expected: AnalysisPhase) -> None:
    metrics = [metric(name=f"m{i}", count=1) for i in range(len(phases))]
    results = {
        m.name: run(m, _TO_REACH[p]) for m, p in zip(metrics, phases, strict=True) if _TO_REACH[p]
    }
    assert assess_all(metrics, results) == expected


def test_guards_fail_or_hold_an_analysis_but_do_not_prolong_it() -> None:
    counted = metric(name="slo", count=1)
    guard = metric(name="wasm", provider={"wasm": {}})
    ok = {"slo": run(counted, [S]), "wasm": run(guard, [S])}
    assert assess_all([counted, guard], ok) == P.SUCCESSFUL
    assert assess_all([counted, guard], {"slo": ok["slo"]}) == P.SUCCESSFUL
    broken = {**ok, "wasm": run(guard, [S, F])}
    assert assess_all([counted, guard], broken) == P.FAILED
    outage = {**ok, "wasm": run(guard, [E])}
    assert assess_all([counted, guard], outage) == P.ERROR
    # Guards alone (a background analysis) run until the rollout ends.
    assert assess_all([guard], ok) == P.RUNNING
    assert assess_all([], {}) == P.RUNNING


def test_a_result_round_trips_through_the_status_json() -> None:
    m = metric(count=3)
    result = run(m, [S, E])
    body = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert body["consecutiveError"] == 1
    assert body["measurements"][0]["finishedAt"] == "2026-01-01T12:00:30Z"
    assert MetricResult.model_validate({**body, "fromTheFuture": 1}) == result
