"""Serving each sidecar's Istio metrics to Prometheus, like a real sidecar's :15020 endpoint.

    with MeshMetricsExporter(agent_workdir, workdir / "targets.json") as exporter:
        prometheus = Prometheus(workdir / "prometheus", exporter.targets_file)

Every live pod directory the mesh agent writes gets its own HTTP server on 127.0.0.1:<free port>
(recorded in `<pod dir>/stats-port`) that answers GET /stats/prometheus (and /metrics) with the
pod's Istio request metrics (istio_requests_total; the istio_request_duration_milliseconds,
istio_request_bytes and istio_response_bytes histograms: metrics.py), read from its access log
at scrape time. A Prometheus file_sd targets file lists every pod's endpoint with the target
labels `namespace` and `pod`, which Istio's sample `kubernetes-pods` job takes from
__meta_kubernetes_namespace / __meta_kubernetes_pod_name; pod IPs from kwok are fake, so
Prometheus finds the endpoints through this file instead of the Kubernetes API. The file is
rewritten (atomically) whenever pods come or go.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from localcluster.processes import StartStop
from meshagent.upstream import QuietServer
from meshtraffic.accesslog import FileTail, parse_line
from meshtraffic.metrics import (
    PodIdentity,
    RequestMetrics,
    identity_from_name,
    identity_from_pod,
)
from meshtraffic.podfiles import (
    ACCESS_LOG,
    AGENT_METRICS_PORT_FILE,
    POD_JSON,
    PORT_FILE,
    STATS_PORT_FILE,
    PodDir,
    read_port,
    walk_pod_dirs,
    write_atomically,
)

LOOPBACK = "127.0.0.1"
METRICS_PATHS = ("/stats/prometheus", "/metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Finds a pod's identity (labels, workload); None when it cannot tell (yet).
IdentityResolver = Callable[[PodDir], PodIdentity | None]


def pod_json_identity(pod: PodDir) -> PodIdentity | None:
    """The identity from `<pod dir>/pod.json` (the pod object), if the agent wrote one."""
    try:
        obj = json.loads(pod.file(POD_JSON).read_text())
    except (OSError, ValueError):
        return None
    return identity_from_pod(obj) if isinstance(obj, dict) else None


def kube_identity(
    get_pod: Callable[[str, str], Mapping[str, Any] | None],
) -> IdentityResolver:
    """A resolver that looks the pod up (e.g. `kubectl get pod -o json`), pod.json first."""

    def resolve(pod: PodDir) -> PodIdentity | None:
        found = pod_json_identity(pod)
        if found is not None:
            return found
        obj = get_pod(pod.namespace, pod.name)
        return identity_from_pod(obj) if obj else None

    return resolve


def kubectl_pod_lookup(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
) -> Callable[[str, str], dict[str, Any] | None]:
    """`get_pod` for kube_identity from a LocalCluster-style `kubectl(*args, check=)`."""

    def get_pod(namespace: str, name: str) -> dict[str, Any] | None:
        result = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            return None
        obj = json.loads(result.stdout)
        return obj if isinstance(obj, dict) else None

    return get_pod


class PodExporter:
    """One pod's metrics endpoint: tails its access log, serves the aggregated series."""

    # A resolver that cannot tell is asked again at most this often (it may call kubectl).
    RESOLVE_RETRY_S = 2.0

    def __init__(
        self,
        pod: PodDir,
        resolve: IdentityResolver,
        *,
        start_offset: int = 0,
        identity_grace_s: float = 5.0,
    ) -> None:
        """Access-log lines are held back for up to `identity_grace_s` after the pod is first
        seen while `resolve` cannot tell its identity yet (the agent writes pod.json just after
        the sidecar starts), so that they are not counted under a guessed identity first and
        under the real one later (two series for one pod)."""
        self.pod = pod
        self._resolve = resolve
        self._grace_until = time.monotonic() + identity_grace_s
        self._tail = FileTail(pod.file(ACCESS_LOG), start_offset=start_offset)
        self.metrics = RequestMetrics()
        self._identity: PodIdentity | None = None
        self._next_resolve = 0.0
        self._lock = threading.Lock()
        # Quiet: Prometheus hangs up on a scrape that outlives its timeout (a busy machine),
        # which is no error of ours worth a traceback.
        self._server = QuietServer((LOOPBACK, 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"meshtraffic-stats-{pod.namespace}/{pod.name}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def offset(self) -> int:
        """How far into the access log this endpoint has counted (bytes)."""
        return self._tail.offset

    @property
    def identity(self) -> PodIdentity:
        with self._lock:
            return self._current_identity()

    def start(self) -> None:
        self._thread.start()
        write_atomically(self.pod.file(STATS_PORT_FILE), f"{self.port}\n")

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        with contextlib.suppress(OSError):
            self.pod.file(STATS_PORT_FILE).unlink()

    def refresh(self) -> None:
        """Fold the access-log lines written since the last call into the counters."""
        with self._lock:
            identity = self._current_identity()
            if not identity.authoritative and time.monotonic() < self._grace_until:
                return
            for line in self._tail.read_lines():
                entry = parse_line(line)
                if entry is not None:
                    self.metrics.observe(identity, entry)

    def render(self) -> str:
        self.refresh()
        with self._lock:
            return self.metrics.render()

    def _current_identity(self) -> PodIdentity:
        if self._identity is not None and self._identity.authoritative:
            return self._identity
        now = time.monotonic()
        if now >= self._next_resolve:
            self._next_resolve = now + self.RESOLVE_RETRY_S
            try:
                found = self._resolve(self.pod)
            except Exception:  # a failing lookup must not break the scrape
                found = None
            if found is not None:
                self._identity = found
        if self._identity is None:
            self._identity = identity_from_name(self.pod.namespace, self.pod.name)
        return self._identity

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in METRICS_PATHS:
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would drown everything else

        return Handler


class MeshMetricsExporter(StartStop):
    """A metrics endpoint per live pod under `workdir`, and the file_sd targets file.

    Use as a context manager, or call start() and stop(). A background thread looks for pods
    every `poll_interval` seconds. A pod is served while its sidecar serves (the agent writes
    `<pod dir>/port` then, and removes it when the sidecar stops; the directory itself stays).
    A pod of the same name that comes back starts from zero, as a new pod's sidecar would,
    counting only the access-log lines written after the old one was dropped.

    With `agent_targets_file`, the mesh agent's own endpoint (`<workdir>/agent-metrics-port`,
    series that already carry namespace/pod labels) is kept in a second file_sd file, for a
    job with honor_labels (see localcluster.prometheus.file_sd_job).
    """

    def __init__(
        self,
        workdir: Path,
        targets_file: Path,
        *,
        agent_targets_file: Path | None = None,
        resolve: IdentityResolver = pod_json_identity,
        poll_interval: float = 0.5,
        identity_grace_s: float = 5.0,
    ) -> None:
        self.workdir = Path(workdir)
        self._identity_grace_s = identity_grace_s
        self.targets_file = Path(targets_file)
        self.agent_targets_file = Path(agent_targets_file) if agent_targets_file else None
        self._resolve = resolve
        self._poll_interval = poll_interval
        self._pods: dict[tuple[str, str], PodExporter] = {}
        # Where a dropped pod's access log was read up to, for a pod of the same name.
        self._resume: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: dict[Path, str] = {}

    @property
    def pods(self) -> dict[tuple[str, str], PodExporter]:
        """(namespace, pod) -> its exporter, for the pods currently served."""
        with self._lock:
            return dict(self._pods)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a MeshMetricsExporter can be started only once")
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="meshtraffic-exporter", daemon=True)
        try:
            self.sync()
            self._thread.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the thread and every endpoint; the targets files are left listing nothing."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            pods, self._pods = list(self._pods.values()), {}
        for pod in pods:
            pod.stop()
        with contextlib.suppress(OSError):
            self._write(self.targets_file, [])
            if self.agent_targets_file is not None:
                self._write(self.agent_targets_file, [])

    def sync(self) -> None:
        """One round: serve new pods, drop stopped ones, fold in new log lines, rewrite the
        targets files if what they list changed."""
        seen = {p.key: p for p in walk_pod_dirs(self.workdir, marker=PORT_FILE)}
        with self._lock:
            gone = [self._pods.pop(k) for k in list(self._pods) if k not in seen]
            for exporter in gone:
                exporter.refresh()
                self._resume[exporter.pod.key] = exporter.offset
            for key, pod_dir in seen.items():
                if key not in self._pods:
                    exporter = PodExporter(
                        pod_dir,
                        self._resolve,
                        start_offset=self._resume.pop(key, 0),
                        identity_grace_s=self._identity_grace_s,
                    )
                    exporter.start()
                    self._pods[key] = exporter
            current = list(self._pods.values())
        for exporter in gone:
            exporter.stop()
        for exporter in current:
            exporter.refresh()
        self._write(self.targets_file, _targets(current))
        if self.agent_targets_file is not None:
            port = read_port(self.workdir / AGENT_METRICS_PORT_FILE)
            self._write(
                self.agent_targets_file, [{"targets": [f"{LOOPBACK}:{port}"]}] if port else []
            )

    def targets(self) -> list[dict[str, Any]]:
        with self._lock:
            return _targets(list(self._pods.values()))

    def _write(self, path: Path, targets: list[dict[str, Any]]) -> None:
        text = json.dumps(targets, indent=1) + "\n"
        if self._written.get(path) != text:
            write_atomically(path, text)
            self._written[path] = text

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.sync()
            except Exception as exc:  # keep serving; the next round may succeed
                print(f"meshtraffic: exporter sync failed: {exc!r}", flush=True)


def _targets(pods: list[PodExporter]) -> list[dict[str, Any]]:
    return [
        {
            "targets": [p.address],
            "labels": {"namespace": p.pod.namespace, "pod": p.pod.name},
        }
        for p in sorted(pods, key=lambda p: p.pod.key)
    ]
