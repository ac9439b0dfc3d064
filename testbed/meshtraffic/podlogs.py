"""`kubectl logs <pod> -c istio-proxy`: the sidecar's Envoy log and the agent's lines for it.

In a real pod the istio-proxy container runs pilot-agent and Envoy, and both write to its
stdout, so its log interleaves istio-agent lines (Istio's format, `<RFC3339>\\t<level>\\t...`)
and Envoy's (`[YYYY-MM-DD HH:MM:SS.mmm][tid][level][logger] ...`). Here the mesh agent writes
them to two files per pod; PodLogWriter merges them, in time order, into
`<pod dir>/istio-proxy.cri.log` in the container runtime's (CRI) line format
`<RFC3339Nano> stdout F <line>`, appending as the sources grow.

kwok serves `kubectl logs` from such files, but its rules cannot template the file path by pod:
a ClusterLogs rule maps all pods its selector matches to one fixed `logsFile`, and kwok reads
--config only at start, before the pods exist. Its per-pod `Logs` resource (namespace/name of
the pod -> files) is what works: kwok watches Logs objects in the apiserver when started with
that kind in enableCRDs (KWOK_CONFIG_YAML below, passed as an extra kwok --config), once the
Logs CRD (logs_crd_manifest) is installed. PodLogWriter then creates one Logs object per pod
through a `register` callback (kubectl_registrar). A Logs object for a pod takes precedence
over every ClusterLogs rule for that pod.
"""

from __future__ import annotations

import heapq
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from localcluster.kwok import kwok_crd
from localcluster.processes import StartStop
from meshtraffic.accesslog import FileTail
from meshtraffic.podfiles import AGENT_LOG, CRI_LOG, ENVOY_LOG, PodDir, walk_pod_dirs

CONTAINER = "istio-proxy"

# A kwok config document (pass the file among LocalCluster's kwok_configs): kwok then takes
# `Logs` rules from the apiserver (kwok.x-k8s.io/v1alpha1, namespaced) instead of --config.
# Only Logs and PortForward (meshtraffic.podforwards): the other kinds may still come from
# --config files.
# kwok applies its option defaults only when no KwokConfiguration is given at all, so every
# defaulted option is spelled out with kwok v0.8.0's default (a missing playStageParallelism
# would stop kwok with "must be greater than 0"); command-line flags still override these.
KWOK_CONFIG_YAML = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  enableCRDs:
  - Logs
  - PortForward
  cidr: 10.0.0.0/24
  manageAllNodes: false
  enableDebuggingHandlers: true
  enableContentionProfiling: false
  enableProfilingHandler: true
  podPlayStageParallelism: 4
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 1
  enablePodsOnNodeSyncListPager: true
  enablePodsOnNodeSyncStreamWatch: false
"""

LOGS_API_VERSION = "kwok.x-k8s.io/v1alpha1"

_ENVOY_TIME = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)\]")
_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))\s")


# -- pure: timestamps, CRI lines, merging --------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(dt: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond datetime keeps."""
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive means local time
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def embedded_time(line: str) -> int | None:
    """The time a log line starts with (Envoy's local-time bracket or Istio's RFC3339), in
    nanoseconds since the epoch; None for lines without one (continuations, other formats)."""
    m = _ISO_TIME.match(line)
    if m:
        text = m.group(1).replace("Z", "+00:00")
        try:
            return _ns(datetime.fromisoformat(text))
        except ValueError:
            return None
    m = _ENVOY_TIME.match(line)
    if m:
        try:
            # spdlog writes local time without a zone.
            return _ns(datetime.fromisoformat(m.group(1)))
        except ValueError:
            return None
    return None


def rfc3339nano(ts_ns: int) -> str:
    """UTC with nine fractional digits, as container runtimes write CRI log lines."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def cri_line(ts_ns: int, line: str, stream: str = "stdout") -> str:
    """One full (tag F) CRI log line, newline included."""
    return f"{rfc3339nano(ts_ns)} {stream} F {line.rstrip(chr(13))}\n"


def parse_cri_line(text: str) -> tuple[str, str, str, str]:
    """(timestamp, stream, tag, content) of a CRI log line (for tests and checks)."""
    ts, stream, tag, content = text.rstrip("\n").split(" ", 3)
    return ts, stream, tag, content


def merge_lines(
    sources: list[list[str]], now: int, last: list[int | None]
) -> list[tuple[int, str]]:
    """Interleave the new lines of several logs by the time each line carries.

    A line without its own time (a continuation, a command echo) takes the previous line's time
    from the same source (`last` holds it per source between calls and is updated); lines
    before a source's first timed line take that line's time, or `now` if none has one. Each
    source stays in its own order; equal times keep the sources' order.
    """
    keyed: list[list[tuple[int, int, int, str]]] = []
    for i, lines in enumerate(sources):
        own = [embedded_time(line) for line in lines]
        first = next((t for t in own if t is not None), None)
        out: list[tuple[int, int, int, str]] = []
        prev = last[i]
        for j, (line, t_own) in enumerate(zip(lines, own, strict=True)):
            if t_own is not None:
                t = t_own
            elif prev is not None:
                t = prev
            else:
                t = first if first is not None else now
            # A source's own order wins over clock quirks: keys never go backwards.
            if out and t < out[-1][0]:
                t = out[-1][0]
            prev = t
            out.append((t, i, j, line))
        last[i] = prev
        keyed.append(out)
    return [(t, line) for t, _, _, line in heapq.merge(*keyed)]


class PodLogMerger:
    """One pod's istio-proxy.cri.log, kept up to date from its envoy.log and agent.log."""

    def __init__(self, pod: PodDir) -> None:
        self.pod = pod
        self.path = pod.file(CRI_LOG)
        self._tails = [FileTail(pod.file(ENVOY_LOG)), FileTail(pod.file(AGENT_LOG))]
        self._last: list[int | None] = [None, None]
        self._prev_ts = 0
        # The file is ours: rebuilt from the sources' beginnings when we first see the pod.
        self.path.write_text("")

    def step(self, now: int) -> int:
        """Append what the sources gained since the last step; the number of lines written.

        CRI timestamps are the lines' own times, capped at `now` and never decreasing, so
        `kubectl logs --since/--timestamps` behave."""
        new = [tail.read_lines() for tail in self._tails]
        if not any(new):
            return 0
        chunks = []
        for t, line in merge_lines(new, now, self._last):
            ts = max(self._prev_ts, min(t, now))
            self._prev_ts = ts
            chunks.append(cri_line(ts, line))
        with self.path.open("a") as f:
            f.write("".join(chunks))
        return len(chunks)


# -- kwok's Logs resource -------------------------------------------------------------------------


def logs_crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition of kwok's namespaced `Logs` (kwok.x-k8s.io/v1alpha1), with
    the fields kwok reads (spec.logs[].containers/logsFile/previousLogsFile/follow)."""
    log_item = {
        "type": "object",
        "properties": {
            "containers": {"type": "array", "items": {"type": "string"}},
            "logsFile": {"type": "string"},
            "previousLogsFile": {"type": "string"},
            "follow": {"type": "boolean"},
        },
    }
    spec = {
        "type": "object",
        "required": ["logs"],
        "properties": {"logs": {"type": "array", "items": log_item}},
    }
    return kwok_crd("Logs", "logs", "logs", spec)


def logs_manifest(namespace: str, pod: str, logs_file: Path) -> dict[str, Any]:
    """A kwok Logs object: container istio-proxy of pod namespace/pod is read from logs_file.

    Named like the pod, which is how kwok finds it. No owner reference: a pod that comes back
    under the same name (its directory is reused) needs the same rule, and deleting the
    namespace removes it."""
    return {
        "apiVersion": LOGS_API_VERSION,
        "kind": "Logs",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "meshtraffic"},
        },
        "spec": {
            "logs": [
                {"containers": [CONTAINER], "logsFile": str(logs_file), "follow": True},
            ]
        },
    }


# Registers a pod's log file with kwok; True once done (False: try again next round).
Registrar = Callable[[str, str, Path], bool]


def kubectl_registrar(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
) -> Registrar:
    """A registrar applying Logs objects with a LocalCluster-style `kubectl(*args, input=,
    check=)`; a failure (namespace gone, CRD not there yet) is retried next round."""

    def register(namespace: str, pod: str, logs_file: Path) -> bool:
        manifest = json.dumps(logs_manifest(namespace, pod, logs_file))
        result = kubectl("apply", "-f", "-", input=manifest, check=False)
        return result.returncode == 0

    return register


class PodLogWriter(StartStop):
    """Keeps every pod's istio-proxy.cri.log under `workdir` current, and registers new pods'
    files with kwok through `register` (optional: without it only the files are written).

    Use as a context manager, or call start() and stop(). Polls every `poll_interval` s.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        register: Registrar | None = None,
        poll_interval: float = 0.25,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self._register = register
        self._poll_interval = poll_interval
        self._clock = clock or time.time_ns  # nanoseconds since the epoch
        self._mergers: dict[tuple[str, str], PodLogMerger] = {}
        self._registered: set[tuple[str, str]] = set()
        # Failed registrations are retried with backoff: key -> (next attempt, delay).
        self._retry: dict[tuple[str, str], tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pods(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._mergers)

    @property
    def registered(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._registered)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a PodLogWriter can be started only once")
        self._thread = threading.Thread(target=self._run, name="meshtraffic-podlogs", daemon=True)
        self.sync()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)

    def sync(self) -> None:
        """One round: pick up new pod directories, append new lines, register new pods."""
        with self._lock:
            for pod in walk_pod_dirs(self.workdir, marker=(ENVOY_LOG, AGENT_LOG)):
                if pod.key not in self._mergers:
                    self._mergers[pod.key] = PodLogMerger(pod)
            mergers = list(self._mergers.values())
        now = self._clock()
        for merger in mergers:
            merger.step(now)
        if self._register is None:
            return
        for merger in mergers:
            key = merger.pod.key
            due, delay = self._retry.get(key, (0.0, 0.5))
            if key in self._registered or time.monotonic() < due:
                continue
            try:
                done = self._register(merger.pod.namespace, merger.pod.name, merger.path)
            except Exception as exc:
                print(f"meshtraffic: registering {key} failed: {exc!r}", flush=True)
                done = False
            if done:
                self._retry.pop(key, None)
                with self._lock:
                    self._registered.add(key)
            else:
                self._retry[key] = (time.monotonic() + delay, min(delay * 2, 10.0))

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.sync()
            except Exception as exc:  # keep going; the next round may succeed
                print(f"meshtraffic: pod log sync failed: {exc!r}", flush=True)
