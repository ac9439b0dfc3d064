"""The data plane of the local cluster, started and stopped as one: the mesh agent (istiod's and
istio-agent's jobs, real Envoy sidecars), the Istio metrics exporter, the istio-proxy pod logs and
a real Prometheus scraping it all.

    kwok = mesh_kwok_config(workdir)                     # before the cluster starts
    with LocalCluster(workdir / "cluster", kwok_configs=[kwok]) as cluster:
        install_mesh_crds(cluster)
        with MeshStack(cluster, workdir / "mesh") as mesh:
            mesh.prometheus.query("sum by (pod, response_code) (istio_requests_total)")
"""

from __future__ import annotations

import json
from pathlib import Path

from localcluster.cluster import LocalCluster
from localcluster.install import DEFAULT_ISTIO_VERSION
from localcluster.processes import StartStop
from localcluster.prometheus import Prometheus, file_sd_job
from meshagent.agent import MeshAgent
from meshtraffic.exporter import MeshMetricsExporter
from meshtraffic.podlogs import (
    KWOK_CONFIG_YAML,
    PodLogWriter,
    kubectl_registrar,
    logs_crd_manifest,
)


def mesh_kwok_config(workdir: Path) -> Path:
    """kwok's configuration for serving `kubectl logs -c istio-proxy` from per-pod Logs objects;
    pass it to LocalCluster(kwok_configs=[...]): kwok reads its configuration only at start."""
    path = workdir / "kwok-mesh-logs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KWOK_CONFIG_YAML)
    return path


def install_mesh_crds(cluster: LocalCluster) -> None:
    """kwok's Logs CRD, which the pod log writer creates one object of per meshed pod."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(logs_crd_manifest()))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/logs.kwok.x-k8s.io", "--timeout=30s"
    )


class MeshStack(StartStop):
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *,
        istio_version: str = DEFAULT_ISTIO_VERSION,
        poll_interval: float = 0.2,
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
        self.prometheus = Prometheus(
            workdir / "prometheus",
            self.exporter.targets_file,
            extra_jobs=[
                file_sd_job("meshagent", workdir / "agent-targets.json", honor_labels=True)
            ],
        )
        self._parts: list[StartStop] = [self.agent, self.exporter, self.logs, self.prometheus]
        self._started: list[StartStop] = []

    @property
    def agent_dir(self) -> Path:
        return self.agent.workdir

    def start(self) -> None:
        try:
            for part in self._parts:
                part.start()
                self._started.append(part)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self._started:
            self._started.pop().stop()
