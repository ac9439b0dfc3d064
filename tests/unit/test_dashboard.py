"""The Grafana dashboard in deploy/dashboards only queries metrics that exist: the operator's
own (declared in telemetry.py) and Istio's standard ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from filterrelease.telemetry import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "dashboards"
ISTIO = {"istio_requests_total"}


def _operator_metric_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.add(family.name + "_total")
    return names


def test_every_dashboard_query_names_a_real_metric() -> None:
    known = _operator_metric_names() | ISTIO
    for path in DASHBOARD.glob("*.json"):
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert exprs
        for expr in exprs:
            names = set(re.findall(r"\b((?:filterrelease|istio)_[a-z_]+)\b", expr))
            assert names, expr
            assert names <= known, (path.name, names - known)
