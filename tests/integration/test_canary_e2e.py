"""Whole canary rollouts on the local cluster: the real operator (its own ServiceAccount),
real Envoy sidecars running the real filter modules, the real registry and the real Prometheus.

While a rollout runs, a load generator sends steady traffic through every sidecar and records,
for every response, which filter versions handled it (each filter instance appends its version
to x-filter-chain): the safety property is checked on real traffic, response by response.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.mesh import meshed_deployment
from localcluster.oci_publish import publish
from localcluster.prometheus import Prometheus
from tests.integration.conftest import REPO_ROOT
from tests.support.canary import (
    ANALYSIS,
    NS,
    PODS,
    RELEASE,
    STEPS,
    Mesh,
    Traffic,
    brief,
    events,
    explain,
    install_v1,
    lately_all_on,
    operated_mesh,
    release,
    report,
    serving,
    status,
    versions_of,
    wait_phase,
)
from tests.support.polling import poll
from tests.support.wasm import with_custom_section

pytestmark = [pytest.mark.integration, pytest.mark.envoy]


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, filter_modules: dict[str, bytes]
) -> Iterator[Mesh]:
    with operated_mesh(tmp_path_factory.mktemp("canary-e2e")) as (cluster, operator):
        found = Mesh(cluster, operator)
        for name in ("security-headers", "panicky", "local-5xx", "slow"):
            wasm = with_custom_section(filter_modules[name], "e2e", name.encode())
            digest = publish(cluster.registry.host, f"filters/{name}", "e2e", wasm, "oci-wasm")
            found.modules[name] = f"oci://{cluster.registry.host}/filters/{name}@{digest}"
        try:
            yield found
        finally:
            report(found)


def measurement_errors(current: dict[str, Any]) -> dict[str, int]:
    """How many measurements could not be taken, for each metric of the current analysis step
    that is still measured (one with its verdict is measured no more)."""
    analysis = (current.get("rollout") or {}).get("analysis", [])
    final = ("Successful", "Failed", "Inconclusive")
    return {r["name"]: int(r.get("error", 0)) for r in analysis if r.get("phase") not in final}


def test_a_good_version_is_promoted_step_by_step_and_every_response_has_one_version(
    mesh: Mesh,
) -> None:
    install_v1(mesh)
    # The first analysis step's metrics come from an AnalysisTemplate, the second's are inline.
    template = {
        "apiVersion": "filterrelease.dev/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "istio-slo", "namespace": NS},
        "spec": ANALYSIS,
    }
    mesh.cluster.kubectl("apply", "-f", "-", input=json.dumps(template))
    steps = [STEPS[0], {"analysis": {"templates": [{"name": "istio-slo"}]}}, *STEPS[2:]]
    with Traffic(mesh) as traffic:
        t0 = time.monotonic()
        release(mesh, "security-headers", {"version": "v2"}, steps=steps)

        def promoted() -> bool:
            current = status(mesh)
            return (
                current.get("phase") == "Healthy"
                and (current.get("stable") or {}).get("pluginConfig", {}).get("version") == "v2"
            )

        poll(promoted, timeout=180, what="v2 promoted",
             on_timeout=lambda: brief(mesh))  # fmt: skip
        poll(lambda: lately_all_on(traffic, "v2") or None, timeout=30,
             what="every response on v2")  # fmt: skip
        samples = traffic.since(t0)
    # Never none, never two: every single response carried exactly one version.
    bad = [s for s in samples if s[2] != 200 or len(versions_of(s[3])) != 1]
    assert not bad, bad[:10]
    # The canary really was a share of the pods before it was all of them.
    shares = share_over_time(samples)
    assert any(0 < share < 1 for share in shares), shares
    passed = [m.split(":")[0] for m in events(mesh, "StepPassed")]
    assert sorted(passed) == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"], passed
    final = status(mesh)
    assert final["history"][0]["outcome"] == "Promoted"
    assert "split" not in final
    plugins = mesh.cluster.kubectl("get", "wasmplugins", "-n", NS, "-o", "name").stdout.split()
    assert plugins == [f"wasmplugin.extensions.istio.io/{RELEASE}"]


def share_over_time(samples: list[tuple[float, str, int, str]]) -> list[float]:
    """The share of pods answering with v2, per second of the rollout."""
    buckets: dict[int, dict[str, str]] = {}
    for t, pod, _, chain in samples:
        buckets.setdefault(int(t), {})[pod] = chain
    return [
        sum(1 for c in pods.values() if c == "v2") / len(pods)
        for _, pods in sorted(buckets.items())
        if len(pods) == PODS
    ]


@pytest.mark.parametrize(
    ("module", "config", "why"),
    [
        ("panicky", {"panic_every": 3, "version": "bad"}, "analysis failed"),
        ("local-5xx", {"fail_every": 2, "status": 503, "version": "bad"}, "success-rate"),
        ("slow", {"delay_ms": 400, "version": "bad"}, "latency"),
    ],
    ids=["panicking", "5xx", "slow"],
)
def test_a_faulty_version_is_rolled_back_to_the_last_good_one(
    mesh: Mesh, module: str, config: dict[str, Any], why: str
) -> None:
    install_v1(mesh)
    good = mesh.cluster.kubectl("get", "wasmplugin", RELEASE, "-n", NS, "-o", "json").stdout
    with Traffic(mesh) as traffic:
        t0 = time.monotonic()
        release(mesh, module, config)
        final = poll(
            lambda: (
                (
                    (s := status(mesh)).get("phase") == "Degraded"
                    and (s.get("history") or [{}])[0].get("outcome") == "RolledBack"
                    and s
                )
                or None
            ),
            timeout=180,
            what="rolled back",
            on_timeout=lambda: brief(mesh),
        )
        poll(lambda: lately_all_on(traffic, "v1") or None, timeout=30,
             what="every response back on v1")  # fmt: skip
        samples = traffic.since(t0)
    assert why in final.get("rollout", {}).get("aborted", ""), final
    assert final["history"][0]["outcome"] == "RolledBack"
    assert final["stable"]["pluginConfig"] == {"version": "v1"}
    after = json.loads(
        mesh.cluster.kubectl("get", "wasmplugin", RELEASE, "-n", NS, "-o", "json").stdout
    )
    assert after["spec"] == json.loads(good)["spec"]  # exactly the last good content
    # Bad responses came only from canary pods, and never more than a share of them at once.
    bad_pods = {s[1] for s in samples if "bad" in versions_of(s[3])}
    assert 0 < len(bad_pods) < PODS
    mixed = [s for s in samples if s[2] == 200 and len(versions_of(s[3])) != 1]
    assert not mixed, explain(mesh, mixed)


def test_prometheus_down_holds_the_rollout_then_it_resumes(mesh: Mesh) -> None:
    install_v1(mesh)
    prometheus = mesh.cluster.mesh.prometheus
    with Traffic(mesh):
        release(mesh, "security-headers", {"version": "v2"})
        poll(lambda: status(mesh).get("currentStep") == "2/4" or None, timeout=60,
             what="the first analysis step")  # fmt: skip
        prometheus.stop()
        try:
            held = poll(
                lambda: ((s := status(mesh)).get("phase") == "Progressing"
                and any(c["type"] == "MetricsUnavailable" and c["status"] == "True"
                        for c in s.get("conditions", [])) and s) or None,
                timeout=90, what="MetricsUnavailable",
            )  # fmt: skip
            step = held["currentStep"]
            errors = measurement_errors(held)
            assert errors, brief(mesh)

            # Held: neither promoted nor rolled back while Prometheus is down, and seen to be
            # held, not merely not yet moved: the operator measures again (and fails to) at
            # every interval, and decides each time to hold. Counted, not timed: two more
            # failed measurements of every metric, every status read meanwhile at that step.
            def measured_twice_more() -> bool:
                now = status(mesh)
                assert now["phase"] == "Progressing", now["message"]
                assert now["currentStep"] == step
                again = measurement_errors(now)
                return all(again.get(name, 0) >= n + 2 for name, n in errors.items())

            poll(lambda: measured_twice_more() or None, timeout=90,
                 what="two more measurements held while Prometheus is down",
                 on_timeout=lambda: brief(mesh))  # fmt: skip
        finally:
            prometheus.restart()
        wait_phase(mesh, "Healthy", timeout=180)
    assert status(mesh)["stable"]["pluginConfig"] == {"version": "v2"}


def test_the_operator_killed_at_every_step_boundary_resumes_without_repeating_a_step(
    mesh: Mesh,
) -> None:
    install_v1(mesh)
    # The pauses wait until promoted: a boundary the operator may pass on its own can pass
    # faster than the test looks (on a slow machine, easily), and how many kills the test got
    # in would be a race. These the test sees for certain; the others it catches as it can.
    steps: list[dict[str, Any]] = [
        {"setWeight": 25},
        {"pause": {}},
        {"setWeight": 50},
        {"pause": {}},
        {"setWeight": 75},
    ]
    pauses = sum(1 for step in steps if "pause" in step)
    kills = 0
    with Traffic(mesh) as traffic:
        t0 = time.monotonic()
        release(mesh, "security-headers", {"version": "v2"}, steps=steps)
        seen_step = 0
        promoted: set[int] = set()
        deadline = time.monotonic() + 240
        while True:
            current = status(mesh)
            if current.get("phase") == "Healthy" and (
                (current.get("stable") or {}).get("pluginConfig") == {"version": "v2"}
            ):
                break
            assert time.monotonic() < deadline, brief(mesh)
            rollout = current.get("rollout") or {}
            step = int(rollout.get("step", 0))
            if step > seen_step:
                # A step just passed (its outcome is in the status): kill -9 right there.
                seen_step = step
                mesh.operator.kill()
                kills += 1
                mesh.operator.start()
            elif rollout.get("paused") == "PauseStep" and step not in promoted:
                # Killed at this pause's boundary already: let the rollout go on.
                promoted.add(step)
                mesh.cluster.kubectl(
                    "annotate", "frel", RELEASE, "-n", NS, "filterrelease.dev/request=promote",
                    "--overwrite",
                )  # fmt: skip
        samples = traffic.since(t0)
    assert kills >= pauses, kills
    assert len(promoted) == pauses
    # "step 2/5: paused ..." or "step 2/5 promoted by request": the step is the first words.
    passed = [" ".join(m.split(":")[0].split()[:2]) for m in events(mesh, "StepPassed")]
    assert sorted(passed) == sorted(set(passed)), passed  # no step passed twice
    # The status is written before the Events: a kill in between loses an Event, not a step.
    assert set(passed) <= {f"step {i}/{len(steps)}" for i in range(1, len(steps) + 1)}
    assert len(passed) >= len(steps) - kills
    bad = [s for s in samples if s[2] != 200 or len(versions_of(s[3])) != 1]
    assert not bad, bad[:10]


def test_pods_scaled_up_mid_rollout_get_exactly_one_version(mesh: Mesh) -> None:
    install_v1(mesh)
    track = f"track.filterrelease.dev/{RELEASE}"
    with Traffic(mesh) as traffic:
        t0 = time.monotonic()
        release(mesh, "security-headers", {"version": "v2"},
                steps=[{"setWeight": 50}, {"pause": {}}])  # fmt: skip
        wait_phase(mesh, "Paused")
        mesh.cluster.kubectl("scale", "deployment/web", "-n", NS, "--replicas=6")
        poll(lambda: len(serving(mesh.cluster)) == 6 or None, timeout=120,
             what="6 sidecars serving")  # fmt: skip
        # The new pods were labelled stable at admission; the operator keeps the weight (50% of
        # 6 pods is 3 canary pods).
        held = poll(lambda: (len(status(mesh).get("canaryPods", [])) == 3 and status(mesh)) or None,
                    timeout=60, what="3 of 6 pods on the canary")  # fmt: skip
        labels = json.loads(
            mesh.cluster.kubectl("get", "pods", "-n", NS, "-l", "app=web", "-o", "json").stdout
        )
        tracks = sorted(p["metadata"]["labels"].get(track, "") for p in labels["items"])
        assert tracks == ["canary"] * 3 + ["stable"] * 3, tracks
        assert held["phase"] == "Paused"
        # The new pods serve (each with exactly one version, checked below) before promotion.
        poll(lambda: len({s[1] for s in traffic.since(t0)}) == 6 or None, timeout=60,
             what="traffic through all 6 sidecars")  # fmt: skip
        mesh.cluster.kubectl(
            "annotate", "frel", RELEASE, "-n", NS, "filterrelease.dev/request=promote-full"
        )
        poll(lambda: ((status(mesh).get("stable") or {}).get("pluginConfig") == {"version": "v2"}
             and status(mesh).get("phase") == "Healthy") or None, timeout=120,
             what="v2 promoted on request")  # fmt: skip
        annotations = json.loads(
            mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, "-o", "json").stdout
        )["metadata"].get("annotations", {})
        assert "filterrelease.dev/request" not in annotations  # consumed
        samples = traffic.since(t0)
    bad = [s for s in samples if s[2] != 200 or len(versions_of(s[3])) != 1]
    assert not bad, explain(mesh, bad)
    assert len({s[1] for s in samples}) == 6  # the new pods served traffic too
    mesh.cluster.kubectl("scale", "deployment/web", "-n", NS, f"--replicas={PODS}")
    poll(lambda: len(serving(mesh.cluster)) == PODS or None, timeout=120,
         what=f"back to {PODS} sidecars")  # fmt: skip


def test_waves_roll_one_workload_out_after_the_other(mesh: Mesh) -> None:
    ns = "front"
    cluster = mesh.cluster
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, "istio-injection=enabled")
    for app in ("cart", "checkout"):
        manifest = meshed_deployment(app, ns, 2, {"tier": "front"})
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    poll(lambda: len([p for n, p in cluster.mesh.exporter.pods if n == ns]) == 4 or None,
         timeout=120, what="4 sidecars serving in front")  # fmt: skip

    def apply(version: str, strategy: dict[str, Any] | None) -> None:
        spec: dict[str, Any] = {
            "selector": {"matchLabels": {"tier": "front"}},
            "priority": 10,
            "module": {"url": mesh.modules["security-headers"]},
            "pluginConfig": {"version": version},
        }
        if strategy:
            spec["strategy"] = strategy
        body = {"apiVersion": "filterrelease.dev/v1alpha1", "kind": "FilterRelease",
                "metadata": {"name": "front", "namespace": ns}, "spec": spec}  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def front_status() -> dict[str, Any]:
        out = cluster.kubectl("get", "frel", "front", "-n", ns, "-o", "json")
        return dict(json.loads(out.stdout).get("status") or {})

    apply("v1", None)
    poll(lambda: front_status().get("phase") == "Healthy" or None, timeout=60, what="v1")
    strategy = {
        "canary": {
            "steps": [{"setWeight": 50}, {"pause": {"duration": "3s"}}],
            "waves": {"byLabel": "app"},
        }
    }
    with Traffic(mesh, namespace=ns, selector={"tier": "front"}) as traffic:
        poll(lambda: len({s[1] for s in traffic.since(0)}) == 4 or None, timeout=30,
             what="traffic through the 4 sidecars")  # fmt: skip
        poll(lambda: lately_all_on(traffic, "v1", pods=4) or None, timeout=60,
             what="every sidecar on v1")  # fmt: skip
        t0 = time.monotonic()
        apply("v2", strategy)
        snapshots: list[tuple[int, list[str]]] = []

        def promoted() -> bool:
            current = front_status()
            rollout = current.get("rollout") or {}
            snapshots.append((int(rollout.get("wave", 0)), current.get("canaryPods") or []))
            return current.get("phase") == "Healthy" and (current.get("stable") or {}).get(
                "pluginConfig"
            ) == {"version": "v2"}

        poll(promoted, timeout=120, what="v2 promoted after both waves")
        poll(lambda: lately_all_on(traffic, "v2", pods=4) or None, timeout=30,
             what="every response on v2")  # fmt: skip
        samples = traffic.since(t0)
    bad = [s for s in samples if s[2] != 200 or len(versions_of(s[3])) != 1]
    assert not bad, bad[:10]
    # While the first wave ran, no checkout pod was on the canary; the second wave came.
    assert all(not any(p.startswith("checkout-") for p in pods) for w, pods in snapshots if w == 0)
    assert any(w == 1 for w, _ in snapshots), snapshots
    # And in the traffic: cart answered with v2 before checkout did.
    first_v2: dict[str, float] = {}
    for t, pod, _, chain in samples:
        if versions_of(chain) == ["v2"]:
            first_v2.setdefault(pod, t)
    cart = [t for p, t in first_v2.items() if p.startswith("cart-")]
    checkout = [t for p, t in first_v2.items() if p.startswith("checkout-")]
    assert len(cart) == 2
    assert len(checkout) == 2
    assert min(cart) < min(checkout), first_v2


GRAFANA = REPO_ROOT / "deploy" / "dashboards" / "filterrelease-rollouts.json"
LONG_ANALYSIS: dict[str, Any] = {
    "metrics": [
        # Measured for as long as the test needs: the analysis is still running when the
        # panel is read, so the values it shows are the ones the status shows.
        {**ANALYSIS["metrics"][0], "interval": "2s", "count": 200, "inconclusiveLimit": 100},
    ]
}


def panel_queries(title: str) -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    panel = next(p for p in dashboard["panels"] if p["title"] == title)
    return [
        t["expr"].replace("$namespace", NS).replace("$release", RELEASE) for t in panel["targets"]
    ]


def kept_values(current: dict[str, Any], metric: str) -> tuple[set[float], set[float]]:
    """The canary and stable values of a metric's measurements the status keeps."""
    results = (current.get("rollout") or {}).get("analysis", [])
    kept: list[dict[str, Any]] = next(
        (r.get("measurements", []) for r in results if r["name"] == metric), []
    )
    return (
        {m["value"] for m in kept if "value" in m},
        {m["baseline"] for m in kept if "baseline" in m},
    )


def test_canary_and_stable_values_are_exported_and_undo_puts_back_v1_at_once(
    mesh: Mesh, tmp_path: Path
) -> None:
    install_v1(mesh)
    metric: str = LONG_ANALYSIS["metrics"][0]["name"]
    with Traffic(mesh) as traffic:
        release(mesh, "security-headers", {"version": "v2"},
                steps=[{"setWeight": 50}, {"analysis": LONG_ANALYSIS}])  # fmt: skip
        poll(lambda: all(kept_values(status(mesh), metric)) or None, timeout=120,
             what="measurements of canary and stable", on_timeout=lambda: brief(mesh))  # fmt: skip

        # A real Prometheus scrapes the operator, and the Grafana panel's own queries find
        # each metric's canary and stable series, with values the status shows.
        targets = tmp_path / "operator-targets.json"
        targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{mesh.operator.metrics_port}"]}]))
        with Prometheus(tmp_path / "prometheus", targets, metrics_path="/metrics") as prom:
            prom.wait_for_targets(1, timeout=60)
            canary_q, stable_q = panel_queries("Canary vs stable: each metric's last measurement")

            def panel_matches_status() -> bool:
                canary = {s.labels["metric"]: s.value for s in prom.query(canary_q)}
                stable = {s.labels["metric"]: s.value for s in prom.query(stable_q)}
                values, baselines = kept_values(status(mesh), metric)
                return canary.get(metric) in values and stable.get(metric) in baselines

            poll(panel_matches_status, timeout=60, what="the panel's series match the status")
            for query in panel_queries("Analysis measurements"):

                def answered(q: str = query) -> bool:
                    return bool(prom.query(q))

                # A rate needs two scrapes of the counter.
                poll(answered, timeout=30, what=query)

        # Undo during the canary: every proxy back on v1 at once, no step, no analysis.
        t0 = time.monotonic()
        mesh.cluster.kubectl("annotate", "frel", RELEASE, "-n", NS,
                             "filterrelease.dev/request=undo")  # fmt: skip
        poll(lambda: lately_all_on(traffic, "v1", seconds=1) or None, timeout=60,
             what="every response back on v1")  # fmt: skip
        took = time.monotonic() - t0
        print(f"\nundo: every response on v1 {took:.1f}s after the request")
        samples = traffic.since(t0)
    mixed = [s for s in samples if s[2] != 200 or len(versions_of(s[3])) != 1]
    assert not mixed, explain(mesh, mixed)
    final = poll(
        lambda: ((s := status(mesh)).get("undone") and "every selected proxy runs" in s["message"]
        and s) or None,
        timeout=60, what="the undo confirmed by the proxies", on_timeout=lambda: brief(mesh),
    )  # fmt: skip
    assert final["phase"] == "Degraded"
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "UndoneFromSpec")
    assert final["undone"]["revision"] == 1
    assert final["history"][0]["outcome"] == "Undone"
    assert "split" not in final
    assert len(events(mesh, "Undone")) == 2  # asked for, then confirmed by every proxy
    # A new spec ends the undo, and its canary starts from v1.
    release(mesh, "security-headers", {"version": "v3"}, steps=[{"setWeight": 50}, {"pause": {}}])
    paused = wait_phase(mesh, "Paused")
    assert "undone" not in paused
    assert paused["stable"]["pluginConfig"] == {"version": "v1"}
