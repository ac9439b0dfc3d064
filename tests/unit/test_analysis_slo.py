"""Judging Istio SLOs: canary against stable, minimum traffic, missing baselines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from filterrelease.core.analysis import MeasurementPhase
from filterrelease.core.analysis_spec import IstioProvider
from filterrelease.core.slo import Traffic, judge

S, F, I = (  # noqa: E741
    MeasurementPhase.SUCCESSFUL,
    MeasurementPhase.FAILED,
    MeasurementPhase.INCONCLUSIVE,
)
MIN = timedelta(minutes=1)


def istio(**raw: Any) -> IstioProvider:
    return IstioProvider.model_validate(raw)


def t(requests: float, failed: float = 0, p99: float | None = 10.0) -> Traffic:
    return Traffic(requests=requests, failed=failed, p99_ms=p99)


RATE = {"successRate": {"minPercent": 99}}
DROP = {"successRate": {"maxDropPercent": 1}}
BOTH = {"successRate": {"minPercent": 90, "maxDropPercent": 1}}
P99 = {"latencyP99": {"maxMilliseconds": 100}}
P99_UP = {"latencyP99": {"maxIncreasePercent": 50}}

CASES = [
    # (spec, canary, stable, phase, value, words in the message)
    (RATE, t(200, 1), None, S, 99.5, ["success rate 99.5%", "200 canary requests in 1m"]),
    (RATE, t(200, 3), None, F, 98.5, ["success rate 98.5% is below 99%"]),
    (RATE, t(0), None, I, 0, ["only 0 canary requests", "fewer than the 1 needed"]),
    ({**RATE, "minRequests": 100}, t(99), None, I, 99, ["fewer than the 100 needed"]),
    ({**RATE, "minRequests": 100}, t(100), None, S, 100, []),
    # relative to stable
    (DROP, t(100, 2), t(100, 0), F, 98, ["more than 1% below the stable pods' 100%"]),
    (DROP, t(100, 2), t(100, 1), S, 98, ["success rate 98% (stable 99%)"]),
    # the stable pods' own 403s/5xx are the baseline: an app that returns 403 legitimately
    (DROP, t(100, 30), t(100, 30), S, 70, ["(stable 70%)"]),
    # no baseline: a relative bound alone cannot decide ...
    (DROP, t(100, 0), None, I, 100, ["no stable traffic to compare the success rate with"]),
    (DROP, t(100, 0), t(0), I, 100, ["no stable traffic"]),
    (
        {**DROP, "minRequests": 50},
        t(100),
        t(49),
        I,
        100,
        ["no stable traffic"],
    ),
    # ... an absolute bound beside it still does
    (BOTH, t(100, 5), None, S, 95, ["maxDropPercent not checked"]),
    (BOTH, t(100, 20), None, F, 80, ["below 90%"]),
    # latency
    (P99, t(100, p99=80), None, S, 80, ["p99 80ms"]),
    (P99, t(100, p99=120.5), None, F, 120.5, ["p99 120.5ms is above 100ms"]),
    (P99, t(100, p99=None), None, I, 100, ["no request durations"]),
    (P99_UP, t(100, p99=30), t(100, p99=20), S, 30, ["p99 30ms (stable 20ms)"]),
    (P99_UP, t(100, p99=31), t(100, p99=20), F, 31, ["more than 50% above the stable pods' 20ms"]),
    (P99_UP, t(100, p99=1.4), t(100, p99=0.2), S, 1.4, []),  # baseline floor of 1 ms
    (P99_UP, t(100, p99=30), t(100, p99=None), I, 30, ["no stable traffic to compare the p99"]),
    # both SLOs: the success rate is the headline value, every failure is named
    (
        {**RATE, **P99},
        t(100, 5, p99=150),
        None,
        F,
        95,
        ["success rate 95% is below 99%", "p99 150ms is above 100ms"],
    ),
    ({**RATE, **P99}, t(100, 0, p99=50), None, S, 100, ["p99 50ms", "success rate 100%"]),
    # traffic only
    ({"minRequests": 10}, t(10), None, S, 10, ["10 canary requests"]),
]


@pytest.mark.parametrize(("spec", "canary", "stable", "phase", "value", "words"), CASES)
def test_judge(
    spec: dict[str, Any],
    canary: Traffic,
    stable: Traffic | None,
    phase: MeasurementPhase,
    value: float,
    words: list[str],
) -> None:
    reading = judge(istio(**spec), canary, stable, MIN)
    assert reading.phase == phase, reading.message
    assert reading.value == pytest.approx(value)
    for word in words:
        assert word in reading.message


@pytest.mark.parametrize(
    ("raw", "stable", "baseline"),
    [
        (RATE, t(400, 2), 99.5),  # the stable pods' success rate, beside the canary's
        (P99, t(400, 0, p99=12.0), 12.0),  # their p99
        ({"minRequests": 10}, t(400), 400),  # their request count
        (RATE, t(0), None),  # stable pods that served nothing have no baseline
        (RATE, None, None),  # nor does a canary at 100 % weight
    ],
)
def test_the_stable_pods_value_is_kept_as_the_baseline_whatever_the_bounds(
    raw: dict[str, Any], stable: Traffic | None, baseline: float | None
) -> None:
    reading = judge(istio(**raw), t(200, 1, p99=20.0), stable, MIN)
    assert reading.baseline == baseline
    assert reading.phase is S  # no relative bound: the baseline is shown, never judged
