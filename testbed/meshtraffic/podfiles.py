"""The per-pod files the mesh agent writes, and the directory walk that finds them.

The agent keeps one directory per meshed pod, `<workdir>/<namespace>/<pod>/`, holding the
sidecar's `envoy.log`, its JSON `access.log`, the agent's own `agent.log`, the sidecar's
listener `port` (present only while the sidecar serves) and `pod.json` (the pod object).
Everything in meshtraffic works from these files alone, so it can be tested with synthetic
directories and needs no handle on the agent.

The files meshtraffic adds to a pod directory: `stats-port` (the pod's metrics endpoint) and
`istio-proxy.cri.log` (what `kubectl logs <pod> -c istio-proxy` returns).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Written by the mesh agent; testbed/meshagent/layout.py is the authority on these names.
from meshagent.layout import (
    ACCESS_LOG,
    AGENT_LOG,
    AGENT_METRICS_PORT_FILE,
    ENVOY_LOG,
    POD_JSON,
    PORT_FILE,
)

__all__ = [
    "ACCESS_LOG",
    "AGENT_LOG",
    "AGENT_METRICS_PORT_FILE",
    "CRI_LOG",
    "ENVOY_LOG",
    "POD_JSON",
    "PORT_FILE",
    "STATS_PORT_FILE",
    "PodDir",
    "read_port",
    "walk_pod_dirs",
    "write_atomically",
]

# Written by meshtraffic.
STATS_PORT_FILE = "stats-port"
CRI_LOG = "istio-proxy.cri.log"


@dataclass(frozen=True, order=True)
class PodDir:
    """One pod's directory under the agent's workdir."""

    namespace: str
    name: str
    path: Path

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def file(self, name: str) -> Path:
        return self.path / name

    def sidecar_port(self) -> int | None:
        """The sidecar's listener port, or None while the agent has not written it yet."""
        return read_port(self.path / PORT_FILE)


def read_port(path: Path) -> int | None:
    """A port number from a one-line file; None if missing, empty or half-written."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def walk_pod_dirs(workdir: Path, *, marker: str | tuple[str, ...] = ACCESS_LOG) -> list[PodDir]:
    """Every `<workdir>/<namespace>/<pod>/` that holds `marker` (or any of several), sorted by
    (namespace, pod).

    Hidden entries and plain files are skipped (the agent's own files and `modules/` hold no
    pod directory with a marker); a directory that vanishes mid-walk is simply not listed.
    """
    markers = (marker,) if isinstance(marker, str) else marker
    found: list[PodDir] = []
    try:
        namespaces = list(os.scandir(workdir))
    except OSError:
        return found
    for ns in namespaces:
        if ns.name.startswith(".") or not ns.is_dir():
            continue
        try:
            pods = list(os.scandir(ns.path))
        except OSError:
            continue
        for pod in pods:
            if pod.name.startswith(".") or not pod.is_dir():
                continue
            path = Path(pod.path)
            if any((path / m).exists() for m in markers):
                found.append(PodDir(ns.name, pod.name, path))
    found.sort()
    return found
