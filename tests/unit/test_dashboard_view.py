"""The dashboard's pure parts: list rows, the release page's model, the measurement series
that outlive the status's window, and which requests are valid and offered."""

from __future__ import annotations

from typing import Any

import pytest

from filterrelease.dashboard.actions import (
    InvalidRequestError,
    available_actions,
    undo_targets,
    validate_request,
)
from filterrelease.dashboard.guard import (
    allowed_hosts,
    host_allowed,
    origin_allowed,
    token_matches,
)
from filterrelease.dashboard.rows import phase_counts, release_row
from filterrelease.dashboard.series import MeasurementSeries
from filterrelease.dashboard.view import release_view


def measurement(metric: str, at: str, value: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "metric": metric,
        "phase": "Successful",
        "value": value,
        "startedAt": at,
        "finishedAt": at,
        **extra,
    }


def rollout_release(**rollout: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop",
            "name": "headers",
            "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "module": {"url": "oci://r/f:v2"},
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 25},
                        {"analysis": {"metrics": [{"name": "success-rate"}]}},
                        {"pause": {}},
                        {"pause": {"duration": "30s"}},
                    ]
                }
            },
        },
        "status": {
            "phase": "Progressing",
            "message": "step 2/4",
            "stable": {"version": "v1", "configHash": "h1"},
            "canary": {"version": "v2", "configHash": "h2"},
            "currentStep": "2/4",
            "canaryWeight": 25,
            "proxies": {
                "ready": "3/4",
                "total": 4,
                "confirmed": 3,
                "lagging": [{"pod": "web-3", "wants": "v1", "runs": "v0"}],
            },
            "canaryPods": ["web-0"],
            "stablePods": ["web-1", "web-2", "web-3"],
            "rollout": {"revision": "h2", "step": 1, "weight": 25, **rollout},
            "history": [
                {
                    "revision": 3,
                    "version": "v1",
                    "configHash": "h1",
                    "outcome": "Released",
                    "at": "2026-01-01T00:00:00Z",
                    "content": {"url": "x"},
                },
                {
                    "revision": 2,
                    "version": "v0",
                    "configHash": "h0",
                    "outcome": "Promoted",
                    "at": "2025-12-01T00:00:00Z",
                    "content": {"url": "y"},
                },
                {
                    "revision": 1,
                    "version": "old",
                    "configHash": "hz",
                    "outcome": "Promoted",
                    "at": "2025-11-01T00:00:00Z",
                },
            ],
        },
    }


# -- rows ------------------------------------------------------------------------------------


def test_a_row_has_what_the_list_shows_and_the_newest_measurement() -> None:
    release = rollout_release(
        analysis=[
            {
                "name": "success-rate",
                "measurements": [
                    measurement("success-rate", "2026-01-01T00:00:05Z", 99.0),
                    measurement("success-rate", "2026-01-01T00:00:10Z", 98.5, phase="Failed"),
                ],
            }
        ],
        background=[
            {"name": "wasm", "measurements": [measurement("wasm", "2026-01-01T00:00:07Z", 0.0)]}
        ],
    )
    row = release_row(release)
    assert row == {
        "namespace": "shop",
        "name": "headers",
        "phase": "Progressing",
        "message": "step 2/4",
        "stable": "v1",
        "canary": "v2",
        "step": "2/4",
        "weight": 25,
        "proxies": "3/4",
        "analysis": {
            "metric": "success-rate",
            "phase": "Failed",
            "value": 98.5,
            "at": "2026-01-01T00:00:10Z",
        },
        "created": "2026-01-01T00:00:00Z",
    }


def test_a_release_without_status_is_pending_with_empty_cells() -> None:
    row = release_row({"metadata": {"namespace": "a", "name": "b"}})
    assert row["phase"] == "Pending"
    assert (row["stable"], row["canary"], row["step"], row["analysis"]) == ("", "", "", None)


def test_phase_counts_name_every_phase_and_unknown_ones_after() -> None:
    rows = [{"phase": "Healthy"}, {"phase": "Healthy"}, {"phase": "Degraded"}, {"phase": "Odd"}]
    assert phase_counts(rows) == {
        "Pending": 0,
        "Progressing": 0,
        "Paused": 0,
        "Healthy": 2,
        "Degraded": 1,
        "Odd": 1,
    }


# -- the series --------------------------------------------------------------------------------


def status_with(*points: dict[str, Any], revision: str = "h2") -> dict[str, Any]:
    return {
        "rollout": {
            "revision": revision,
            "analysis": [{"name": "success-rate", "measurements": list(points)}],
        }
    }


def test_series_keep_points_beyond_the_status_window_without_duplicates() -> None:
    series = MeasurementSeries()
    a = measurement("success-rate", "2026-01-01T00:00:05Z", 99.0, baseline=99.5)
    b = measurement("success-rate", "2026-01-01T00:00:10Z", 98.0)
    c = measurement("success-rate", "2026-01-01T00:00:15Z", 97.0)
    assert series.add(status_with(a, b))
    assert not series.add(status_with(a, b))  # the same status again: nothing new
    assert series.add(status_with(b, c))  # the window moved on: a is gone from the status
    points = series.metrics()["success-rate"]
    assert [p["value"] for p in points] == [99.0, 98.0, 97.0]
    assert [p["baseline"] for p in points] == [99.5, None, None]


def test_a_new_rollout_starts_new_series() -> None:
    series = MeasurementSeries()
    series.add(status_with(measurement("success-rate", "2026-01-01T00:00:05Z", 1.0)))
    assert series.add(status_with(revision="h3"))
    assert series.metrics() == {}


def test_series_are_bounded_and_forget_what_they_dropped() -> None:
    series = MeasurementSeries(max_points=2)
    for second in range(4):
        series.add(status_with(measurement("m", f"2026-01-01T00:00:0{second}Z", float(second))))
    assert [p["value"] for p in series.metrics()["m"]] == [2.0, 3.0]


def test_background_measurements_are_kept_too() -> None:
    series = MeasurementSeries()
    status = {
        "rollout": {
            "revision": "h",
            "background": [
                {"name": "wasm", "measurements": [measurement("wasm", "2026-01-01T00:00:01Z", 0.0)]}
            ],
        }
    }
    assert series.add(status)
    assert list(series.metrics()) == ["wasm"]


# -- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["promote", "promote-full", "abort", "pause", "resume", "retry", "undo", "undo:3", "undo:12"],
)
def test_known_requests_are_valid(value: str) -> None:
    assert validate_request(value) == value


@pytest.mark.parametrize(
    "value", ["", "PROMOTE", "undo:", "undo:0", "undo:-1", "undo:x", "undo:1 ", "delete", 3, None]
)
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(InvalidRequestError):
        validate_request(value)


def test_a_running_rollout_offers_promote_pause_abort_and_undo() -> None:
    assert available_actions(rollout_release()) == [
        "promote",
        "promote-full",
        "pause",
        "abort",
        "undo",
    ]


def test_a_manually_paused_rollout_offers_resume_instead_of_pause() -> None:
    offered = available_actions(rollout_release(paused="Manual"))
    assert "resume" in offered
    assert "pause" not in offered


def test_a_pause_step_is_ended_by_promote_not_resume() -> None:
    offered = available_actions(rollout_release(paused="PauseStep"))
    assert "promote" in offered
    assert "resume" not in offered
    assert "pause" not in offered


def test_a_rolled_back_rollout_offers_retry_and_undo_only() -> None:
    assert available_actions(rollout_release(aborted="analysis failed")) == ["retry", "undo"]


def test_undo_goes_to_kept_versions_other_than_the_running_ones() -> None:
    # h1 is the stable version: undoing to it would change nothing; revision 1 has no content.
    assert undo_targets(rollout_release()) == [2]


def test_no_history_revisions_no_undo() -> None:
    release = rollout_release()
    for entry in release["status"]["history"]:
        entry.pop("revision")
    assert "undo" not in available_actions(release)


# -- the release page -----------------------------------------------------------------------


def pod(name: str, phase: str = "Running", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def view_of(release: dict[str, Any], may_act: bool = True, **kw: Any) -> dict[str, Any]:
    return release_view(
        release,
        metrics=kw.get("metrics", {}),
        pods=kw.get(
            "pods",
            [pod("web-0"), pod("web-1"), pod("web-2", ready=False), pod("web-3"), pod("web-9")],
        ),
        events=kw.get("events", []),
        plugins=kw.get("plugins", []),
        may_act=may_act,
    )


def test_the_current_step_is_marked_and_the_ones_before_are_done() -> None:
    steps = view_of(rollout_release())["steps"]
    assert [(s["number"], s["state"]) for s in steps] == [
        (1, "done"),
        (2, "current"),
        (3, "todo"),
        (4, "todo"),
    ]
    assert [s["label"] for s in steps] == [
        "set weight 25%",
        "analysis: success-rate",
        "pause until promoted",
        "pause 30s",
    ]


def test_a_rolled_back_rollout_marks_where_it_stopped() -> None:
    steps = view_of(rollout_release(aborted="analysis failed"))["steps"]
    assert [s["state"] for s in steps] == ["done", "stopped", "todo", "todo"]


def test_without_a_rollout_no_step_is_current() -> None:
    release = rollout_release()
    del release["status"]["rollout"]
    assert {s["state"] for s in view_of(release)["steps"]} == {"todo"}


def test_pods_are_grouped_by_track_with_the_version_each_runs() -> None:
    groups = {g["track"]: g for g in view_of(rollout_release())["pods"]}
    assert [p["name"] for p in groups["canary"]["pods"]] == ["web-0"]
    assert groups["canary"]["pods"][0]["version"] == "v2"
    stable = {p["name"]: p for p in groups["stable"]["pods"]}
    assert stable["web-1"]["version"] == "v1"
    assert stable["web-2"]["ready"] is False
    # The operator found web-3's proxy on another version: what it runs, and what it should.
    assert (stable["web-3"]["version"], stable["web-3"]["wants"]) == ("v0", "v1")
    # Selected but on neither track (a pod that came after the layout was planned).
    assert [p["name"] for p in groups["other"]["pods"]] == ["web-9"]


def test_without_canary_pods_every_pod_is_stable() -> None:
    release = rollout_release()
    release["status"].pop("canaryPods")
    release["status"].pop("stablePods")
    groups = view_of(release, pods=[pod("a"), pod("b")])["pods"]
    assert [(g["track"], len(g["pods"])) for g in groups] == [("stable", 2)]


def test_a_metric_panel_has_its_points_its_verdict_and_whether_a_baseline_exists() -> None:
    release = rollout_release(
        analysis=[{"name": "success-rate", "phase": "Running", "successful": 2, "failed": 1}]
    )
    points = [{"at": "t1", "value": 1.0, "baseline": None}, {"at": "t2", "value": 2.0}]
    [panel] = view_of(release, metrics={"success-rate": points})["metrics"]
    assert panel["phase"] == "Running"
    assert panel["counts"] == {"successful": 2, "failed": 1, "inconclusive": 0, "error": 0}
    assert panel["hasBaseline"] is False
    points[1]["baseline"] = 2.5
    [panel] = view_of(release, metrics={"success-rate": points})["metrics"]
    assert panel["hasBaseline"] is True


def test_events_are_newest_first() -> None:
    events = [
        {"type": "Normal", "reason": "A", "message": "a", "lastTimestamp": "2026-01-01T00:00:01Z"},
        {"type": "Warning", "reason": "B", "message": "b", "lastTimestamp": "2026-01-01T00:00:09Z"},
    ]
    assert [e["reason"] for e in view_of(rollout_release(), events=events)["events"]] == ["B", "A"]


def test_actions_and_undo_buttons_only_for_a_person_who_may_act() -> None:
    allowed = view_of(rollout_release())
    assert allowed["actions"]
    assert [h["undo"] for h in allowed["history"]] == [False, True, False]
    refused = view_of(rollout_release(), may_act=False)
    assert refused["actions"] == []
    assert not any(h["undo"] for h in refused["history"])


def test_history_without_revisions_still_shows() -> None:
    release = rollout_release()
    release["status"]["history"] = [{"version": "v1", "outcome": "Released", "at": "t"}]
    [entry] = view_of(release)["history"]
    assert entry == {
        "revision": None,
        "version": "v1",
        "outcome": "Released",
        "at": "t",
        "reason": "",
        "undo": False,
    }


# -- the guard -------------------------------------------------------------------------------


def test_a_loopback_bind_accepts_its_own_names_only() -> None:
    allowed = allowed_hosts("127.0.0.1", 8765)
    assert host_allowed("127.0.0.1:8765", allowed)
    assert host_allowed("localhost:8765", allowed)
    assert not host_allowed("evil.example:8765", allowed)  # DNS rebinding
    assert not host_allowed("127.0.0.1:9999", allowed)
    assert not host_allowed(None, allowed)


def test_a_wildcard_bind_checks_no_host() -> None:
    assert allowed_hosts("0.0.0.0", 80) is None
    assert host_allowed("anything", None)


def test_origin_and_token() -> None:
    assert origin_allowed(None, "127.0.0.1:1")
    assert origin_allowed("http://127.0.0.1:1", "127.0.0.1:1")
    assert not origin_allowed("http://evil.example", "127.0.0.1:1")
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches(None, "abc")
