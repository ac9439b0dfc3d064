"""Two operator replicas on the local cluster, the leader SIGKILLed in the middle of a canary step.

What a platform team gets from deploy/ (2 replicas, one Lease): only the leader reconciles,
both serve the pod admission webhook behind one address, and when the leader dies the follower
takes the Lease over and carries the rollout on from the status the leader wrote.

The webhook's one address is the real Envoy as a TCP proxy with health checks in front of both
replicas (localcluster/balancer.py), standing in for the Service (whose Endpoints refuse
loopback addresses). Throughout, pods are created every 200 ms in the meshed namespace: not one
may be refused, whichever replica answers and whether or not it leads.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from devcluster.install import OPERATOR_NAMESPACE, install_filterrelease
from devcluster.operator_process import OperatorProcess
from filterrelease.providers.envoy import find_envoy
from localcluster.balancer import TcpBalancer
from localcluster.mesh import MeshCluster, meshed_deployment
from localcluster.oci_publish import publish
from tests.support.canary import (
    NS,
    PODS,
    Mesh,
    Traffic,
    brief,
    events,
    install_v1,
    release,
    serving,
    status,
    versions_of,
)
from tests.support.polling import poll
from tests.support.wasm import with_custom_section

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

LEASE = "filterrelease-operator"
# deploy/operator/deployment.yaml's (controller-runtime's) timings.
LEASE_SECONDS, RETRY_SECONDS = 15.0, 2.0
CHURN_INTERVAL = 0.2


@dataclass
class Replicas:
    cluster: MeshCluster
    balancer: TcpBalancer
    by_name: dict[str, OperatorProcess] = field(default_factory=dict)

    def holder(self) -> str | None:
        out = self.cluster.kubectl(
            "get", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False
        )
        if out.returncode != 0:
            return None
        holder = (json.loads(out.stdout).get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None

    def leader(self) -> str:
        return poll(self.holder, timeout=60, what="a replica holding the Lease")


class PodChurn:
    """Creates a pod every CHURN_INTERVAL in a meshed namespace (through the webhook) and
    deletes it again; records every refusal with the API server's message."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self._api = client.CoreV1Api(api_client)
        self._namespace = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod churn", daemon=True)
        self.created = 0
        self.refused: list[str] = []

    def __enter__(self) -> PodChurn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(CHURN_INTERVAL):
            i += 1
            name = f"churn-{i}"
            pod: Any = {
                "apiVersion": "v1",
                "kind": "Pod",
                # No sidecar (the data plane ignores it), but the namespace is meshed, so its
                # creation goes through the fail-closed pod webhook like any other.
                "metadata": {
                    "name": name,
                    "labels": {"app": "churn", "sidecar.istio.io/inject": "false"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "app", "image": "registry.local/churn:1"}],
                },
            }
            try:
                self._api.create_namespaced_pod(self._namespace, pod)
                self.created += 1
            except client.ApiException as err:
                self.refused.append(f"{time.monotonic():.1f} {name}: {err.status} {err.body}")
                continue
            # Cleanup only; the namespace goes with the cluster.
            with contextlib.suppress(client.ApiException):
                self._api.delete_namespaced_pod(name, self._namespace, grace_period_seconds=0)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, filter_modules: dict[str, bytes]
) -> Iterator[tuple[Replicas, Mesh]]:
    workdir = tmp_path_factory.mktemp("failover")
    with MeshCluster(workdir / "cluster", nodes=2) as cluster:
        kubeconfig = install_filterrelease(cluster)
        names = ("operator-a", "operator-b")
        procs = {
            n: OperatorProcess(kubeconfig, workdir / f"{n}.log", resync_seconds=30) for n in names
        }
        balancer = TcpBalancer(
            find_envoy(), [p.webhook_port for p in procs.values()], workdir / "balancer"
        )
        with balancer:
            for name, proc in procs.items():
                proc.extra_env = {
                    "FILTERRELEASE_PROMETHEUS_URL": cluster.mesh.prometheus.url,
                    "FILTERRELEASE_PROMETHEUS_SCRAPE_SECONDS": "1",
                    "FILTERRELEASE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
                    "FILTERRELEASE_POD_NAME": name,
                    # Both replicas behind the balancer's one address, as behind a Service.
                    "FILTERRELEASE_WEBHOOK_URL": f"https://127.0.0.1:{balancer.port}",
                }
            found = Replicas(cluster, balancer, procs)
            try:
                for proc in procs.values():
                    proc.start()
                cluster.kubectl("create", "namespace", NS)
                cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
                web = meshed_deployment("web", NS, PODS)
                cluster.kubectl("apply", "-f", "-", input=json.dumps(web))
                poll(lambda: len(serving(cluster)) == PODS or None, timeout=120,
                     what=f"{PODS} sidecars serving")  # fmt: skip
                mesh = Mesh(cluster, procs[found.leader()])
                wasm = with_custom_section(filter_modules["security-headers"], "e2e", b"ha")
                digest = publish(cluster.registry.host, "filters/ha", "e2e", wasm, "oci-wasm")
                mesh.modules["security-headers"] = (
                    f"oci://{cluster.registry.host}/filters/ha@{digest}"
                )
                yield found, mesh
            finally:
                for name, proc in procs.items():
                    print(f"\n--- {name} ---\n{proc.log_tail(40)}")
                    proc.stop()


def readiness(proc: OperatorProcess) -> str:
    return proc._get(f"http://127.0.0.1:{proc.health_port}/readyz") or ""


def test_the_follower_takes_over_a_canary_mid_step_and_no_pod_creation_is_refused(
    replicas: tuple[Replicas, Mesh],
) -> None:
    ha, mesh = replicas
    leader = ha.leader()
    follower = next(n for n in ha.by_name if n != leader)
    # Both replicas serve: each is ready, one as the leader, one as a follower.
    assert readiness(ha.by_name[leader]).startswith("ready (leader)")
    poll(lambda: readiness(ha.by_name[follower]).startswith("ready (follower)") or None,
         timeout=30, what="the follower ready")  # fmt: skip
    poll(lambda: ha.balancer.healthy_backends() == set(ha.balancer.backends) or None,
         timeout=30, what="both webhooks healthy behind the balancer",
         on_timeout=ha.balancer.describe)  # fmt: skip

    install_v1(mesh)
    steps = [
        {"setWeight": 25},
        {"pause": {"duration": "3s"}},
        {"setWeight": 50},
        {"pause": {"duration": "3s"}},
        {"setWeight": 75},
        {"pause": {"duration": "3s"}},
    ]
    with PodChurn(ha.cluster.admin_kubeconfig, NS) as churn, Traffic(mesh) as traffic:
        t0 = time.monotonic()
        release(mesh, "security-headers", {"version": "v2"}, steps=steps)
        # A step passed and the next one runs: kill -9 the leader right there.
        poll(lambda: int((status(mesh).get("rollout") or {}).get("step", 0)) >= 2 or None,
             timeout=120, what="the rollout past its second step",
             on_timeout=lambda: brief(mesh))  # fmt: skip
        step_at_kill = int((status(mesh).get("rollout") or {}).get("step", 0))
        killed_at = time.monotonic()
        ha.by_name[leader].kill()
        poll(lambda: ha.holder() == follower or None, timeout=LEASE_SECONDS * 3,
             what=f"{follower} holding the Lease", interval=0.1)  # fmt: skip
        takeover = time.monotonic() - killed_at
        mesh.operator = ha.by_name[follower]

        def promoted() -> bool:
            current = status(mesh)
            return current.get("phase") == "Healthy" and (current.get("stable") or {}).get(
                "pluginConfig"
            ) == {"version": "v2"}

        poll(promoted, timeout=240, what="v2 promoted by the new leader",
             on_timeout=lambda: brief(mesh))  # fmt: skip
        # The killed replica comes back (its pod restarted) and follows.
        ha.by_name[leader].start()
        poll(lambda: readiness(ha.by_name[leader]).startswith("ready (follower)") or None,
             timeout=60, what="the restarted replica following")  # fmt: skip
        samples = traffic.since(t0)
    print(
        f"\nfailover: Lease taken over {takeover:.1f} s after the SIGKILL (at step "
        f"{step_at_kill}); {churn.created} pods created, {len(churn.refused)} refused; "
        f"{len(samples)} responses sampled"
    )
    assert not churn.refused, churn.refused[:5]
    assert churn.created >= 50  # the churn really ran throughout
    # The follower can only take over once the leader's last renewal has expired, which it
    # sees at its next retry: at most a lease duration and two retry periods after the kill
    # (plus the API calls' own time on a busy machine).
    assert takeover <= LEASE_SECONDS + 2 * RETRY_SECONDS + 5, takeover
    passed = [m.split(":")[0] for m in events(mesh, "StepPassed")]
    assert sorted(passed) == sorted(set(passed)), passed  # no step passed twice
    assert set(passed) <= {f"step {i}/{len(steps)}" for i in range(1, len(steps) + 1)}
    bad = [s for s in samples if s[2] != 200 or len(versions_of(s[3])) != 1]
    assert not bad, bad[:10]
    final = status(mesh)
    assert final["history"][0]["outcome"] == "Promoted"


def test_a_clean_stop_hands_the_lease_over_at_once(replicas: tuple[Replicas, Mesh]) -> None:
    ha, _ = replicas
    leader = ha.leader()
    follower = next(n for n in ha.by_name if n != leader)
    poll(lambda: readiness(ha.by_name[follower]).startswith("ready (follower)") or None,
         timeout=60, what="the follower ready")  # fmt: skip
    stopped_at = time.monotonic()
    ha.by_name[leader].stop()  # SIGTERM, as a rolling update or a drained node does
    poll(lambda: ha.holder() == follower or None, timeout=LEASE_SECONDS * 2,
         what=f"{follower} holding the Lease", interval=0.1)  # fmt: skip
    handover = time.monotonic() - stopped_at
    ha.by_name[leader].start()
    print(f"\nclean stop: Lease handed over {handover:.1f} s after SIGTERM")
    # Released, not expired: the follower takes it at its next retry, well within the
    # lease duration it would otherwise have waited.
    assert handover < LEASE_SECONDS - RETRY_SECONDS, handover


def test_only_the_leader_writes(replicas: tuple[Replicas, Mesh]) -> None:
    ha, _ = replicas
    leader = ha.leader()
    follower = ha.by_name[next(n for n in ha.by_name if n != leader)]
    assert follower.metric("filterrelease_leader") == 0
    assert ha.by_name[leader].metric("filterrelease_leader") == 1
    # The follower reconciled nothing: no per-release series, no WasmPlugin writes.
    assert "filterrelease_release_phase{" not in follower.metrics()
    assert follower.metric("filterrelease_wasmplugin_writes_total", outcome="created") == 0
    assert follower.metric("filterrelease_wasmplugin_writes_total", outcome="updated") == 0
    assert "filterrelease_build_info{" in follower.metrics()
