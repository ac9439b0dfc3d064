"""PromQL text: golden queries, the window rule, escaping and templating of pod names."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from filterrelease.core.promql import (
    MATCH_NOTHING,
    TemplateError,
    escape_string,
    pod_regex,
    promql_string,
    range_text,
    regex_escape,
    render_template,
    template_problem,
    traffic_queries,
    wasm_queries,
    window,
)

SEC = timedelta(seconds=1)


def test_traffic_queries_golden() -> None:
    q = traffic_queries("shop", ["web-b", "web-a"], 60 * SEC)
    sel = 'namespace="shop",pod=~"web-a|web-b",reporter="destination"'
    assert q.requests == f"sum(increase(istio_requests_total{{{sel}}}[60s])) or vector(0)"
    assert q.failed == (
        f'sum(increase(istio_requests_total{{{sel},response_code=~"5..|403"}}[60s])) or vector(0)'
    )
    assert q.p99 == (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[60s])))"
    )


def test_wasm_queries_golden() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    q = wasm_queries("shop", ["web-a"], since)
    fetch = 'istio_agent_wasm_remote_fetch_count{namespace="shop",pod=~"web-a",result!="success"}'
    at = "1767225600.000"
    assert q.fetch_failures == (
        f"(sum(clamp_min({fetch} - {fetch} @ {at}, 0)) or vector(0))"
        f" + (sum({fetch} unless {fetch} @ {at}) or vector(0))"
    )
    assert 'result!~"success|no_remote_load"' in q.conversion_failures
    assert q.conversion_failures.startswith(
        "(sum(clamp_min(istio_agent_wasm_config_conversion_count{"
    )


@pytest.mark.parametrize(
    ("elapsed", "interval", "scrape", "expected"),
    [
        (600, 60, 15, 60),  # long since: one interval
        (45, 60, 15, 45),  # shortly after since: only since
        (10, 60, 15, 30),  # too short for two scrapes: the floor
        (-5, 60, 15, 30),  # a clock skew never makes a negative window
        (600, 20, 15, 30),  # an interval shorter than two scrapes: the floor wins
    ],
)
def test_window_rule(elapsed: int, interval: int, scrape: int, expected: int) -> None:
    assert window(elapsed * SEC, interval * SEC, scrape * SEC) == expected * SEC


@pytest.mark.parametrize(
    ("delta", "text"),
    [(60 * SEC, "60s"), (timedelta(milliseconds=1500), "2s"), (timedelta(0), "1s")],
)
def test_ranges_are_whole_seconds(delta: timedelta, text: str) -> None:
    assert range_text(delta) == text


ESCAPES = [
    ("web-1", "web-1", '"web-1"'),
    ("web.v1", "web\\.v1", '"web\\\\.v1"'),
    ("a+b*c?", "a\\+b\\*c\\?", '"a\\\\+b\\\\*c\\\\?"'),
    ("x(y)|[z]{1}^$", "x\\(y\\)\\|\\[z\\]\\{1\\}\\^\\$", None),
    ('q"uote', 'q"uote', '"q\\"uote"'),
    ("back\\slash", "back\\\\slash", '"back\\\\\\\\slash"'),
]


@pytest.mark.parametrize(("name", "regex", "literal"), ESCAPES)
def test_pod_names_are_escaped_for_the_regex_and_the_string(
    name: str, regex: str, literal: str | None
) -> None:
    assert regex_escape(name) == regex
    # The regex matches the name literally and nothing else (Python's re agrees with RE2 on
    # these escapes).
    assert re.fullmatch(regex, name)
    assert not re.fullmatch(regex, name + "x")
    if literal is not None:
        assert promql_string(regex) == literal


def test_pod_alternation_is_sorted_unique_and_never_empty() -> None:
    assert pod_regex(["b", "a.1", "b"]) == "a\\.1|b"
    # `pod=~""` would select every series without a pod label; this matches nothing at all.
    assert pod_regex([]) == MATCH_NOTHING
    assert not re.fullmatch(MATCH_NOTHING, "")
    assert escape_string('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_templates_render_flagger_style_placeholders() -> None:
    query = (
        'sum(rate(requests{namespace="{{ namespace }}",pod=~"{{canary_pods}}",'
        'app="{{ selector.app }}",team="{{selector.example.com/team}}"}[{{ interval }}]))'
        ' / sum(rate(requests{pod=~"{{ stable_pods }}"}[{{ interval }}]))'
    )
    text = render_template(
        query,
        namespace="shop",
        canary_pods=["web-7d.1", "web-2"],
        stable_pods=[],
        interval=90 * SEC,
        workload_selector={"app": 'we"b', "example.com/team": "core"},
    )
    assert text == (
        'sum(rate(requests{namespace="shop",pod=~"web-2|web-7d\\\\.1",'
        'app="we\\"b",team="core"}[90s]))'
        ' / sum(rate(requests{pod=~"[^\\\\s\\\\S]"}[90s]))'
    )


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("up", None),
        ('x{a="{{ namespace }}"}', None),
        ("{{ args.namespace }}", "unknown placeholder '{{ args.namespace }}'"),
        ("{{ pods }}", "unknown placeholder '{{ pods }}'"),
        ("{{ selector }}", "unknown placeholder"),
        ("x{{ namespace }", "unbalanced"),
        ("x}}", "unbalanced"),
    ],
)
def test_template_problems(template: str, problem: str | None) -> None:
    found = template_problem(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_a_selector_label_the_release_lacks_is_a_render_error() -> None:
    with pytest.raises(TemplateError, match="no label 'tier'"):
        render_template(
            "{{ selector.tier }}",
            namespace="n",
            canary_pods=[],
            stable_pods=[],
            interval=SEC,
            workload_selector={"app": "web"},
        )
