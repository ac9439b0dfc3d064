"""Judging Istio's service-level objectives: canary traffic against the stable pods'. Pure.

Success rate = 100 * (requests - failed) / requests, failed being 5xx and 403 (see promql.py).
Latency = the 99th percentile of istio_request_duration_milliseconds.

Too little traffic: below `minRequests` canary requests in the window (at least one request:
a rate of nothing is not 100%), the measurement is Inconclusive.

The stable baseline (maxDropPercent, maxIncreasePercent) needs the stable pods to have served
at least as many requests as the canary must (minRequests, at least one). Without such a
baseline (no stable pods at 100 % weight, or idle ones) a relative bound cannot be checked:
an absolute bound configured beside it is still checked, and the measurement is decided by it
alone; a relative bound on its own makes the measurement Inconclusive. It is never silently
passed: a canary is not declared healthy by a comparison that was not made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from filterrelease.core.analysis import MeasurementPhase, Reading
from filterrelease.core.analysis_spec import IstioProvider, LatencyP99, SuccessRate
from filterrelease.core.duration import format_duration

# istio/proxy records whole milliseconds; a baseline below this is compared as this, so that a
# stable p99 of 0.4 ms does not turn 1 ms on the canary into a 150 % increase.
LATENCY_FLOOR_MS = 1.0


@dataclass(frozen=True)
class Traffic:
    """One group of pods' inbound traffic in the window."""

    requests: float
    failed: float
    p99_ms: float | None  # None without data (NaN from histogram_quantile)

    @property
    def success_percent(self) -> float | None:
        if self.requests <= 0:
            return None
        return 100.0 * max(self.requests - self.failed, 0.0) / self.requests


def _pct(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + "%"


def _ms(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") + "ms"


@dataclass
class _Findings:
    failures: list[str]
    undecided: list[str]
    notes: list[str]


def _success_rate(spec: SuccessRate, rate: float, base: float | None, out: _Findings) -> None:
    note = f"success rate {_pct(rate)}"
    if spec.min_percent is not None and rate < spec.min_percent:
        out.failures.append(f"{note} is below {_pct(spec.min_percent)}")
        return
    if spec.max_drop_percent is not None:
        if base is None and spec.min_percent is None:
            out.undecided.append("no stable traffic to compare the success rate with")
        elif base is None:
            note += " (no stable traffic: maxDropPercent not checked)"
        elif base - rate > spec.max_drop_percent:
            out.failures.append(
                f"{note} is more than {_pct(spec.max_drop_percent)} below the stable pods' "
                f"{_pct(base)}"
            )
            return
        else:
            note += f" (stable {_pct(base)})"
    out.notes.append(note)


def _latency(spec: LatencyP99, p99: float, base: float | None, out: _Findings) -> None:
    note = f"p99 {_ms(p99)}"
    if spec.max_milliseconds is not None and p99 > spec.max_milliseconds:
        out.failures.append(f"{note} is above {_ms(spec.max_milliseconds)}")
        return
    if spec.max_increase_percent is not None:
        if base is None and spec.max_milliseconds is None:
            out.undecided.append("no stable traffic to compare the p99 with")
        elif base is None:
            note += " (no stable traffic: maxIncreasePercent not checked)"
        elif p99 > max(base, LATENCY_FLOOR_MS) * (1 + spec.max_increase_percent / 100):
            out.failures.append(
                f"{note} is more than {_pct(spec.max_increase_percent)} above the stable pods' "
                f"{_ms(base)}"
            )
            return
        else:
            note += f" (stable {_ms(base)})"
    out.notes.append(note)


def _known(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def judge(
    spec: IstioProvider, canary: Traffic, stable: Traffic | None, window: timedelta
) -> Reading:
    """The measurement's phase, value and message from both groups' traffic."""
    minimum = max(spec.min_requests or 0, 1)
    shown = _headline(spec, stable)
    seen = f"{canary.requests:.0f} canary requests in {format_duration(window)}"
    if canary.requests < minimum:
        return Reading(
            phase=MeasurementPhase.INCONCLUSIVE,
            value=canary.requests,
            baseline=stable.requests if stable is not None else None,
            message=f"only {seen}, fewer than the {minimum} needed",
        )
    baseline = stable if stable is not None and stable.requests >= minimum else None
    out = _Findings([], [], [])
    value = canary.requests
    if spec.latency_p99 is not None:
        p99 = _known(canary.p99_ms)
        if p99 is None:
            out.undecided.append("no request durations recorded for the canary pods")
        else:
            value = p99
            base_p99 = _known(baseline.p99_ms) if baseline is not None else None
            _latency(spec.latency_p99, p99, base_p99, out)
    if spec.success_rate is not None:
        rate = canary.success_percent
        assert rate is not None  # canary.requests >= minimum >= 1
        value = rate  # the headline value when both are checked
        base = baseline.success_percent if baseline is not None else None
        _success_rate(spec.success_rate, rate, base, out)
    if out.failures:
        phase, parts = MeasurementPhase.FAILED, out.failures
    elif out.undecided:
        phase, parts = MeasurementPhase.INCONCLUSIVE, out.undecided + out.notes
    else:
        phase, parts = MeasurementPhase.SUCCESSFUL, out.notes
    return Reading(phase=phase, value=value, baseline=shown, message="; ".join([*parts, seen]))


def _headline(spec: IstioProvider, stable: Traffic | None) -> float | None:
    """The stable pods' value of the quantity judge() reports for the canary: the success rate
    when it is checked, else the p99, else the request count."""
    if stable is None or stable.requests <= 0:
        return None
    if spec.success_rate is not None:
        return stable.success_percent
    if spec.latency_p99 is not None:
        return _known(stable.p99_ms)
    return stable.requests
