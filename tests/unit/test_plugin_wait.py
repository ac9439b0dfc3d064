"""`kubectl filterrelease status`: what a release's state means to a CI pipeline that waits."""

from __future__ import annotations

from typing import Any

from filterrelease.plugin.wait import ExitCode, State, assess


def release(generation: int = 2, observed: int | None = 2, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "x", "namespace": "n", "generation": generation},
        "status": {"observedGeneration": observed, **status},
    }


READY = [{"type": "Ready", "status": "True"}]
NOT_READY = [{"type": "Ready", "status": "False"}]


def test_healthy_once_the_latest_spec_is_seen_and_ready() -> None:
    verdict = assess(release(phase="Healthy", message="all proxies on v2", conditions=READY))
    assert verdict.state is State.HEALTHY
    assert verdict.done
    assert verdict.exit_code is ExitCode.HEALTHY
    assert verdict.line == "Healthy: all proxies on v2"


def test_a_status_of_an_older_spec_is_still_progressing() -> None:
    for phase, conditions in (("Healthy", READY), ("Degraded", NOT_READY)):
        verdict = assess(release(generation=3, phase=phase, conditions=conditions))
        assert verdict.state is State.PROGRESSING
        assert not verdict.done
        assert verdict.line == "Waiting for the operator to see generation 3 (it has seen 2)"
    fresh = assess({"metadata": {"generation": 1}})
    assert fresh.line == "Waiting for the operator to see generation 1 (it has seen none)"


def test_degraded_ends_the_wait_with_the_message() -> None:
    verdict = assess(
        release(phase="Degraded", message="module v9 does not exist", conditions=NOT_READY)
    )
    assert verdict.state is State.DEGRADED
    assert verdict.exit_code is ExitCode.DEGRADED
    assert verdict.line == "Degraded: module v9 does not exist"


def test_a_paused_release_waits_for_a_person() -> None:
    verdict = assess(
        release(
            phase="Paused",
            message="step 2/2: paused until promoted",
            currentStep="2/2",
            canaryWeight=50,
            proxies={"ready": "4/4"},
            conditions=NOT_READY,
        )
    )
    assert verdict.state is State.PAUSED
    assert not verdict.done
    assert verdict.line == (
        "Paused (step 2/2, canary weight 50%, proxies 4/4): step 2/2: paused until promoted"
        " -- waiting for a person to promote or resume it"
    )


def test_progress_lines_carry_the_step_and_weight() -> None:
    verdict = assess(
        release(phase="Progressing", message="step 1/3: weight 25%", currentStep="1/3",
                canaryWeight=25, conditions=NOT_READY)
    )  # fmt: skip
    assert verdict.state is State.PROGRESSING
    assert verdict.line == "Progressing (step 1/3, canary weight 25%): step 1/3: weight 25%"
