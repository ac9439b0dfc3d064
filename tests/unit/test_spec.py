"""Parsing a FilterRelease spec: every example parses, bad specs say what is wrong."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from filterrelease.core.analysis_spec import Metric
from filterrelease.core.spec import (
    FilterReleaseSpec,
    SpecError,
    expand_templates,
    parse_spec,
    referenced_templates,
)
from tests.unit.conftest import EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses(path: Any) -> None:
    spec = parse_spec(yaml.safe_load(path.read_text())["spec"])
    assert isinstance(spec, FilterReleaseSpec), spec


def test_defaults_follow_istio(security_headers: dict[str, Any]) -> None:
    raw = copy.deepcopy(security_headers["spec"])
    for key in ("phase", "priority", "failStrategy"):
        raw.pop(key)
    spec = parse_spec(raw)
    assert isinstance(spec, FilterReleaseSpec)
    assert (spec.phase.value, spec.priority, spec.fail_strategy.value, spec.type.value) == (
        "UNSPECIFIED_PHASE",
        0,
        "FAIL_CLOSE",
        "HTTP",
    )


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(base["spec"])
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = spec
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


BAD = [
    ({"selector": None}, "spec: exactly one of selector or targetRefs must be set"),
    (
        {"targetRefs": [{"kind": "Gateway", "name": "gw"}]},
        "spec: exactly one of selector or targetRefs must be set",
    ),
    ({"selector__matchLabels": {}}, "spec.selector.matchLabels: Dictionary should have at least 1"),
    (
        {"selector__matchLabels": {"track.filterrelease.dev/security-headers": "canary"}},
        "the operator sets them",
    ),
    ({"module__url": "ftp://x/y.wasm"}, "module.url must start with oci://, https:// or http://"),
    ({"module__sha256": "ABC"}, "spec.module.sha256: String should match pattern"),
    ({"priority": 2**31}, "spec.priority: Input should be less than or equal to 2147483647"),
    ({"phase": "LATE"}, "spec.phase: Input should be 'UNSPECIFIED_PHASE', 'AUTHN'"),
    ({"surprise": 1}, "spec.surprise: Extra inputs are not permitted"),
    (
        {"strategy": {"canary": {"steps": [{"setWeight": 10, "pause": {}}]}}},
        "exactly one of setWeight, pause, analysis",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_spec_is_reported_readably(
    security_headers: dict[str, Any], changes: dict[str, Any], message: str
) -> None:
    result = parse_spec(_with(security_headers, **changes))
    assert isinstance(result, SpecError)
    assert message in result.message, result.message


def test_all_problems_are_reported_at_once(security_headers: dict[str, Any]) -> None:
    result = parse_spec(_with(security_headers, priority="high", phase="LATE"))
    assert isinstance(result, SpecError)
    assert [p.split(":")[0] for p in result.problems] == ["spec.phase", "spec.priority"]


def test_missing_spec_is_an_error_not_a_crash() -> None:
    result = parse_spec(None)
    assert isinstance(result, SpecError)
    assert "spec" in result.message


def _canary_spec(security_headers: dict[str, Any], canary: dict[str, Any]) -> FilterReleaseSpec:
    spec = parse_spec({**security_headers["spec"], "strategy": {"canary": canary}})
    assert isinstance(spec, FilterReleaseSpec), spec
    return spec


SUCCESS = {"name": "success", "count": 2, "interval": "10s",
           "provider": {"istio": {"successRate": {"minPercent": 99}}}}  # fmt: skip
LOGS = {"name": "logs", "interval": "10s", "provider": {"proxyLogs": {"patterns": ["panic"]}}}


def test_templates_expand_into_inline_metrics_template_first(
    security_headers: dict[str, Any],
) -> None:
    spec = _canary_spec(
        security_headers,
        {
            "steps": [{"setWeight": 10}, {"analysis": {"templates": [{"name": "slo"}]}}],
            "analysis": {"templates": [{"name": "logs"}], "metrics": [SUCCESS]},
        },
    )
    assert referenced_templates(spec) == ("slo", "logs")
    slo = (Metric.model_validate(SUCCESS),)
    logs = (Metric.model_validate(LOGS),)
    expanded = expand_templates(spec, {"slo": slo, "logs": logs})
    assert isinstance(expanded, FilterReleaseSpec)
    assert expanded.canary is not None
    step = expanded.canary.steps[1].analysis
    assert step is not None
    assert [m.name for m in step.metrics] == ["success"]
    assert not step.templates
    background = expanded.canary.analysis
    assert background is not None
    assert [m.name for m in background.metrics] == ["logs", "success"]


@pytest.mark.parametrize(
    ("found", "message"),
    [
        ({}, "AnalysisTemplate 'slo' was not looked up"),
        ({"slo": "AnalysisTemplate 'slo' not found in namespace shop"}, "not found in namespace"),
        ({"slo": ()}, "needs at least one metric with a count"),
    ],
)
def test_a_template_that_cannot_be_used_makes_the_spec_unusable(
    security_headers: dict[str, Any], found: dict[str, Any], message: str
) -> None:
    spec = _canary_spec(
        security_headers,
        {"steps": [{"analysis": {"templates": [{"name": "slo"}], "metrics": [LOGS]}}]},
    )
    result = expand_templates(spec, found)
    assert isinstance(result, SpecError)
    assert message in result.message
    assert "steps[0].analysis" in result.message


def test_a_metric_name_in_a_template_and_inline_is_refused(
    security_headers: dict[str, Any],
) -> None:
    spec = _canary_spec(
        security_headers,
        {"steps": [{"analysis": {"templates": [{"name": "slo"}], "metrics": [SUCCESS]}}]},
    )
    result = expand_templates(spec, {"slo": (Metric.model_validate(SUCCESS),)})
    assert isinstance(result, SpecError)
    assert "success used more than once" in result.message
