"""One meshed pod's sidecar: its istio-agent state and its Envoy.

A thread per sidecar owns everything of the pod: it converts the resources istiod would send
(fetching modules through the pod's own module cache, as each pod's istio-agent does), writes
the ECDS and LDS files atomically (ECDS first, so a listener never names a filter whose config
is not there yet), starts Envoy on the first configuration and restarts it if it dies. Envoy
runs with PR_SET_PDEATHSIG (localcluster.processes.ManagedProcess) started from this thread,
so it cannot outlive the agent.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localcluster.network import free_ports
from localcluster.processes import ManagedProcess
from meshagent import envoyconfig, fetch, layout
from meshagent.istiod import RemoteWasm
from meshagent.metrics import PodMetrics

DRAIN_TIME_S = 2
_STOP_GRACE_S = 5.0
_RESTART_BACKOFF_S = 1.0
_POLL_S = 0.05
_NOT_READY_WARNING_S = 30.0
_IDLE_CHECK_S = 0.5  # how often a serving sidecar checks that its Envoy lives
# A fault for tests: a pod annotated with this many seconds has its agent take that long before
# each module conversion (a slow registry, a large module on a busy node), so its proxy runs a
# new version that much later than the others.
SLOW_LOAD_ANNOTATION = "meshagent.testbed/slow-load-seconds"
# Envoy stat names (dotted) passed through: Wasm VMs, the RBAC stand-ins, ECDS and LDS updates.
_ENVOY_STATS_FILTER = urllib.parse.quote(
    "wasm|rbac|extension_config_discovery|listener_manager\\.lds"
)


# The ports handed to this agent's sidecars and not yet given back: the kernel may offer a port
# again as soon as its probe socket closes, and two sidecars binding the same fixed port (the
# admin port is fixed for a sidecar's life) would leave one restarting forever.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A free loopback port no other sidecar of this agent holds."""
    while True:
        # Below the ephemeral range, so no outgoing connection takes it before Envoy binds it.
        [port] = free_ports(1)
        with _HANDED_OUT_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def give_back(*ports: int) -> None:
    with _HANDED_OUT_LOCK:
        _HANDED_OUT.difference_update(ports)


def _file_name(resource_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", resource_name) + ".json"


class Sidecar:
    def __init__(
        self,
        *,
        namespace: str,
        pod: str,
        uid: str,
        workdir: Path,
        envoy: Path,
        upstream_port: int,
        inbound_port: int,
        service_cluster: str,
    ) -> None:
        self.namespace = namespace
        self.pod = pod
        self.uid = uid
        self.dir = layout.pod_dir(workdir, namespace, pod)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "ecds").mkdir(exist_ok=True)
        self.envoy = envoy
        self.upstream_port = upstream_port
        self.inbound_port = inbound_port
        self.service_cluster = service_cluster
        self.metrics = PodMetrics()
        self.log = fetch.AgentLog(self.dir / layout.AGENT_LOG)
        self.cache = fetch.ModuleCache(workdir / layout.MODULES_DIR, self.metrics, self.log)
        self.port = free_port()
        # The admin port stays the same across Envoy restarts: kwok's PortForward for the pod
        # (`kubectl port-forward <pod> 15000`) names it once.
        self.admin_port = free_port()
        self._cond = threading.Condition()
        self._desired: tuple[RemoteWasm, ...] | None = None
        self._stopping = False
        self._converged: tuple[RemoteWasm, ...] | None = None
        self._applied: dict[str, RemoteWasm] = {}
        self._ecds: dict[str, dict[str, Any]] = {}
        self._lds_names: tuple[str, ...] | None = None
        self._version = 0
        self._proc: ManagedProcess | None = None
        self._proc_lock = threading.Lock()  # start vs. stop of Envoy from another thread
        self._admin_url: str | None = None
        self._ready = False
        self._died_at = 0.0
        self._pod_json = ""
        self._slow_load_s = 0.0
        self._started_at = 0.0
        self._warned_not_ready = False
        self._thread = threading.Thread(
            target=self._run, name=f"sidecar-{namespace}/{pod}", daemon=True
        )

    # -- control (any thread) --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        """The running Envoy's pid (None before it starts and after it stops)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.alive() else None

    def start(self) -> None:
        self.log.info(f"starting sidecar for pod {self.namespace}/{self.pod}", scope="default")
        layout.write_atomically(self.dir / layout.ADMIN_PORT_FILE, f"{self.admin_port}\n")
        self._thread.start()

    def update(self, desired: Sequence[RemoteWasm]) -> None:
        """The resources istiod would now send this pod, in chain order."""
        with self._cond:
            self._desired = tuple(desired)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def write_pod(self, pod: Mapping[str, Any]) -> None:
        """Keep `<pod dir>/pod.json` (the pod object: labels, owners) current, for readers that
        derive a workload's identity from it. Rewritten only when it changes."""
        meta = {
            k: v
            for k, v in (pod.get("metadata") or {}).items()
            if k not in ("managedFields", "resourceVersion")
        }
        slow = (meta.get("annotations") or {}).get(SLOW_LOAD_ANNOTATION, "")
        try:
            self._slow_load_s = max(0.0, float(slow)) if slow else 0.0
        except ValueError:
            self._slow_load_s = 0.0
        text = json.dumps(
            {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod.get("spec") or {}},
            indent=1,
            sort_keys=True,
        )
        if text != self._pod_json:
            layout.write_atomically(self.dir / layout.POD_JSON, text)
            self._pod_json = text

    def force_stop(self) -> None:
        """Stop Envoy from the calling thread: for when the sidecar's thread is stuck (in a
        slow fetch, say) and stop() + join() ran out of time."""
        with self._cond:
            self._stopping = True
        self._stop_envoy()

    def finished(self) -> bool:
        """The sidecar's thread has ended (its Envoy is stopped)."""
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def envoy_stats(self) -> str:
        """Envoy's own Wasm/RBAC/ECDS/LDS stats in Prometheus format ("" when unavailable)."""
        admin = self._admin_url
        if admin is None or not self._ready:
            return ""
        try:
            return self._admin_get(f"/stats/prometheus?usedonly&filter={_ENVOY_STATS_FILTER}")
        except (OSError, urllib.error.URLError):
            return ""

    # -- the sidecar thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    idle = _IDLE_CHECK_S if self._settled() else _POLL_S
                    self._cond.wait_for(self._has_work, timeout=idle)
                    if self._stopping:
                        return
                    desired = self._desired
                if desired is not None and desired != self._converged:
                    self._converge(desired)
                if self._converged is not None and not self._stopping:
                    self._supervise()
        except Exception as exc:  # keep the pod's trace; the agent carries on
            self.log.error(f"sidecar failed: {exc!r}", scope="default")
            raise
        finally:
            self._stop_envoy()
            give_back(self.port, self.admin_port)

    def _has_work(self) -> bool:
        return self._stopping or (self._desired is not None and self._desired != self._converged)

    def _settled(self) -> bool:
        """Nothing to poll for: Envoy serves (or there is no configuration yet)."""
        return self._converged is None or (self._ready and self._proc is not None)

    def _converge(self, desired: tuple[RemoteWasm, ...]) -> None:
        names = tuple(r.resource_name for r in desired)
        for resource in desired:
            name = resource.resource_name
            if self._applied.get(name) == resource:
                continue
            if self._slow_load_s and not self._slowed():
                return  # stopping
            typed = fetch.convert(resource, self.cache)
            self._applied[name] = resource
            if typed != self._ecds.get(name):
                self._version += 1
                response = envoyconfig.ecds_file(name, typed, str(self._version))
                layout.write_atomically(self._ecds_path(name), json.dumps(response, indent=1))
                self._ecds[name] = typed
        for gone in set(self._applied) - set(names):
            # A filter that comes back is converted again, as a new ECDS push would be.
            del self._applied[gone]
            self._ecds.pop(gone, None)
        if names != self._lds_names:
            self._version += 1
            listener = envoyconfig.listener(
                port=self.port,
                cluster_port=self.inbound_port,
                filters=[(name, self._ecds_path(name)) for name in names],
                access_log=self.dir / layout.ACCESS_LOG,
            )
            lds = envoyconfig.lds_file(listener, str(self._version))
            layout.write_atomically(self.dir / "lds.json", json.dumps(lds, indent=1))
            self._lds_names = names
        self._converged = desired

    def _slowed(self) -> bool:
        """Wait out the pod's slow-load fault; False when the sidecar stops meanwhile."""
        self.log.info(f"slow load: waiting {self._slow_load_s:g}s before converting", scope="wasm")
        with self._cond:
            return not self._cond.wait_for(lambda: self._stopping, timeout=self._slow_load_s)

    def _ecds_path(self, name: str) -> Path:
        return self.dir / "ecds" / _file_name(name)

    def _supervise(self) -> None:
        """Start Envoy if needed, notice when it serves, restart it if it died."""
        proc = self._proc
        if proc is not None and not proc.alive():
            self.log.error(f"{proc.describe_exit()}; restarting Envoy", scope="envoy")
            self._mark_down()
            self._proc = None
            self._died_at = time.monotonic()
            return
        if proc is None:
            if time.monotonic() - self._died_at < _RESTART_BACKOFF_S:
                return
            self._start_envoy()
            return
        if not self._ready and not self._warned_not_ready:
            waited = time.monotonic() - self._started_at
            if waited > _NOT_READY_WARNING_S:
                self._warned_not_ready = True
                self.log.warn(
                    f"Envoy proxy is NOT ready after {waited:.0f}s: no listener "
                    f"{envoyconfig.LISTENER_NAME} on port {self.port} (see {layout.ENVOY_LOG})",
                    scope="default",
                )
        if not self._ready and self._serving():
            self._ready = True
            layout.write_atomically(self.dir / layout.PORT_FILE, f"{self.port}\n")
            self.metrics.set("meshagent_sidecar_up", 1)
            self.log.info(
                f"Envoy proxy is ready, inbound listener on 127.0.0.1:{self.port}", scope="default"
            )

    def _start_envoy(self) -> None:
        bootstrap = envoyconfig.bootstrap(
            upstream_port=self.upstream_port,
            lds_path=self.dir / "lds.json",
            cluster_port=self.inbound_port,
            admin_port=self.admin_port,
        )
        bootstrap_path = self.dir / "bootstrap.json"
        layout.write_atomically(bootstrap_path, json.dumps(bootstrap, indent=1))
        admin_path = self.dir / "admin-address"
        admin_path.unlink(missing_ok=True)
        self._admin_url = None
        domain = f"{self.namespace}.svc.cluster.local"
        argv = [
            str(self.envoy),
            "-c", str(bootstrap_path),
            "--service-node", f"sidecar~127.0.0.1~{self.pod}.{self.namespace}~{domain}",
            "--service-cluster", self.service_cluster,
            "--concurrency", "1",
            "--log-level", "info",
            "--admin-address-path", str(admin_path),
            "--disable-hot-restart",
            "--drain-time-s", str(DRAIN_TIME_S),
            "--drain-strategy", "immediate",
            "--file-flush-interval-msec", "200",
        ]  # fmt: skip
        with self._proc_lock:
            if self._stopping:
                return
            self._started_at = time.monotonic()
            self._warned_not_ready = False
            self._proc = ManagedProcess(
                f"envoy {self.namespace}/{self.pod}",
                argv,
                self.dir / layout.ENVOY_LOG,
                cwd=self.dir,
            )
        self.log.info(f"Envoy command: {' '.join(argv)}", scope="default")

    def _serving(self) -> bool:
        if self._admin_url is None:
            try:
                address = (self.dir / "admin-address").read_text().strip()
            except OSError:
                return False
            if not address:
                return False
            self._admin_url = f"http://{address}"
        try:
            if self._admin_get("/ready", timeout=1).strip() != "LIVE":
                return False
            listeners = json.loads(self._admin_get("/listeners?format=json", timeout=1))
        except (OSError, ValueError, urllib.error.URLError):
            return False
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == envoyconfig.LISTENER_NAME:
                port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
                return bool(port == self.port)
        return False

    def _admin_get(self, path: str, timeout: float = 2.0) -> str:
        assert self._admin_url is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self._admin_url + path, timeout=timeout) as resp:
            body: bytes = resp.read()
        return body.decode()

    def _mark_down(self) -> None:
        self._ready = False
        self.metrics.set("meshagent_sidecar_up", 0)
        (self.dir / layout.PORT_FILE).unlink(missing_ok=True)

    def _stop_envoy(self) -> None:
        self._mark_down()
        with self._proc_lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.stop(_STOP_GRACE_S)
            self.log.info(f"Envoy stopped ({proc.describe_exit()})", scope="default")
