"""MeshAgent: istiod's WasmPlugin selection and istio-agent's module fetching for the pods of
a local cluster, each meshed pod served by a real Envoy on loopback.

    agent = MeshAgent(workdir, cluster.admin_kubeconfig)
    agent.start()            # watches pods, namespaces and WasmPlugins; returns when synced
    port = layout.sidecar_port(workdir, "ns", "pod")   # once the pod's sidecar serves
    agent.stop()             # stops every Envoy

Which pods get a sidecar: pods of namespaces labelled istio-injection=enabled, unless the pod
says sidecar.istio.io/inject: "false" (label or annotation), decided once per pod (by uid)
when it is first seen Running: like injection at admission, relabelling a namespace later
does not add or remove sidecars of existing pods. A sidecar starts when its pod is Running
and stops when the pod is gone (or replaced by one of the same name).

Files and metrics: meshagent/layout.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localcluster.processes import StartStop
from meshagent import layout
from meshagent.envoybinary import find_envoy
from meshagent.fetch import AgentLog
from meshagent.istiod import RemoteWasm, pull_secret_name, remote_wasm
from meshagent.kube import Cluster
from meshagent.metrics import MetricsServer, render, xds_rejects
from meshagent.select import ROOT_NAMESPACE, WasmPlugin, select_plugins
from meshagent.sidecar import Sidecar
from meshagent.upstream import Upstream

INJECTION_LABEL = "istio-injection"
INJECT_OVERRIDE = "sidecar.istio.io/inject"
_SYNC_TIMEOUT_S = 30.0
_JOIN_TIMEOUT_S = 15.0


def _version_at_least(version: str, wanted: tuple[int, int]) -> bool:
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return tuple(parts) >= wanted


def inbound_port(pod: Mapping[str, Any]) -> int:
    """The port of the inbound listener `match.ports` is compared with: the pod's first
    declared containerPort (0 when it declares none, which no port selector matches)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("containerPort"):
                return int(port["containerPort"])
    return 0


class MeshAgent(StartStop):
    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        envoy_binary: Path | None = None,
        *,
        root_namespace: str = ROOT_NAMESPACE,
        istio_version: str = "1.30",
        resync_seconds: float = 5.0,
    ) -> None:
        """`istio_version` picks the names istiod gives filters (1.30 translates WasmPlugins
        into TrafficExtensions); `resync_seconds` is how often everything is re-evaluated
        without an event (that is how a changed pull secret is noticed)."""
        self.workdir = Path(workdir).resolve()
        self.kubeconfig = Path(kubeconfig)
        self.envoy = Path(envoy_binary) if envoy_binary is not None else find_envoy()
        self.root_namespace = root_namespace
        self.translated = _version_at_least(istio_version, (1, 30))
        self.resync_seconds = resync_seconds
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sidecars: dict[tuple[str, str], Sidecar] = {}
        self._retired: list[Sidecar] = []
        self._injected: dict[str, bool] = {}  # pod uid -> gets a sidecar
        self._upstream: Upstream | None = None
        self._metrics: MetricsServer | None = None
        self._cluster: Cluster | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self.log = AgentLog(self.workdir / layout.AGENT_LOG)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("a MeshAgent can be started only once")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._upstream = Upstream()
        self._upstream.start()
        layout.write_atomically(
            self.workdir / layout.UPSTREAM_PORT_FILE, f"{self._upstream.port}\n"
        )
        self._cluster = Cluster(self.kubeconfig, self._changed.set, self._warn)
        self._cluster.start()
        self._thread = threading.Thread(target=self._loop, name="meshagent-reconcile", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        if not self._cluster.wait_synced(_SYNC_TIMEOUT_S):
            raise TimeoutError(
                "mesh agent: no list of pods, namespaces and WasmPlugins after "
                f"{_SYNC_TIMEOUT_S:g}s (see {self.log.path})"
            )
        self._metrics = MetricsServer(self.metrics_text)
        self._metrics.start()
        layout.write_atomically(
            self.workdir / layout.AGENT_METRICS_PORT_FILE, f"{self._metrics.port}\n"
        )
        self.log.info(
            f"mesh agent started (cluster state listed in {time.monotonic() - t0:.2f}s); "
            f"workdir {self.workdir}",
            scope="default",
        )

    def stop(self) -> None:
        """Stop watching, stop every sidecar's Envoy, close the servers. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
        if self._cluster is not None:
            self._cluster.stop()
        with self._lock:
            sidecars = [*self._sidecars.values(), *self._retired]
            self._sidecars.clear()
            self._retired.clear()
        for sidecar in sidecars:
            sidecar.stop()
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for sidecar in sidecars:
            sidecar.join(max(0.0, deadline - time.monotonic()))
            if not sidecar.finished():
                self.log.warn(
                    f"sidecar {sidecar.namespace}/{sidecar.pod} is stuck: killing its Envoy",
                    scope="default",
                )
                sidecar.force_stop()
        if self._metrics is not None:
            (self.workdir / layout.AGENT_METRICS_PORT_FILE).unlink(missing_ok=True)
            self._metrics.stop()
        if self._upstream is not None:
            self._upstream.stop()
        self.log.info("mesh agent stopped", scope="default")

    def __enter__(self) -> MeshAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------

    def sidecars(self) -> dict[tuple[str, str], Sidecar]:
        with self._lock:
            return dict(self._sidecars)

    def metrics_text(self) -> str:
        """The agent-wide exposition: every sidecar's series, and istiod's count of rejected
        pushes (pilot_total_xds_rejects) from what each Envoy rejected."""
        pods = [
            (sc.namespace, sc.pod, sc.metrics, sc.envoy_stats()) for sc in self.sidecars().values()
        ]
        return render(pods) + xds_rejects([envoy for *_, envoy in pods])

    # -- reconcile -------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        self.log.warn(message, scope="default")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(self.resync_seconds)
            if self._stopping.is_set():
                return
            self._changed.clear()
            try:
                self._reconcile()
            except Exception as exc:  # one bad pass must not end the agent
                self.log.error(f"reconcile failed: {exc!r}", scope="default")

    def _meshed(
        self, pod: Mapping[str, Any], injected_namespaces: set[str], known_namespaces: set[str]
    ) -> bool:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if uid in self._injected:
            return self._injected[uid]
        if (pod.get("status") or {}).get("phase") != "Running":
            return False
        if meta.get("namespace") not in known_namespaces:
            # The namespace's watch event has not arrived yet: decide on a later pass, never
            # cache "not meshed" for a pod whose namespace may well be labelled for injection.
            return False
        opted_out = "false" in (
            (meta.get("labels") or {}).get(INJECT_OVERRIDE),
            (meta.get("annotations") or {}).get(INJECT_OVERRIDE),
        )
        decision = (
            meta.get("namespace") in injected_namespaces
            and not opted_out
            and not (pod.get("spec") or {}).get("hostNetwork")
        )
        self._injected[uid] = decision
        return decision

    def _reconcile(self) -> None:
        cluster = self._cluster
        assert cluster is not None
        if not cluster.synced():
            return  # decisions need all three lists; the sync itself triggers another pass
        namespaces = list(cluster.namespaces.items())
        known_namespaces = {str(ns["metadata"]["name"]) for ns in namespaces}
        injected_namespaces = {
            str(ns["metadata"]["name"])
            for ns in namespaces
            if (ns["metadata"].get("labels") or {}).get(INJECTION_LABEL) == "enabled"
        }
        plugins = [WasmPlugin.from_object(obj) for obj in cluster.wasmplugins.items()]
        pods: dict[tuple[str, str], Mapping[str, Any]] = {}
        live_uids: set[str] = set()
        for obj in cluster.pods.items():
            meta = obj["metadata"]
            live_uids.add(str(meta.get("uid", "")))
            phase = (obj.get("status") or {}).get("phase")
            if phase == "Running" and self._meshed(obj, injected_namespaces, known_namespaces):
                pods[(str(meta["namespace"]), str(meta["name"]))] = obj
        for uid in set(self._injected) - live_uids:
            del self._injected[uid]

        secrets: dict[tuple[str, str], bytes | None] = {}

        def secret_for(plugin: WasmPlugin) -> bytes | None:
            name = pull_secret_name(plugin)
            if name is None:
                return None
            key = (plugin.namespace, name)
            if key not in secrets:
                secrets[key] = cluster.docker_config(*key)
            return secrets[key]

        with self._lock:
            for key, sidecar in list(self._sidecars.items()):
                current = pods.get(key)
                if current is None or str(current["metadata"].get("uid")) != sidecar.uid:
                    del self._sidecars[key]
                    sidecar.stop()
                    self._retired.append(sidecar)
                    self.log.info(
                        f"pod {key[0]}/{key[1]} is gone: stopping its sidecar", scope="default"
                    )
            self._retired = [sc for sc in self._retired if not sc.finished()]
        for key, pod in pods.items():
            namespace, name = key
            labels: Mapping[str, str] = pod["metadata"].get("labels") or {}
            port = inbound_port(pod)
            selected = select_plugins(
                plugins,
                namespace=namespace,
                labels=labels,
                listener_port=port,
                root_namespace=self.root_namespace,
                translated=self.translated,
            )
            resources: list[RemoteWasm] = [
                remote_wasm(p, translated=self.translated, pull_secret=secret_for(p))
                for p in selected
            ]
            with self._lock:
                existing = self._sidecars.get(key)
                if existing is None:
                    existing = self._new_sidecar(namespace, name, pod, port, labels)
            existing.write_pod(pod)
            existing.update(resources)

    def _new_sidecar(
        self,
        namespace: str,
        name: str,
        pod: Mapping[str, Any],
        port: int,
        labels: Mapping[str, str],
    ) -> Sidecar:
        assert self._upstream is not None
        sidecar = Sidecar(
            namespace=namespace,
            pod=name,
            uid=str(pod["metadata"].get("uid", "")),
            workdir=self.workdir,
            envoy=self.envoy,
            upstream_port=self._upstream.port,
            inbound_port=port,
            service_cluster=f"{labels.get('app', name)}.{namespace}",
        )
        self._sidecars[(namespace, name)] = sidecar
        # pod.json before the sidecar can serve (and write its port file): a reader that finds
        # the port finds the pod's identity too, however late this thread gets to run again.
        sidecar.write_pod(pod)
        sidecar.start()
        self.log.info(f"pod {namespace}/{name} is Running: starting its sidecar", scope="default")
        return sidecar
