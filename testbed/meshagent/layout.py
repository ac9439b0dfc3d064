"""Where the mesh agent puts things: the contract with whoever reads a sidecar's files.

Everything lives under the agent's `workdir`:

    <workdir>/
      agent-metrics-port        port of the agent-wide /metrics endpoint (127.0.0.1), when ready
      agent.log                 the agent's own lines (watches, reconciles) not tied to one pod
      upstream-port             port of the shared upstream "app" every sidecar forwards to
      modules/                  the Wasm module cache (content-addressed, shared by all pods)
      <namespace>/<pod>/        one directory per meshed pod (kept after the pod goes away)
        port                    the sidecar's inbound listener port on 127.0.0.1; written when
                                the sidecar serves, removed when it stops
        admin-port              the sidecar Envoy's admin port on 127.0.0.1 (fixed for the
                                sidecar's life; `kubectl port-forward <pod> 15000` leads there)
        envoy.log               Envoy's own log (default Envoy format; Wasm VM lines, panics)
        access.log              one JSON object per request (fields below)
        agent.log               istio-agent's lines for this pod, Istio's log format:
                                `<RFC3339 time>\t<level>\t<scope>\t<message>`, e.g.
                                `...\terror\twasm\terror in converting the wasm config to local:
                                cannot fetch Wasm module oci://...: ... applying deny RBAC filter`
        pod.json                the pod object as the agent last saw it (metadata without
                                managedFields, spec), rewritten when it changes (relabels)
        bootstrap.json lds.json ecds/*.json   what the sidecar runs on (the "xDS" files)

A pod's directory is reused when a pod of the same name comes back; logs are appended.

Access log (Envoy's file access logger with `json_format`; flushed every 200 ms). One object
per line, keys in alphabetical order (Envoy sorts them). Numbers are JSON numbers; a value
Envoy does not have is JSON null:

    start_time             %START_TIME% (RFC3339 with milliseconds, UTC)
    method                 request method
    path                   request path (original path if a filter rewrote it)
    protocol               HTTP/1.1, HTTP/2 ...
    response_code          status sent to the client (0 if none was sent)
    response_flags         Envoy's response flags, "-" when none (e.g. "UF", "DC")
    response_code_details  why: "via_upstream", "wasm_fail_stream" (a crashed VM, 503),
                           "rbac_access_denied_matched_policy[none]" (istio-agent's deny-all
                           stand-in for a module it could not fetch, 403), "" with flag NFCF
                           (500: Envoy rejected the filter's config, e.g. a module refusing its
                           pluginConfig, and has none for a new listener)
    duration_ms            total request duration in ms
    upstream_host          the upstream address ("127.0.0.1:<port>"), null for local replies
    request_id             x-request-id (Envoy generates one when the client sent none)
    x_filter_version       response header x-filter-version as sent to the client
    x_envoy_wasm_filter    request header x-envoy-wasm-filter as forwarded upstream (the
                           security-headers filter sets it to "active" on requests)
    downstream_wire_bytes_received   bytes of the request as received from the client, headers
                           included (what istio/proxy's stats filter records in istio_request_bytes)
    downstream_wire_bytes_sent       bytes of the response as sent to the client, headers
                           included (istio_response_bytes)
    bytes_received bytes_sent authority user_agent downstream_remote_address

Metrics: ONE agent-wide endpoint, http://127.0.0.1:<agent-metrics-port>/metrics, in Prometheus
text format. Every series of a sidecar carries `namespace` and `pod` labels (what a
Prometheus kubernetes_sd relabelling would add to a real pod's istio-agent series); scrape it
with `honor_labels: true`. Series:

    istio_agent_wasm_remote_fetch_count{result}      counter; result = success |
        download_failure | manifest_failure | checksum_mismatched | fetch_failure
    istio_agent_wasm_config_conversion_count{result} counter; result = success |
        no_remote_load | marshal_failure | unmarshal_failure | fetch_failure |
        miss_remote_fetch_hint
    istio_agent_wasm_cache_lookup_count{hit}         counter; hit = true | false
    istio_agent_wasm_cache_entries                   gauge
    envoy_*                                          Envoy's own stats whose name contains
        "wasm", "rbac", "extension_config_discovery" or "listener_manager.lds" (from the
        sidecar's admin /stats/prometheus?usedonly), with the pod labels added
    meshagent_sidecar_up                             gauge, 1 while the sidecar serves
    pilot_total_xds_rejects{type}                    counter, NO pod labels (istiod's own
        series): ECDS ("ecds") and LDS ("lds") updates the sidecars' Envoys rejected

Metric names follow Istio's (OpenTelemetry exporter without counter suffixes: no `_total`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PORT_FILE = "port"
ENVOY_LOG = "envoy.log"
ACCESS_LOG = "access.log"
AGENT_LOG = "agent.log"
POD_JSON = "pod.json"
AGENT_METRICS_PORT_FILE = "agent-metrics-port"
UPSTREAM_PORT_FILE = "upstream-port"
# The sidecar Envoy's admin port (loopback), fixed for the sidecar's life: what a PortForward
# of the pod's port 15000 (Istio's proxy admin port) leads to.
ADMIN_PORT_FILE = "admin-port"
MODULES_DIR = "modules"

# Access log fields (JSON keys), in the order Envoy writes them.
FIELD_START_TIME = "start_time"
FIELD_METHOD = "method"
FIELD_PATH = "path"
FIELD_PROTOCOL = "protocol"
FIELD_RESPONSE_CODE = "response_code"
FIELD_RESPONSE_FLAGS = "response_flags"
FIELD_RESPONSE_CODE_DETAILS = "response_code_details"
FIELD_DURATION_MS = "duration_ms"
FIELD_UPSTREAM_HOST = "upstream_host"
FIELD_REQUEST_ID = "request_id"
FIELD_X_FILTER_VERSION = "x_filter_version"
FIELD_X_ENVOY_WASM_FILTER = "x_envoy_wasm_filter"
FIELD_DOWNSTREAM_WIRE_BYTES_RECEIVED = "downstream_wire_bytes_received"
FIELD_DOWNSTREAM_WIRE_BYTES_SENT = "downstream_wire_bytes_sent"
FIELD_BYTES_RECEIVED = "bytes_received"
FIELD_BYTES_SENT = "bytes_sent"
FIELD_AUTHORITY = "authority"
FIELD_USER_AGENT = "user_agent"
FIELD_DOWNSTREAM_REMOTE_ADDRESS = "downstream_remote_address"

# Envoy command operators behind each field.
ACCESS_LOG_FIELDS: dict[str, str] = {
    FIELD_START_TIME: "%START_TIME%",
    FIELD_METHOD: "%REQ(:METHOD)%",
    FIELD_PATH: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    FIELD_PROTOCOL: "%PROTOCOL%",
    FIELD_RESPONSE_CODE: "%RESPONSE_CODE%",
    FIELD_RESPONSE_FLAGS: "%RESPONSE_FLAGS%",
    FIELD_RESPONSE_CODE_DETAILS: "%RESPONSE_CODE_DETAILS%",
    FIELD_DURATION_MS: "%DURATION%",
    FIELD_UPSTREAM_HOST: "%UPSTREAM_HOST%",
    FIELD_REQUEST_ID: "%REQ(X-REQUEST-ID)%",
    FIELD_X_FILTER_VERSION: "%RESP(X-FILTER-VERSION)%",
    FIELD_X_ENVOY_WASM_FILTER: "%REQ(X-ENVOY-WASM-FILTER)%",
    # The stream's downstream bytes meter, which istio/proxy reads for its byte histograms
    # (istio_stats.cc: getDownstreamBytesMeter()->wireBytesReceived()/wireBytesSent()).
    FIELD_DOWNSTREAM_WIRE_BYTES_RECEIVED: "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
    FIELD_DOWNSTREAM_WIRE_BYTES_SENT: "%DOWNSTREAM_WIRE_BYTES_SENT%",
    FIELD_BYTES_RECEIVED: "%BYTES_RECEIVED%",
    FIELD_BYTES_SENT: "%BYTES_SENT%",
    FIELD_AUTHORITY: "%REQ(:AUTHORITY)%",
    FIELD_USER_AGENT: "%REQ(USER-AGENT)%",
    FIELD_DOWNSTREAM_REMOTE_ADDRESS: "%DOWNSTREAM_REMOTE_ADDRESS%",
}

# Labels on every per-pod series of the metrics endpoint.
LABEL_NAMESPACE = "namespace"
LABEL_POD = "pod"


def pod_dir(workdir: Path, namespace: str, pod: str) -> Path:
    """The directory of one pod's sidecar files."""
    return Path(workdir) / namespace / pod


def _read_port(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def sidecar_port(workdir: Path, namespace: str, pod: str) -> int | None:
    """The port the pod's sidecar serves on (127.0.0.1), or None while it does not serve."""
    return _read_port(pod_dir(workdir, namespace, pod) / PORT_FILE)


def agent_metrics_port(workdir: Path) -> int | None:
    """The port of the agent-wide /metrics endpoint, or None before the agent serves it."""
    return _read_port(Path(workdir) / AGENT_METRICS_PORT_FILE)


def write_atomically(path: Path, data: str | bytes) -> None:
    """Replace `path` in one step (temp file in the same directory + rename), so a reader
    (Envoy's file watcher, a test) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
