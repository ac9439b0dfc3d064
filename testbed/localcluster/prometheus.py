"""A real Prometheus on loopback: Debian's `prometheus` (2.42), scraping file_sd targets.

    with Prometheus(tmp_path / "prometheus", targets_file) as prom:
        prom.wait_for_targets(2, timeout=30)
        prom.query('sum by (pod) (istio_requests_total)')

Listens on 127.0.0.1:<free port>, keeps its TSDB under the workdir, and scrapes one job,
`kubernetes-pods`, whose targets come from a file_sd JSON file (targets `127.0.0.1:<port>`
with labels `namespace` and `pod`, as Istio's annotation-based job would produce from
__meta_kubernetes_namespace and __meta_kubernetes_pod_name). Prometheus watches that file, so
pods coming and going need no restart (but Prometheus 2.42 passes discovery updates to the
scraper at most every 5 s, so a new target is first scraped up to ~5 s after it is listed).
More jobs (e.g. the mesh agent's own endpoint, see file_sd_job) go in `extra_jobs`. Scrape and
rule-evaluation intervals are short for tests. The config is written from scratch every start.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.errors import ClusterStartError
from localcluster.network import LOOPBACK
from localcluster.processes import LoopbackDaemon, ManagedProcess

DEFAULT_BINARY = Path("/usr/bin/prometheus")
_INSTALL_HINT = "install it with `apt-get install prometheus` (Debian/Ubuntu, Prometheus 2.42)"
JOB_NAME = "kubernetes-pods"
# What a sidecar serves Prometheus on (Istio's merged metrics endpoint, :15020).
DEFAULT_METRICS_PATH = "/stats/prometheus"
# Queries and probes go straight to loopback, whatever proxy the environment names.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(ClusterStartError):
    """The binary is missing, Prometheus did not come up, or the HTTP API returned an error."""


@dataclass(frozen=True)
class Sample:
    """One series of a query result: its labels and value (the last one, for a range)."""

    labels: dict[str, str]
    value: float
    timestamp: float
    # For range vectors (matrix results): every (timestamp, value) of the series.
    values: list[tuple[float, float]] = field(default_factory=list)


def file_sd_job(
    name: str,
    targets_file: Path,
    *,
    metrics_path: str = "/metrics",
    honor_labels: bool = False,
    refresh_interval: str = "5s",
) -> dict[str, Any]:
    """A scrape job whose targets come from a file_sd JSON file (watched by Prometheus).

    honor_labels=True keeps the `namespace`/`pod` labels a target puts on its own series
    (the mesh agent's endpoint serves many pods' series at once)."""
    return {
        "job_name": name,
        "metrics_path": metrics_path,
        "honor_labels": honor_labels,
        "file_sd_configs": [
            {"files": [str(Path(targets_file).resolve())], "refresh_interval": refresh_interval}
        ],
    }


def find_binary(binary: Path | None = None) -> Path:
    """The prometheus executable (explicit path, /usr/bin, or PATH), or a clear error."""
    if binary is not None:
        candidates = [Path(binary)]
    else:
        on_path = shutil.which("prometheus")
        candidates = [DEFAULT_BINARY, *([Path(on_path)] if on_path else [])]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise PrometheusError(f"prometheus binary not found (looked at {tried}); {_INSTALL_HINT}")


def _seconds(duration: str) -> float:
    """A Prometheus duration like "1s", "500ms", "2m" in seconds (for the file_sd refresh)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[: -len(unit)].isdigit():
            return int(duration[: -len(unit)]) * units[unit]
    raise ValueError(f"unsupported duration {duration!r} (use e.g. 500ms, 1s, 2m)")


class Prometheus(LoopbackDaemon):
    """One Prometheus process on 127.0.0.1, its config, TSDB and log under `workdir`."""

    name = "prometheus"
    ready_path = "/-/ready"
    error = PrometheusError
    start_timeout = 60.0

    def __init__(
        self,
        workdir: Path,
        targets_file: Path,
        scrape_interval: str = "1s",
        *,
        evaluation_interval: str | None = None,
        metrics_path: str = DEFAULT_METRICS_PATH,
        extra_jobs: Sequence[Mapping[str, Any]] = (),
        binary: Path | None = None,
        log_path: Path | None = None,
        port: int | None = None,
    ) -> None:
        _seconds(scrape_interval)  # validate early
        self.workdir = Path(workdir).resolve()
        self.targets_file = Path(targets_file).resolve()
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval or scrape_interval
        self.metrics_path = metrics_path
        self.extra_jobs = [dict(job) for job in extra_jobs]
        super().__init__(port)
        self._binary = binary
        self.log_path = log_path if log_path is not None else self.workdir / "prometheus.log"
        # In the config we write, so a probe can tell our process from another on the port.
        self._instance = secrets.token_hex(8)

    # -- public surface -------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "data"

    def spawn(self) -> ManagedProcess:
        """Write the config and start the process; does not wait for it."""
        self._claim_port()
        binary = find_binary(self._binary)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        if not self.targets_file.exists():
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            self.targets_file.write_text("[]\n")
        self.config_path.write_text(self._config())
        self._process = ManagedProcess(
            "prometheus",
            [
                str(binary),
                f"--config.file={self.config_path}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                f"--storage.tsdb.path={self.storage_dir}",
                # Nothing here outlives a test run.
                "--storage.tsdb.retention.time=1d",
                # Debian's default points at /etc/prometheus; our URLs are loopback only.
                f"--web.external-url=http://{LOOPBACK}:{self.port}/",
                "--log.level=info",
            ],
            self.log_path,
            cwd=self.workdir,
        )
        return self._process

    def ready(self) -> bool:
        """Our process answers /-/ready with 200 and serves the config we wrote."""
        if self._process is None or not self._process.alive():
            return False
        try:
            with _NO_PROXY.open(f"{self.url}/-/ready", timeout=2) as resp:
                if resp.status != 200:
                    return False
            with _NO_PROXY.open(f"{self.url}/api/v1/status/config", timeout=2) as resp:
                config = json.load(resp)
        except (OSError, ValueError):
            return False
        return self._instance in str(config.get("data", {}).get("yaml", ""))

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> with query parameters; the `data` of a successful answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _NO_PROXY.open(url, timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise PrometheusError(f"GET {url}: HTTP {exc.code}: {detail}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body.get("data")

    def query(self, promql: str, *, at: float | None = None) -> list[Sample]:
        """An instant query; every series of the result (a scalar comes back as one sample
        without labels)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        kind, result = data["resultType"], data["result"]
        if kind in ("scalar", "string"):
            ts, value = result
            return [Sample({}, _float(value), float(ts))]
        samples = []
        for series in result:
            if kind == "vector":
                ts, value = series["value"]
                samples.append(Sample(dict(series["metric"]), _float(value), float(ts)))
            else:  # matrix
                values = [(float(t), _float(v)) for t, v in series["values"]]
                last_ts, last = values[-1] if values else (math.nan, math.nan)
                samples.append(Sample(dict(series["metric"]), last, last_ts, values))
        return samples

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, as /api/v1/targets lists them (labels, health, lastError...)."""
        data = self.api("targets", state="active")
        return list(data.get("activeTargets", []))

    def wait_for_targets(
        self, count: int, *, job: str = JOB_NAME, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Wait until `job` has exactly `count` active targets, all scraped healthily."""
        deadline = time.monotonic() + timeout
        while True:
            targets = [t for t in self.targets() if t.get("labels", {}).get("job") == job]
            if len(targets) == count and all(t.get("health") == "up" for t in targets):
                return targets
            if time.monotonic() >= deadline:
                summary = [(t.get("labels"), t.get("health"), t.get("lastError")) for t in targets]
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for {count} healthy targets; "
                    f"have {summary}"
                )
            time.sleep(0.1)

    # -- internals -------------------------------------------------------------------------

    def _config(self) -> str:
        # JSON is YAML, and json.dumps quotes every path and value safely.
        refresh = max(int(_seconds(self.scrape_interval)), 1)
        job = file_sd_job(
            JOB_NAME,
            self.targets_file,
            metrics_path=self.metrics_path,
            # Prometheus watches the file (inotify); the refresh is only the fallback.
            refresh_interval=f"{refresh}s",
        )
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
                "external_labels": {"testbed_instance": self._instance},
            },
            "scrape_configs": [job, *self.extra_jobs],
        }
        return json.dumps(config, indent=2) + "\n"


def _float(value: Any) -> float:
    return float(value)  # Prometheus sends "NaN", "+Inf" etc. as strings; float() takes them
