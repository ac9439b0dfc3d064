"""Faulty versions the canary must catch that test_canary_e2e does not cover: a module the
proxies cannot fetch although pre-flight verified it, and a module that rejects its
pluginConfig, first stopped by the operator's Envoy dry run and then, with the dry run off, by
the canary itself.

The same real parts as test_canary_e2e (the operator under its own ServiceAccount, a real Envoy
per pod running the real filters, the real registry and Prometheus), with steady traffic
through every sidecar recording which filter versions answered each response.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devcluster.operator_process import OperatorProcess
from meshtraffic.podlogs import CONTAINER
from tests.support.canary import (
    NS,
    PODS,
    RELEASE,
    Mesh,
    Traffic,
    brief,
    install_v1,
    status,
    versions_of,
)
from tests.support.canary_faults import (
    TYPO_CONFIG,
    FaultMesh,
    Gate,
    Watcher,
    faulty_mesh,
    faulty_release,
    lose_blob,
    publish_module,
    wait_rolled_back,
)
from tests.support.polling import poll

pytestmark = [pytest.mark.integration, pytest.mark.envoy]


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, filter_modules: dict[str, bytes]
) -> Iterator[FaultMesh]:
    with faulty_mesh(tmp_path_factory.mktemp("canary-faults"), filter_modules) as found:
        yield found


def condition(current: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in current.get("conditions", []) if c["type"] == kind), {})


def proxy_log(mesh: Mesh, pod: str) -> str:
    return mesh.cluster.kubectl("logs", "-n", NS, pod, "-c", CONTAINER, check=False).stdout


def good_plugin(mesh: Mesh) -> dict[str, Any]:
    out = mesh.cluster.kubectl("get", "wasmplugin", RELEASE, "-n", NS, "-o", "json").stdout
    return dict(json.loads(out)["spec"])


@contextmanager
def operator_without_dry_run(mesh: Mesh) -> Iterator[OperatorProcess]:
    """Replace the running operator by one with FILTERRELEASE_DRY_RUN=false (only one operator
    may run: two would fight over the same releases); the first one is back afterwards."""
    first = mesh.operator
    env = {**first.extra_env, "FILTERRELEASE_DRY_RUN": "false"}
    second = OperatorProcess(
        first.kubeconfig,
        first.log_path.with_name("operator-no-dry-run.log"),
        resync_seconds=first.resync_seconds,
        extra_env=env,
    )
    first.stop()
    try:
        second.start()
        mesh.operator = second
        yield second
    except BaseException:
        print(f"\n--- operator without dry run ---\n{second.log_tail(60)}")
        raise
    finally:
        second.stop()
        mesh.operator = first
        first.start()


@pytest.mark.timeout(600)
def test_a_module_lost_from_the_registry_after_preflight_is_rolled_back_by_wasm_fast_fail(
    mesh: FaultMesh,
) -> None:
    install_v1(mesh)
    good = good_plugin(mesh)
    url, layer = publish_module(mesh, "security-headers", f"unfetchable-{time.time_ns()}")
    mesh.modules["unfetchable"] = url
    manifest_digest = url.rsplit("@sha256:", 1)[1]
    with Gate() as gate, Watcher(mesh) as watcher, Traffic(mesh) as traffic:
        t0 = time.monotonic()
        faulty_release(
            mesh,
            "unfetchable",
            {"version": "bad"},
            webhooks=[{"name": "hold", "type": "pre-rollout", "url": gate.url}],
            # After the first step nothing but the Wasm fast-fail (background analysis, which
            # runs while paused) can end the rollout: with STEPS' analysis the success rate of
            # the deny-all's 403s could beat it on a slow machine, and which check won would
            # be a race.
            steps=[{"setWeight": 25}, {"pause": {}}],
        )

        def holding() -> dict[str, Any] | None:
            current = status(mesh)
            return current if gate.calls and (current.get("rollout") or {}).get("gate") else None

        # The gate is asked only once pre-flight has verified the module: from here until it
        # opens, the module is verified and no pod has moved.
        held = poll(holding, timeout=120, what="the pre-rollout gate asked and holding",
                    on_timeout=lambda: brief(mesh))  # fmt: skip
        assert held["module"]["sha256"] == manifest_digest
        assert condition(held, "ModuleVerified")["status"] == "True"
        assert held["rollout"]["gate"].startswith("pre-rollout"), held["rollout"]
        assert held["phase"] == "Progressing"
        assert not watcher.canary_pods
        assert gate.payloads[0]["name"] == RELEASE
        lose_blob(mesh.cluster.registry, "filters/security-headers", layer)
        gate.opened.set()
        final = wait_rolled_back(mesh, traffic)
        samples = traffic.since(t0)
        errors = dict(traffic.load.result.errors)
    canary = watcher.canary_pods
    aborted = final["rollout"]["aborted"]
    # Whichever signal of the failed fetch came first: the canary proxies' own report (their
    # Envoy runs the deny-all fallback: test_proxy_confirmation has it alone), or the Wasm
    # fast-fail: istio-agent counts it both as a failed fetch and as a failed config
    # conversion, and logs "error in converting the wasm config to local: cannot fetch Wasm
    # module" (the reason is cut at 256 characters, so the tail of that line may be missing).
    assert re.search(
        r"proxies report the canary not loaded: .*deny-all fallback"
        r"|analysis failed: wasm-fast-fail.*"
        r"(failed module fetch|cannot fetch Wasm module|failed Wasm config conversion)",
        aborted,
    ), aborted
    assert final["history"][0]["outcome"] == "RolledBack"
    assert final["stable"]["pluginConfig"] == {"version": "v1"}
    assert good_plugin(mesh) == good  # exactly the last good content
    # The canary pods' agents could not fetch it and put the deny-all filter in its place.
    assert 0 < len(canary) < PODS, canary
    for pod in canary:
        log = proxy_log(mesh, pod)
        assert "cannot fetch Wasm module" in log, pod
        assert "applying deny RBAC filter" in log, pod
    # Users of a canary pod got the deny-all's 403 until the rollback (none at all when the
    # fast-fail beat every new connection to it); nothing else, and from no other pod.
    bad = [s for s in samples if s[2] != 200 or versions_of(s[3]) != ["v1"]]
    assert {s[1] for s in bad} <= canary, bad[:10]
    assert {s[2] for s in bad} <= {403}, bad[:10]
    assert not any("bad" in versions_of(s[3]) for s in samples)  # the module never ran
    print(f"unfetchable: {len(bad)} responses 403, from {sorted(canary)}")
    # A pod that changes track gets a new listener (its filter chain names another plugin); the
    # old one drains and then closes its keep-alive connections: a request racing that close
    # fails at the connection level. It may happen on canary pods, never on the others.
    assert {pod for _, pod in errors} <= canary, errors


@pytest.mark.timeout(600)
def test_a_config_rejecting_version_is_stopped_by_the_dry_run_or_else_by_the_canary(
    mesh: FaultMesh,
) -> None:
    install_v1(mesh)
    good = good_plugin(mesh)
    with Watcher(mesh) as watcher, Traffic(mesh) as traffic:
        t0 = time.monotonic()
        faulty_release(mesh, "security-headers", TYPO_CONFIG)

        def refused() -> dict[str, Any] | None:
            current = status(mesh)
            verified = condition(current, "ModuleVerified")
            return current if verified.get("status") == "False" else None

        rejected = poll(refused, timeout=120, what="ModuleVerified=False",
                        on_timeout=lambda: brief(mesh))  # fmt: skip
        module_condition = condition(rejected, "ModuleVerified")
        assert module_condition["reason"] == "ConfigRejected", module_condition
        assert "frame_option" in module_condition["message"], module_condition
        assert rejected["phase"] == "Degraded"
        # Held while the operator looks again at its resyncs (each one counts a verdict).
        poll(
            lambda: mesh.operator.metric("filterrelease_preflight_total", result="ConfigRejected")
            >= 3 or None,
            timeout=60, what="three pre-flight verdicts",
        )  # fmt: skip
        assert status(mesh)["phase"] == "Degraded"
        assert not watcher.canary_pods
        dry_run_samples = traffic.since(t0)
        t1 = time.monotonic()

        with operator_without_dry_run(mesh):
            final = wait_rolled_back(mesh, traffic)
        samples = traffic.since(t1)
        errors = dict(traffic.load.result.errors)
    # With the dry run: no sidecar ever answered with it, every response v1 from start to end.
    assert dry_run_samples
    assert all(s[2] == 200 and versions_of(s[3]) == ["v1"] for s in dry_run_samples)
    # Without: the canary caught it and everything went back.
    canary = watcher.canary_pods
    aborted = final["rollout"]["aborted"]
    assert re.search(r"analysis failed: (wasm-fast-fail|success-rate)", aborted), aborted
    assert final["history"][0]["outcome"] == "RolledBack"
    assert final["stable"]["pluginConfig"] == {"version": "v1"}
    assert condition(final, "ModuleVerified")["status"] == "True"  # no dry run: verified
    assert good_plugin(mesh) == good
    assert 0 < len(canary) < PODS, canary
    bad = [s for s in samples if s[2] != 200 or versions_of(s[3]) != ["v1"]]
    assert {s[1] for s in bad} <= canary, bad[:10]
    assert not any("bad" in versions_of(s[3]) for s in samples)  # Envoy never ran it
    # A pod that changes track gets a new listener (its filter chain names another plugin); the
    # old one drains and then closes its keep-alive connections: a request racing that close
    # fails at the connection level. It may happen on canary pods, never on the others.
    assert {pod for _, pod in errors} <= canary, errors
    print(f"without the dry run: {len(bad)} bad responses, codes {sorted({s[2] for s in bad})}")
