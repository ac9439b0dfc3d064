"""`kubectl filterrelease get`: the table, the tree and kubectl's ages, as people read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from filterrelease.plugin.ages import age, human_duration
from filterrelease.plugin.views import columns, describe_step, release_table, release_tree

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0s"),
        (0, "0s"),
        (45, "45s"),
        (119, "119s"),
        (150, "2m30s"),
        (300, "5m"),
        (60 * 42, "42m"),
        (3600 * 2 + 60 * 10, "130m"),
        (3600 * 3 + 60 * 20, "3h20m"),
        (3600 * 5, "5h"),
        (3600 * 30, "30h"),
        (86400 * 3 + 3600 * 4, "3d4h"),
        (86400 * 100, "100d"),
        (86400 * 365 * 3 + 86400 * 7, "3y7d"),
        (86400 * 365 * 9, "9y"),
    ],
)
def test_ages_round_as_kubectl_does(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_age_reads_condition_and_event_times() -> None:
    assert age(ago(minutes=5), NOW) == "5m"
    assert age("2026-12-04T11:59:30.123456Z", NOW) == "29s"
    assert age(None, NOW) == "<unknown>"
    assert age("yesterday", NOW) == "<unknown>"


def canary_release(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Paused",
        "message": "step 2/3: paused until promoted",
        "observedGeneration": 2,
        "stable": {"version": "v1.1.0", "url": "oci://r/f@sha256:1", "configHash": "a"},
        "canary": {"version": "v1.2.0", "url": "oci://r/f@sha256:2", "configHash": "b"},
        "currentStep": "2/3",
        "canaryWeight": 50,
        "rollout": {"revision": "b", "step": 1, "weight": 50, "paused": "PauseStep"},
        "canaryPods": ["frontend-c"],
        "stablePods": ["frontend-b", "frontend-a"],
        "wasmPlugins": ["security-headers", "security-headers-canary"],
        "proxies": {
            "ready": "2/3",
            "total": 3,
            "confirmed": 2,
            "stable": 1,
            "canary": 1,
            "pending": 1,
            "lagging": [{"pod": "frontend-b", "wants": "v1.1.0", "runs": "v1.0.0"}],
        },
    }
    return {
        "metadata": {
            "name": "security-headers",
            "namespace": "shop",
            "generation": 2,
            "creationTimestamp": ago(hours=5),
        },
        "spec": {
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 50},
                        {"pause": {}},
                        {"analysis": {"metrics": [{"name": "success-rate"}]}},
                    ]
                }
            }
        },
        "status": {**base, **status},
    }


def test_the_table_has_a_line_per_release_and_namespaces_with_all() -> None:
    steady = {
        "metadata": {"name": "auth", "namespace": "a", "creationTimestamp": ago(days=3)},
        "status": {"phase": "Healthy", "stable": {"version": "v3"}, "message": "all on v3"},
    }
    text = release_table([canary_release(), steady], NOW, all_namespaces=True)
    assert text.splitlines() == [
        "NAMESPACE   NAME               PHASE     STABLE   CANARY   STEP   WEIGHT   PROXIES   "
        "AGE   MESSAGE",
        "a           auth               Healthy   v3       -        -      -        -         "
        "3d    all on v3",
        "shop        security-headers   Paused    v1.1.0   v1.2.0   2/3    50%      2/3       "
        "5h    step 2/3: paused until promoted",
    ]
    one_namespace = release_table([steady], NOW, all_namespaces=False)
    assert one_namespace.splitlines()[0].startswith("NAME   PHASE")


def test_the_table_shortens_long_messages_to_one_line() -> None:
    long = canary_release(message="first line\nsecond " + "x" * 100)
    line = release_table([long], NOW, all_namespaces=False).splitlines()[1]
    message = line.split("5h", 1)[1].strip()
    assert message.startswith("first line second xxx")
    assert len(message) == 60
    assert message.endswith("…")


def test_no_releases_says_so() -> None:
    assert release_table([], NOW, all_namespaces=True) == "No FilterReleases found."


def test_columns_align_and_do_not_pad_the_last_one() -> None:
    assert columns([["A", "BB", "C"], ["aaa", "b", ""]]) == "A     BB   C\naaa   b"


@pytest.mark.parametrize(
    ("step", "text"),
    [
        ({"setWeight": 25}, "setWeight 25%"),
        ({"pause": {}}, "pause (until promoted)"),
        ({"pause": {"duration": "30s"}}, "pause 30s"),
        (
            {"analysis": {"templates": [{"name": "slo"}], "metrics": [{"name": "latency"}]}},
            "analysis: slo, latency",
        ),
    ],
)
def test_steps_are_described_in_words(step: dict[str, Any], text: str) -> None:
    assert describe_step(step) == text


def plugins() -> list[dict[str, Any]]:
    def plugin(name: str, role: str, version: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "labels": {"filterrelease.dev/role": role},
                "annotations": {"filterrelease.dev/version": version},
            }
        }

    return [
        plugin("security-headers", "stable", "v1.1.0"),
        plugin("security-headers-canary", "canary", "v1.2.0"),
    ]


def test_the_tree_shows_the_release_its_plugins_pods_and_steps() -> None:
    text = release_tree(canary_release(), NOW, plugins())
    head, *sections = text.split("\n\n")
    assert head.splitlines() == [
        "Name:         security-headers",
        "Namespace:    shop",
        "Phase:        Paused",
        "Message:      step 2/3: paused until promoted",
        "Strategy:     Canary (3 steps)",
        "  Step:       2/3",
        "  Weight:     50%",
        "  Paused:     PauseStep (waits for a person: promote or resume)",
        "Stable:       v1.1.0",
        "Canary:       v1.2.0",
        "Proxies:      2/3 confirmed (1 stable, 1 canary, 1 pending)",
        "Age:          5h",
    ]
    assert sections[0].splitlines() == [
        "Steps:",
        "  [x] 1. setWeight 50%",
        "  [>] 2. pause (until promoted)",
        "  [ ] 3. analysis: success-rate",
    ]
    assert sections[1].splitlines() == [
        "WasmPlugins:",
        "  security-headers          stable   v1.1.0",
        "  security-headers-canary   canary   v1.2.0",
    ]
    assert sections[2].splitlines() == [
        "Pods:",
        "  canary (v1.2.0): 1 pod",
        "    frontend-c",
        "  stable (v1.1.0): 2 pods",
        "    frontend-a",
        "    frontend-b   proxy runs v1.0.0",
    ]


def test_the_tree_says_when_a_plugin_is_missing_and_the_operator_is_behind() -> None:
    release = canary_release()
    release["metadata"]["generation"] = 3
    text = release_tree(release, NOW, plugins()[:1])
    assert "  security-headers-canary   -        (not found)" in text.splitlines()
    assert "Generation:   3 (the operator has seen 2)" in text.splitlines()
    unreadable = release_tree(release, NOW, None).splitlines()
    assert unreadable[unreadable.index("WasmPlugins:") + 1 :][:2] == [
        "  security-headers          -   ?",
        "  security-headers-canary   -   ?",
    ]


def test_the_tree_of_a_direct_release_has_no_steps_or_pods() -> None:
    release = {
        "metadata": {"name": "x", "namespace": "n", "generation": 1},
        "spec": {"module": {"url": "oci://r/x:v1"}},
        "status": {"phase": "Healthy", "observedGeneration": 1, "stable": {"version": "v1"}},
    }
    text = release_tree(release, NOW)
    assert "Strategy:     Direct" in text
    assert "Steps:" not in text
    assert "Pods:" not in text
    assert "Age:          <unknown>" in text


def test_the_analysis_shows_counts_the_last_value_and_the_stable_baseline() -> None:
    rollout = {
        "revision": "b",
        "step": 2,
        "analysis": [
            {
                "name": "success-rate",
                "phase": "Running",
                "count": 3,
                "successful": 2,
                "failed": 1,
                "measurements": [
                    {"metric": "success-rate", "phase": "Successful", "value": 0.99},
                    {
                        "metric": "success-rate",
                        "phase": "Failed",
                        "value": 0.912345,
                        "baseline": 0.999,
                        "message": "below 0.95",
                    },
                ],
            },
            {"name": "latency", "phase": "Running"},
        ],
        "background": [{"name": "wasm", "phase": "Successful", "count": 1, "successful": 1,
                        "measurements": [{"metric": "wasm", "phase": "Successful"}]}],
    }  # fmt: skip
    text = release_tree(canary_release(rollout=rollout), NOW)
    lines = text.splitlines()
    start = lines.index("Analysis:")
    assert lines[start + 1 : start + 3] == [
        "  success-rate   Running   3 measured: 2 ok, 1 failed, 0 inconclusive, 0 errors   "
        "last 0.9123 (stable 0.999): below 0.95",
        "  latency        Running   0 measured: 0 ok, 0 failed, 0 inconclusive, 0 errors   "
        "no measurement yet",
    ]
    assert lines[start + 3] == "Background analysis:"
    assert lines[start + 4].startswith("  wasm   Successful   1 measured: 1 ok")
    assert lines[start + 4].endswith("last -")
    # Step 3 (index 2) runs: the first two are done.
    assert "  [>] 3. analysis: success-rate" in lines


def test_the_history_marks_where_undo_can_go() -> None:
    history = [
        {"revision": 3, "version": "v1.2.0", "outcome": "RolledBack", "at": ago(minutes=5),
         "reason": "analysis failed: success-rate"},
        {"revision": 2, "version": "v1.1.0", "outcome": "Promoted", "at": ago(hours=3),
         "content": {"url": "oci://r/f@sha256:1"}},
        {"version": "v1.0.0", "outcome": "Released", "at": ago(days=2), "content": {"url": "x"}},
    ]  # fmt: skip
    text = release_tree(canary_release(history=history), NOW)
    lines = text.splitlines()
    start = lines.index("History (newest first; UNDO: where `undo --to-revision` can go):")
    assert lines[start + 1 : start + 5] == [
        "  REVISION   VERSION   OUTCOME      AGE   UNDO     REASON",
        "  3          v1.2.0    RolledBack   5m    -        analysis failed: success-rate",
        "  2          v1.1.0    Promoted     3h    undo:2",
        "  -          v1.0.0    Released     2d    yes",
    ]


def test_the_tree_ends_with_the_latest_events() -> None:
    events = [
        {
            "type": "Normal",
            "reason": f"Step{i}",
            "message": f"m{i}",
            "lastTimestamp": ago(minutes=i),
        }
        for i in range(7, 0, -1)
    ]
    text = release_tree(canary_release(), NOW, events=events)
    lines = text.splitlines()
    start = lines.index("Events:")
    assert lines[start + 1 :] == [
        "  AGE   TYPE     REASON   MESSAGE",
        "  5m    Normal   Step5    m5",
        "  4m    Normal   Step4    m4",
        "  3m    Normal   Step3    m3",
        "  2m    Normal   Step2    m2",
        "  60s   Normal   Step1    m1",
    ]
