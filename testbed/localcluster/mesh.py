"""The data plane of the local cluster, started and stopped as one: the mesh agent (istiod's and
istio-agent's jobs, real Envoy sidecars), the Istio metrics exporter, the istio-proxy pod logs and
a real Prometheus scraping it all.

Usually through MeshCluster, which starts it with the control plane:

    with MeshCluster(workdir) as cluster:
        cluster.mesh.prometheus.query("sum by (pod, response_code) (istio_requests_total)")

or by hand on a cluster started with the kwok Logs and PortForward configuration:

    kwok = mesh_kwok_config(workdir)                     # before the cluster starts
    with LocalCluster(workdir / "cluster", kwok_configs=[kwok]) as cluster:
        install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
        install_mesh_crds(cluster)
        with MeshStack(cluster, workdir / "mesh") as mesh:
            ...
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from localcluster.cluster import LocalCluster
from localcluster.errors import ClusterStartError
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.processes import StartStop
from localcluster.prometheus import Prometheus, file_sd_job
from meshagent.agent import MeshAgent
from meshtraffic.exporter import MeshMetricsExporter
from meshtraffic.podforwards import PodForwards, portforward_crd_manifest
from meshtraffic.podlogs import (
    CONTAINER,
    KWOK_CONFIG_YAML,
    PodLogWriter,
    kubectl_registrar,
    logs_crd_manifest,
)

KWOK_CONFIG_NAME = "kwok-mesh-logs.yaml"


def mesh_kwok_config(workdir: Path) -> Path:
    """kwok's configuration for serving `kubectl logs -c istio-proxy` from per-pod Logs objects;
    pass it to LocalCluster(kwok_configs=[...]): kwok reads its configuration only at start."""
    path = workdir / KWOK_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KWOK_CONFIG_YAML)
    return path


def meshed_deployment(
    name: str, namespace: str, replicas: int, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Deployment whose pods the data plane serves: `app: <name>` plus `labels` on its pods,
    and the istio-proxy container declared in the template itself (there is no injector), as
    an injected pod would have it."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "app",
                            "image": f"registry.local/{name}:1",
                            "ports": [{"containerPort": 8080}],
                        },
                        {"name": CONTAINER, "image": "registry.local/proxyv2:1"},
                    ],
                },
            },
        },
    }


def install_mesh_crds(cluster: LocalCluster) -> None:
    """kwok's Logs and PortForward CRDs: the pod log writer and PodForwards create one object
    of each per meshed pod."""
    for crd in (logs_crd_manifest(), portforward_crd_manifest()):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")


class MeshStack(StartStop):
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *,
        istio_version: str = DEFAULT_ISTIO_VERSION,
        poll_interval: float = 0.2,
        prometheus_binary: Path | None = None,
    ) -> None:
        self.workdir = workdir
        agent_dir = workdir / "agent"
        self.agent = MeshAgent(agent_dir, cluster.admin_kubeconfig, istio_version=istio_version)
        self.exporter = MeshMetricsExporter(
            agent_dir,
            workdir / "targets.json",
            agent_targets_file=workdir / "agent-targets.json",
            poll_interval=poll_interval,
        )
        self.logs = PodLogWriter(
            agent_dir, register=kubectl_registrar(cluster.kubectl), poll_interval=poll_interval
        )
        self.forwards = PodForwards(agent_dir, cluster.kubectl, poll_interval=poll_interval)
        self.prometheus = Prometheus(
            workdir / "prometheus",
            self.exporter.targets_file,
            extra_jobs=[
                file_sd_job("meshagent", workdir / "agent-targets.json", honor_labels=True)
            ],
            binary=prometheus_binary,
        )
        self._parts: list[StartStop] = [
            self.agent,
            self.exporter,
            self.logs,
            self.forwards,
            self.prometheus,
        ]
        self._started: list[StartStop] = []

    @property
    def agent_dir(self) -> Path:
        return self.agent.workdir

    def dead(self) -> list[str]:
        """Names of started processes of the data plane that have exited (Prometheus; a dead
        Envoy is the agent's to restart)."""
        if self.prometheus in self._started and not self.prometheus.process.alive():
            return ["prometheus"]
        return []

    def pids(self) -> dict[str, int]:
        """Process name -> pid of the data plane's processes running now: Prometheus and each
        sidecar's Envoy (`envoy <namespace>/<pod>`). The agent, exporter and pod log writer
        are threads of this process."""
        out: dict[str, int] = {}
        if self.prometheus in self._started and self.prometheus.process.alive():
            out["prometheus"] = self.prometheus.process.pid
        for (namespace, pod), sidecar in sorted(self.agent.sidecars().items()):
            pid = sidecar.pid
            if pid is not None:
                out[f"envoy {namespace}/{pod}"] = pid
        return out

    def start(self) -> None:
        try:
            for part in self._parts:
                # Listed before it starts: a part that fails half-way has its own stop() run.
                self._started.append(part)
                part.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the parts in reverse start order (Prometheus first, the agent and its Envoys
        last); a part that fails to stop does not keep the others running. Idempotent."""
        failure: BaseException | None = None
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class MeshCluster(LocalCluster):
    """A LocalCluster that also runs the data plane (MeshStack) and stops it first.

    On start, after the control plane is ready: Istio's CRDs of `istio_version` (the agent
    watches WasmPlugins), kwok's Logs and PortForward CRDs, then the MeshStack under
    `<workdir>/mesh/`, exposed as `cluster.mesh`. kwok gets the Logs and PortForward
    configuration (`kubectl logs -c istio-proxy`, `kubectl port-forward <pod> 15000`) at its
    start. A failure anywhere stops everything started so far, as LocalCluster does.

    A subclass here rather than a flag on LocalCluster: the data plane needs the mesh agent,
    the Envoy provider and the Kubernetes client, which a control plane alone does not.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        istio_version: str = DEFAULT_ISTIO_VERSION,
        poll_interval: float = 0.2,
        prometheus_binary: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(workdir, **kwargs)
        self.istio_version = istio_version
        self.mesh_workdir = self.workdir / "mesh"
        self.kwok_configs.append(self.mesh_workdir / KWOK_CONFIG_NAME)
        self._poll_interval = poll_interval
        self._prometheus_binary = prometheus_binary
        self._mesh: MeshStack | None = None

    @property
    def mesh(self) -> MeshStack:
        if self._mesh is None:
            raise RuntimeError("the cluster has not been started")
        return self._mesh

    @property
    def pids(self) -> dict[str, int]:
        """The control plane's processes (alive or not) and the data plane's running ones."""
        mesh = self._mesh.pids() if self._mesh is not None else {}
        return {**super().pids, **mesh}

    def dead_components(self) -> list[str]:
        mesh = self._mesh.dead() if self._mesh is not None else []
        return [*super().dead_components(), *mesh]

    def stop(self) -> None:
        """The data plane first (its Envoys and Prometheus), then the control plane."""
        try:
            if self._mesh is not None:
                self._mesh.stop()
        finally:
            super().stop()

    def _start(self, bin_dir: Path, deadline: float) -> None:
        # A reused workdir must not hand the new agent an old run's pod directories (their
        # `port` files would list sidecars that no longer exist).
        shutil.rmtree(self.mesh_workdir, ignore_errors=True)
        mesh_kwok_config(self.mesh_workdir)
        super()._start(bin_dir, deadline)
        t0 = time.monotonic()
        try:
            install_istio_crds(self, self.istio_version)
            install_mesh_crds(self)
            self._mesh = MeshStack(
                self,
                self.mesh_workdir,
                istio_version=self.istio_version,
                poll_interval=self._poll_interval,
                prometheus_binary=self._prometheus_binary,
            )
            self._mesh.start()
        except ClusterStartError:
            raise
        except Exception as exc:
            # One kind of error for "the cluster did not come up", whichever part failed
            # (a kubectl error, the agent's sync timeout...); start() then stops everything.
            raise ClusterStartError(f"the data plane did not start: {exc}") from exc
        print(
            f"localcluster: data plane up in {time.monotonic() - t0:.1f}s "
            f"(Istio {self.istio_version} CRDs, mesh agent, Prometheus at "
            f"{self._mesh.prometheus.url})",
            file=sys.stderr,
            flush=True,
        )
