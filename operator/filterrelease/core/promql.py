"""PromQL the analysis sends: Istio's SLOs for canary and stable pods, the Wasm fast-fail
signals, and the templating of users' own queries. Pure text building, no I/O.

Which series. Istio's sidecar reports each inbound request in `istio_requests_total` and
`istio_request_duration_milliseconds` with reporter="destination"; Prometheus' pod scrape job
adds the target labels `namespace` and `pod` (Istio's sample `kubernetes-pods` job, and the
testbed's exporter). A filter acts on the requests its pod serves, so a pod's own
reporter="destination" series are exactly the traffic the filter version touched. The canary is
selected by pod name (`pod=~"a|b"`): the track label the operator puts on pods is not among
Istio's metric labels.

The window rule. A measurement looks at `max(2 * scrape interval, min(interval, now - since))`:
  * never before `since` (the canary's traffic only) while that is long enough to be seen,
  * at most one metric interval, so consecutive measurements look at (roughly) disjoint traffic
    and one bad minute is not diluted by an hour of good ones,
  * but at least two scrapes: rate()/increase() need two samples, so just after `since` the
    window reaches back a little before it (the floor wins over the cap when interval is shorter
    than two scrapes). The first measurement is due one interval after the analysis starts, so
    in practice the floor matters only for short intervals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

REQUESTS_TOTAL = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
REMOTE_FETCH_COUNT = "istio_agent_wasm_remote_fetch_count"
CONVERSION_COUNT = "istio_agent_wasm_config_conversion_count"

# A request failed if the server answered 5xx, or 403: what the deny-all RBAC stand-in returns
# when istio-agent cannot fetch a FAIL_CLOSE plugin's module. An application that returns 403 on
# its own is counted as failing too; for it, compare with the stable pods (maxDropPercent), which
# see the same legitimate 403s, rather than using an absolute minPercent.
FAILED_RESPONSE_CODES = "5..|403"
# istio-agent's conversion results that are not failures: `no_remote_load` is a module given as
# a local file, which needs no fetch (pkg/wasm/monitoring.go).
CONVERSION_OK = "success|no_remote_load"

# A regex no string matches, not even the empty one. `pod=~""` would select every series
# WITHOUT a pod label, so an empty pod list must never become an empty alternation.
MATCH_NOTHING = "[^\\s\\S]"

_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


def promql_string(value: str) -> str:
    """A double-quoted PromQL string literal holding exactly `value`."""
    return '"' + escape_string(value) + '"'


def escape_string(value: str) -> str:
    """`value` escaped for the inside of a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def regex_escape(value: str) -> str:
    """`value` as an RE2 regex that matches it literally."""
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)


def pod_regex(pods: Iterable[str]) -> str:
    """An anchored-by-Prometheus alternation of exactly these pod names (sorted, so the query
    text is stable), or MATCH_NOTHING for none."""
    names = sorted(set(pods))
    return "|".join(regex_escape(p) for p in names) if names else MATCH_NOTHING


def window(elapsed: timedelta, interval: timedelta, scrape_interval: timedelta) -> timedelta:
    """The range a measurement looks at (see the module docstring)."""
    return max(2 * scrape_interval, min(interval, max(elapsed, timedelta(0))))


def range_text(delta: timedelta) -> str:
    """A PromQL range in whole seconds, rounded up (at least 1s)."""
    return f"{max(math.ceil(delta.total_seconds()), 1)}s"


def selector(namespace: str, pods: Iterable[str], **extra: str) -> str:
    """Label matchers for `pods` in `namespace`; extra matchers are given verbatim (`=~"5.."`)."""
    parts = [
        f"namespace={promql_string(namespace)}",
        f"pod=~{promql_string(pod_regex(pods))}",
        *(f"{k}{v}" for k, v in extra.items()),
    ]
    return "{" + ",".join(parts) + "}"


@dataclass(frozen=True)
class TrafficQueries:
    """Three instant queries describing one group of pods' inbound traffic in a window."""

    requests: str  # requests served (increase of istio_requests_total)
    failed: str  # of which 5xx or 403
    p99: str  # 99th percentile duration, ms (NaN without requests)


def traffic_queries(namespace: str, pods: Iterable[str], window_: timedelta) -> TrafficQueries:
    pods = tuple(pods)
    rng = range_text(window_)
    everything = selector(namespace, pods, reporter='="destination"')
    failed = selector(
        namespace,
        pods,
        reporter='="destination"',
        response_code=f"=~{promql_string(FAILED_RESPONSE_CODES)}",
    )
    return TrafficQueries(
        # `or vector(0)`: a sum over no series is no result at all, and "no failed series" means
        # zero failures, not missing data.
        requests=f"sum(increase({REQUESTS_TOTAL}{everything}[{rng}])) or vector(0)",
        failed=f"sum(increase({REQUESTS_TOTAL}{failed}[{rng}])) or vector(0)",
        p99=(f"histogram_quantile(0.99, sum by (le) (rate({DURATION_BUCKET}{everything}[{rng}])))"),
    )


def increase_since(series: str, window_: timedelta) -> str:
    """How much the counters `series` grew in the window, counting series that did not exist
    at its start in full.

    increase() alone misses a counter that first appears already above zero, which is exactly
    how a failed module fetch shows up: istio-agent creates the `result="manifest_failure"`
    series at its first failure, and it may never grow again. The second term adds the last
    value of every series absent at the window's start (set operators match label sets without
    the metric name)."""
    rng = range_text(window_)
    return (
        f"(sum(increase({series}[{rng}])) or vector(0))"
        f" + (sum(last_over_time({series}[{rng}]) unless {series} offset {rng}) or vector(0))"
    )


@dataclass(frozen=True)
class WasmQueries:
    fetch_failures: str
    conversion_failures: str


def increase_after(series: str, since: datetime) -> str:
    """How much the counters `series` grew after `since`: each series' value now minus its
    value at `since` (the `@` modifier: Prometheus 2.33+), plus in full every series that did
    not exist then (istio-agent creates a failure series at its first failure).

    Not increase_since() over the window rule's window: that window is at least two scrapes,
    so just after `since` it reaches back before it, and a failed fetch of the version rolled
    back a moment earlier, on a pod that is canary again, would be blamed on this one. A
    counter that restarted lower (an agent restart) counts as no growth rather than negative."""
    at = f"{since.timestamp():.3f}"
    return (
        f"(sum(clamp_min({series} - {series} @ {at}, 0)) or vector(0))"
        f" + (sum({series} unless {series} @ {at}) or vector(0))"
    )


def wasm_queries(namespace: str, pods: Iterable[str], since: datetime) -> WasmQueries:
    """istio-agent's failed module fetches and config conversions on `pods` after `since`."""
    pods = tuple(pods)
    fetch = REMOTE_FETCH_COUNT + selector(namespace, pods, result='!="success"')
    conversion = CONVERSION_COUNT + selector(
        namespace, pods, result=f"!~{promql_string(CONVERSION_OK)}"
    )
    return WasmQueries(increase_after(fetch, since), increase_after(conversion, since))


# -- templates of custom queries ---------------------------------------------------------------
#
# Flagger's syntax, `{{ name }}` (spaces optional), with Flagger's names where they exist:
#   {{ namespace }}       the canary's namespace
#   {{ canary_pods }}     the canary pods as a regex alternation: pod=~"{{ canary_pods }}"
#   {{ stable_pods }}     the stable pods, likewise
#   {{ interval }}        the measurement window as a PromQL range: rate(x[{{ interval }}])
#   {{ selector.KEY }}    the value of label KEY in the release's workload selector
# Values are escaped for the inside of a double-quoted PromQL string (the pod names also for a
# regex), so they belong between "…", not in `raw strings`.

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_./-]+)?)\s*\}\}")
NAMES = ("namespace", "canary_pods", "stable_pods", "interval")
SELECTOR_PREFIX = "selector."


class TemplateError(ValueError):
    """The query template cannot be rendered; the message says why."""


def template_problem(template: str) -> str | None:
    """Why the query template is not valid, or None."""
    for match in PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name not in NAMES and not name.startswith(SELECTOR_PREFIX):
            known = ", ".join("{{ " + n + " }}" for n in (*NAMES, "selector.KEY"))
            return f"unknown placeholder {match.group(0)!r}; known: {known}"
    rest = PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        return "unbalanced '{{' or '}}' (placeholders look like {{ namespace }})"
    return None


def render_template(
    template: str,
    *,
    namespace: str,
    canary_pods: Iterable[str],
    stable_pods: Iterable[str],
    interval: timedelta,
    workload_selector: Mapping[str, str],
) -> str:
    """The query with every placeholder replaced; TemplateError for an unknown one."""
    problem = template_problem(template)
    if problem is not None:
        raise TemplateError(problem)
    values = {
        "namespace": escape_string(namespace),
        "canary_pods": escape_string(pod_regex(canary_pods)),
        "stable_pods": escape_string(pod_regex(stable_pods)),
        "interval": range_text(interval),
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith(SELECTOR_PREFIX):
            key = name.removeprefix(SELECTOR_PREFIX)
            if key not in workload_selector:
                raise TemplateError(f"{match.group(0)}: the workload selector has no label {key!r}")
            return escape_string(workload_selector[key])
        return values[name]

    return PLACEHOLDER.sub(value, template)
