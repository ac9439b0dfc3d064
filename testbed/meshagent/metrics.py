"""Per-pod istio-agent metrics and the agent-wide /metrics endpoint (Prometheus text format).

Written by hand rather than with prometheus_client: Istio exports counters WITHOUT the
`_total` suffix (pkg/monitoring/monitoring.go: otelprom.WithoutCounterSuffixes), and the
names here must be Istio's.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from meshagent.layout import LABEL_NAMESPACE, LABEL_POD
from meshagent.upstream import LoopbackServer

# name -> (type, help), pkg/wasm/monitoring.go.
FAMILIES: dict[str, tuple[str, str]] = {
    "istio_agent_wasm_remote_fetch_count": (
        "counter",
        "number of Wasm remote fetches and results, including success, download failure, "
        "and checksum mismatch.",
    ),
    "istio_agent_wasm_config_conversion_count": (
        "counter",
        "number of Wasm config conversions and results, including success, no remote load, "
        "marshal failure, remote fetch failure, miss remote fetch hint.",
    ),
    "istio_agent_wasm_cache_lookup_count": (
        "counter",
        "number of Wasm remote fetch cache lookups.",
    ),
    "istio_agent_wasm_cache_entries": ("gauge", "number of Wasm remote fetch cache entries."),
    "meshagent_sidecar_up": ("gauge", "1 while the pod's sidecar Envoy serves its listener."),
}

# pkg/wasm/monitoring.go label values.
FETCH_SUCCESS = "success"
DOWNLOAD_FAILURE = "download_failure"
MANIFEST_FAILURE = "manifest_failure"
CHECKSUM_MISMATCH = "checksum_mismatched"
FETCH_FAILURE = "fetch_failure"
CONVERSION_SUCCESS = "success"
NO_REMOTE_LOAD = "no_remote_load"
MISS_REMOTE_FETCH_HINT = "miss_remote_fetch_hint"

LabelSet = tuple[tuple[str, str], ...]


class PodMetrics:
    """The series of one pod's istio-agent: thread-safe counters and gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, LabelSet], float] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def samples(self) -> list[tuple[str, LabelSet, float]]:
        with self._lock:
            return [(name, labels, value) for (name, labels), value in self._values.items()]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
    return "{" + inner + "}" if inner else ""


def _format_value(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


@dataclass
class _Family:
    kind: str
    help: str
    lines: list[str]


def add_labels(sample_line: str, labels: Mapping[str, str]) -> str:
    """Put `labels` first into one sample line of Prometheus text format."""
    extra = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    name_end = len(sample_line)
    for i, char in enumerate(sample_line):
        if char in "{ ":
            name_end = i
            break
    name, rest = sample_line[:name_end], sample_line[name_end:]
    if rest.startswith("{}"):
        return f"{name}{{{extra}}}{rest[2:]}"
    if rest.startswith("{"):
        return f"{name}{{{extra},{rest[1:]}"
    return f"{name}{{{extra}}}{rest}"


def render(pods: Iterable[tuple[str, str, PodMetrics, str]]) -> str:
    """The exposition of every pod: (namespace, pod, its metrics, Envoy's prometheus text)."""
    families: dict[str, _Family] = {}

    def family(name: str, kind: str, help_text: str) -> _Family:
        if name not in families:
            families[name] = _Family(kind, help_text, [])
        return families[name]

    for namespace, pod, metrics, envoy_text in pods:
        pod_labels = {LABEL_NAMESPACE: namespace, LABEL_POD: pod}
        for name, labels, value in sorted(metrics.samples()):
            kind, help_text = FAMILIES.get(name, ("untyped", ""))
            line = name + _format_labels([*pod_labels.items(), *labels]) + " "
            family(name, kind, help_text).lines.append(line + _format_value(value))
        current: _Family | None = None
        for raw in envoy_text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = [*line.split(), "untyped"][:4]
                current = family(name, kind, "")
            elif line.startswith("#"):
                continue
            elif current is not None:
                current.lines.append(add_labels(line, pod_labels))
    out: list[str] = []
    for name, fam in families.items():
        if fam.help:
            out.append(f"# HELP {name} {fam.help}")
        out.append(f"# TYPE {name} {fam.kind}")
        out.extend(fam.lines)
    return "\n".join(out) + "\n"


def xds_rejects(envoy_texts: Iterable[str]) -> str:
    """pilot_total_xds_rejects{type} (istiod's counter of NACKed pushes), summed from the
    sidecars' rejected ECDS and LDS file updates; no pod labels, as istiod's own series."""
    totals = {"ecds": 0.0, "lds": 0.0}
    for text in envoy_texts:
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            name = name.split("{", 1)[0]
            if not name.endswith("_update_rejected"):
                continue
            if name.startswith("envoy_extension_config_discovery_"):
                totals["ecds"] += float(value.split()[0])
            elif name == "envoy_listener_manager_lds_update_rejected":
                totals["lds"] += float(value.split()[0])
    lines = [
        "# HELP pilot_total_xds_rejects "
        "Total number of XDS responses from pilot rejected by proxy.",
        "# TYPE pilot_total_xds_rejects counter",
    ]
    lines += [
        f'pilot_total_xds_rejects{{type="{kind}"}} {_format_value(n)}' for kind, n in totals.items()
    ]
    return "\n".join(lines) + "\n"


class MetricsServer(LoopbackServer):
    """GET /metrics on 127.0.0.1:<free port>, the body from `produce()` at each scrape."""

    def __init__(self, produce: Callable[[], str]) -> None:
        produce_fn = produce

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = produce_fn().encode()
                except Exception as exc:  # a broken scrape must not kill the server
                    self.send_error(500, explain=repr(exc))
                    return
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler, "meshagent-metrics")
