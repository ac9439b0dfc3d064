"""Istio's standard HTTP metrics, derived per pod from its sidecar's access log.

A real Istio sidecar counts every inbound request in `istio_requests_total` and records its
duration in `istio_request_duration_milliseconds` and its size on the wire, headers included, in
`istio_request_bytes` and `istio_response_bytes` (the stream's downstream bytes meter), labelled
as istio/proxy's stats filter does for the server side (reporter="destination"; all four share
the label set). Our sidecars are plain Envoys without that filter, so the same series are
rebuilt here from the access log, which logs every request once with those byte counts.

Label values follow istio/proxy (source/extensions/filters/http/istio_stats) for a plaintext
request from outside the mesh, which is what the load generator sends:
  * the source is unknown: source_* = "unknown", except source_canonical_revision = "latest";
  * destination_* describe this pod's workload; destination_principal = "unknown" (no mTLS);
  * connection_security_policy = "none" (plaintext), request_protocol = "http",
    grpc_response_status = "" (not gRPC), response_flags as Envoy's short string ("-": none).
Prometheus adds `namespace` and `pod` as target labels (see exporter.py), the way Istio's sample
`kubernetes-pods` scrape job does.

Everything in this module is pure (no I/O) and unit-tested with synthetic entries.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshtraffic.accesslog import AccessLogEntry

REQUESTS_TOTAL = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"

# Envoy's default histogram buckets (source/common/stats/histogram_impl.cc), which Istio keeps
# for all its histograms: milliseconds for istio_request_duration_milliseconds, bytes for
# istio_request_bytes and istio_response_bytes.
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
DURATION_BUCKETS_MS = ENVOY_DEFAULT_BUCKETS
BYTES_BUCKETS = ENVOY_DEFAULT_BUCKETS

# Every label of istio_requests_total and the three histograms (Istio Standard Metrics), in the
# order istio/proxy attaches them.
ISTIO_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)

UNKNOWN = "unknown"
# Istio's default cluster ID (values.global.multiCluster.clusterName unset).
DEFAULT_CLUSTER_ID = "Kubernetes"
CLUSTER_DOMAIN = "cluster.local"

CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"

# Names kube generates: a ReplicaSet is `<deployment>-<pod-template-hash>`, its pods
# `<replicaset>-<5 chars>`, both from this alphabet (k8s.io/apimachinery rand.SafeEncodeString).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_DEPLOYMENT_POD = re.compile(rf"^(?P<workload>.+)-[{_SAFE}]{{6,10}}-[{_SAFE}]{{5}}$")
_GENERATED_POD = re.compile(rf"^(?P<workload>.+)-[{_SAFE}]{{5}}$")
# CronJob-made Jobs are `<cronjob>-<minutes since epoch>`.
_CRONJOB_JOB = re.compile(r"^(?P<workload>.+)-\d{8,}$")


@dataclass(frozen=True)
class PodIdentity:
    """What a sidecar knows about its own pod: the destination side of every inbound request."""

    namespace: str
    workload: str
    app: str = ""
    version: str = ""
    canonical_service: str = ""
    canonical_revision: str = "latest"
    service_name: str = ""
    cluster_id: str = DEFAULT_CLUSTER_ID
    # True when taken from the pod object; False when guessed from the pod's name.
    authoritative: bool = False

    @property
    def service(self) -> str:
        return self.service_name or self.canonical_service or self.workload

    @property
    def service_host(self) -> str:
        return f"{self.service}.{self.namespace}.svc.{CLUSTER_DOMAIN}"


def workload_from_pod_name(pod_name: str) -> str:
    """The workload a pod name suggests: `<deploy>-<hash>-<xxxxx>` -> `<deploy>`.

    Only a fallback for when the pod object is not at hand; `identity_from_pod` follows the
    owner references instead.
    """
    m = _DEPLOYMENT_POD.match(pod_name) or _GENERATED_POD.match(pod_name)
    return m.group("workload") if m else pod_name


def workload_from_pod(pod: Mapping[str, Any]) -> str:
    """The pod's workload name as Istio derives it: the controller that owns it, with a
    ReplicaSet's pod-template-hash (or a CronJob Job's timestamp) stripped."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name") or "")
    labels = meta.get("labels") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller", True)]
    if not owners:
        return name
    owner = owners[0]
    kind = str(owner.get("kind") or "")
    owner_name = str(owner.get("name") or "")
    if kind == "ReplicaSet":
        template_hash = labels.get("pod-template-hash")
        if template_hash and owner_name.endswith(f"-{template_hash}"):
            return owner_name[: -len(template_hash) - 1]
        return owner_name  # a ReplicaSet of its own, not made by a Deployment
    if kind == "Job":
        m = _CRONJOB_JOB.match(owner_name)
        return m.group("workload") if m else owner_name
    return owner_name


def identity_from_pod(
    pod: Mapping[str, Any], *, service_name: str = "", cluster_id: str = DEFAULT_CLUSTER_ID
) -> PodIdentity:
    """The destination labels of a pod object (as `kubectl get pod -o json` returns it)."""
    meta = pod.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    workload = workload_from_pod(pod)
    app = labels.get("app") or labels.get("app.kubernetes.io/name") or ""
    version = labels.get("version") or labels.get("app.kubernetes.io/version") or ""
    # The injector's defaults for the canonical service labels.
    canonical_service = labels.get(CANONICAL_NAME_LABEL) or app or workload
    canonical_revision = labels.get(CANONICAL_REVISION_LABEL) or version or "latest"
    return PodIdentity(
        namespace=str(meta.get("namespace") or ""),
        workload=workload,
        app=app,
        version=version,
        canonical_service=canonical_service,
        canonical_revision=canonical_revision,
        service_name=service_name,
        cluster_id=cluster_id,
        authoritative=True,
    )


def identity_from_name(namespace: str, pod_name: str) -> PodIdentity:
    """A best guess without the pod object: the workload from the name, no labels."""
    workload = workload_from_pod_name(pod_name)
    return PodIdentity(namespace=namespace, workload=workload, canonical_service=workload)


def request_labels(identity: PodIdentity, entry: AccessLogEntry) -> tuple[str, ...]:
    """The label values (in ISTIO_LABELS order) of one inbound request."""
    protocol = "grpc" if entry.raw.get("grpc_status") not in (None, "", "-") else "http"
    grpc_status = ""
    if protocol == "grpc":
        grpc_status = str(entry.raw.get("grpc_status"))
    values = {
        "reporter": "destination",
        "source_workload": UNKNOWN,
        "source_canonical_service": UNKNOWN,
        "source_canonical_revision": "latest",
        "source_workload_namespace": UNKNOWN,
        "source_principal": UNKNOWN,
        "source_app": UNKNOWN,
        "source_version": UNKNOWN,
        "source_cluster": UNKNOWN,
        "destination_workload": identity.workload,
        "destination_workload_namespace": identity.namespace,
        "destination_principal": UNKNOWN,
        "destination_app": identity.app,
        "destination_version": identity.version,
        "destination_service": identity.service_host,
        "destination_canonical_service": identity.canonical_service,
        "destination_canonical_revision": identity.canonical_revision,
        "destination_service_name": identity.service,
        "destination_service_namespace": identity.namespace,
        "destination_cluster": identity.cluster_id,
        "request_protocol": protocol,
        "response_code": str(entry.response_code),
        "grpc_response_status": grpc_status,
        "response_flags": entry.response_flags or "-",
        "connection_security_policy": "none",
    }
    return tuple(values[name] for name in ISTIO_LABELS)


class _Histogram:
    """One histogram series: per-bucket (non-cumulative) counts, the last one for +Inf."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.buckets, strict=False):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels},le="{_number(bound)}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {_number(self.sum)}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


def _whole(value: float | None) -> float | None:
    """istio/proxy records integers (whole milliseconds, bytes); None for a missing value."""
    if value is None or not math.isfinite(value):
        return None
    return float(max(int(value), 0))


@dataclass
class _Series:
    count: int
    duration: _Histogram
    request_bytes: _Histogram
    response_bytes: _Histogram

    def histograms(self) -> dict[str, _Histogram]:
        return {
            REQUEST_DURATION: self.duration,
            REQUEST_BYTES: self.request_bytes,
            RESPONSE_BYTES: self.response_bytes,
        }


_HISTOGRAM_HELP = {
    REQUEST_DURATION: "Request durations (from the sidecar's access log).",
    REQUEST_BYTES: "Request sizes on the wire, headers included (from the access log).",
    RESPONSE_BYTES: "Response sizes on the wire, headers included (from the access log).",
}


class RequestMetrics:
    """istio_requests_total and the istio_request_duration_milliseconds, istio_request_bytes
    and istio_response_bytes histograms of one pod."""

    def __init__(
        self,
        buckets: Iterable[float] = DURATION_BUCKETS_MS,
        *,
        bytes_buckets: Iterable[float] = BYTES_BUCKETS,
    ) -> None:
        self.bucket_bounds = tuple(sorted(buckets))
        self.bytes_bucket_bounds = tuple(sorted(bytes_buckets))
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, identity: PodIdentity, entry: AccessLogEntry) -> None:
        key = request_labels(identity, entry)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                count=0,
                duration=_Histogram(self.bucket_bounds),
                request_bytes=_Histogram(self.bytes_bucket_bounds),
                response_bytes=_Histogram(self.bytes_bucket_bounds),
            )
        series.count += 1
        # A value the line lacks is not observed (istio/proxy skips a histogram whose input
        # is missing: no completed duration, no bytes meter), but the request still counts.
        for histogram, value in (
            (series.duration, entry.duration_ms),
            (series.request_bytes, entry.request_bytes),
            (series.response_bytes, entry.response_bytes),
        ):
            whole = _whole(value)
            if whole is not None:
                histogram.observe(whole)

    def totals(self) -> dict[tuple[str, ...], int]:
        """Request count per label tuple (ISTIO_LABELS order)."""
        return {key: s.count for key, s in self._series.items()}

    def count_by(self, *labels: str) -> dict[tuple[str, ...], int]:
        """Request counts summed by the given labels, like `sum by (...)` in PromQL."""
        idx = [ISTIO_LABELS.index(name) for name in labels]
        out: dict[tuple[str, ...], int] = {}
        for key, s in self._series.items():
            sub = tuple(key[i] for i in idx)
            out[sub] = out.get(sub, 0) + s.count
        return out

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        lines = [
            f"# HELP {REQUESTS_TOTAL} Requests handled by the sidecar (from its access log).",
            f"# TYPE {REQUESTS_TOTAL} counter",
        ]
        items = sorted(self._series.items())
        for key, s in items:
            lines.append(f"{REQUESTS_TOTAL}{{{_labels(key)}}} {s.count}")
        for name, help_text in _HISTOGRAM_HELP.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for key, s in items:
                histogram = s.histograms()[name]
                if histogram.count:
                    lines += histogram.render(name, _labels(key))
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(values: tuple[str, ...]) -> str:
    return ",".join(f'{name}="{_escape(v)}"' for name, v in zip(ISTIO_LABELS, values, strict=True))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a text exposition: (metric name, labels) -> value. For tests and checks;
    handles what render() writes (escaped quotes and backslashes in label values)."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            body, value = rest.rsplit("}", 1)
            labels = frozenset((k, _unescape(v)) for k, v in label_re.findall(body))
        else:
            name, value = line.split(" ", 1)
            labels = frozenset()
        samples[(name, labels)] = float(value.strip().split(" ")[0])
    return samples
