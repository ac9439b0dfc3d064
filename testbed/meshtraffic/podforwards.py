"""`kubectl port-forward <pod> 15000`: the API server's pods/portforward reaches the sidecar's
real Envoy admin, as it reaches istio-proxy's admin port (15000) in a real pod.

The API server sends a port-forward to the pod's node, here kwok's kubelet-like server. kwok
serves it from a `PortForward` object named like the pod (kwok.x-k8s.io/v1alpha1, namespaced,
watched when kwok runs with PortForward in enableCRDs: podlogs.KWOK_CONFIG_YAML): its forwards
map pod ports to an address kwok dials. PodForwards keeps one object per meshed pod whose
port 15000 leads to that pod's Envoy admin on loopback (the `admin-port` file the sidecar
writes), and rewrites it when a pod of the same name comes back with a new sidecar.

Nothing else is forwarded: a pod without a sidecar has no PortForward, so a port-forward to it
fails the way one to a pod without an admin port would.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster.kwok import kwok_crd
from localcluster.processes import StartStop
from meshagent.layout import ADMIN_PORT_FILE
from meshtraffic.podfiles import read_port, walk_pod_dirs

PORTFORWARD_API_VERSION = "kwok.x-k8s.io/v1alpha1"
ISTIO_ADMIN_PORT = 15000  # istio-proxy's Envoy admin port

# A LocalCluster-style `kubectl(*args, input=, check=)`.
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def portforward_crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition of kwok's namespaced `PortForward`, with the fields kwok
    reads (spec.forwards[].ports/target.address/target.port/command)."""
    forward = {
        "type": "object",
        "properties": {
            "ports": {"type": "array", "items": {"type": "integer", "format": "int32"}},
            "target": {
                "type": "object",
                "required": ["address", "port"],
                "properties": {
                    "address": {"type": "string", "minLength": 1},
                    "port": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 65535},
                },
            },
            "command": {"type": "array", "items": {"type": "string"}},
        },
    }
    spec = {
        "type": "object",
        "required": ["forwards"],
        "properties": {"forwards": {"type": "array", "items": forward}},
    }
    return kwok_crd("PortForward", "portforwards", "portforward", spec)


def portforward_manifest(namespace: str, pod: str, admin_port: int) -> dict[str, Any]:
    """The PortForward of one pod: its port 15000 is the sidecar Envoy's admin on loopback.
    No owner reference, like the Logs objects: the namespace's deletion removes it."""
    return {
        "apiVersion": PORTFORWARD_API_VERSION,
        "kind": "PortForward",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "meshtraffic"},
        },
        "spec": {
            "forwards": [
                {
                    "ports": [ISTIO_ADMIN_PORT],
                    "target": {"address": "127.0.0.1", "port": admin_port},
                }
            ]
        },
    }


class PodForwards(StartStop):
    """Keeps a PortForward per meshed pod under `workdir` (the agent's) current, through a
    LocalCluster-style `kubectl`. Polls every `poll_interval` s; a failed apply (namespace
    gone, CRD not there yet) is tried again next round."""

    def __init__(self, workdir: Path, kubectl: Kubectl, *, poll_interval: float = 0.2) -> None:
        self.workdir = workdir
        self._kubectl = kubectl
        self._poll_interval = poll_interval
        self._registered: dict[tuple[str, str], int] = {}  # pod -> admin port forwarded to
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def registered(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._registered)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("PodForwards can be started only once")
        self._thread = threading.Thread(target=self._run, name="meshtraffic-podforwards")
        self._thread.daemon = True
        self.sync()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)

    def sync(self) -> None:
        """One round: (re)register every pod whose admin port is not forwarded yet."""
        pending: list[tuple[tuple[str, str], int]] = []
        for pod in walk_pod_dirs(self.workdir, marker=(ADMIN_PORT_FILE,)):
            port = read_port(pod.file(ADMIN_PORT_FILE))
            if port is not None and self.registered.get(pod.key) != port:
                pending.append((pod.key, port))
        if not pending:
            return
        # One kubectl for the round's pods: a Deployment scaled up registers in one call.
        items = [portforward_manifest(ns, name, port) for (ns, name), port in pending]
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        result = self._kubectl("apply", "-f", "-", input=document, check=False)
        if result.returncode == 0:
            with self._lock:
                self._registered.update(pending)
            return
        # One of them failed (its namespace is being deleted, say): apply them one by one so
        # the others are not held up by it.
        for key, port in pending:
            one = json.dumps(portforward_manifest(key[0], key[1], port))
            if self._kubectl("apply", "-f", "-", input=one, check=False).returncode == 0:
                with self._lock:
                    self._registered[key] = port

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.sync()
            except Exception as exc:  # keep going; the next round may succeed
                print(f"meshtraffic: port-forward sync failed: {exc!r}", flush=True)
