"""A TCP load balancer on loopback in front of several replicas: what a Service is in a cluster.

The API server calls a webhook through its Service; the local cluster has no Service network
(Endpoints refuse loopback addresses), so this puts the real Envoy in front of the replicas as a
TCP proxy: one address, connections spread round robin over the replicas that pass an active TCP
health check, and a connection to a replica that just died retried on another one (as a
Service's endpoints drop a pod whose container died). TLS passes through untouched: each replica
presents its own certificate, as behind a Service.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from localcluster.network import LOOPBACK, free_ports
from localcluster.processes import ManagedProcess, StartStop


def balancer_config(listen_port: int, admin_port: int, backends: list[int]) -> dict[str, object]:
    """Envoy's bootstrap: one TCP proxy listener, one cluster of `backends` (loopback ports)."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": LOOPBACK, "port_value": port}}}}
        for port in backends
    ]
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "front",
                    "address": {"socket_address": {"address": LOOPBACK, "port_value": listen_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.tcp_proxy",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters"
                                        ".network.tcp_proxy.v3.TcpProxy",
                                        "stat_prefix": "front",
                                        "cluster": "replicas",
                                        # A replica that died before the health check noticed:
                                        # the next attempt goes to another one.
                                        "max_connect_attempts": 1 + len(backends),
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "replicas",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": "replicas",
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                    "health_checks": [
                        {
                            "timeout": "1s",
                            "interval": "1s",
                            # Envoy checks an idle cluster only every minute by default: the
                            # webhook is idle between pod creations, and must be checked
                            # just as often then.
                            "no_traffic_interval": "1s",
                            "unhealthy_interval": "1s",
                            "unhealthy_threshold": 1,
                            "healthy_threshold": 1,
                            "tcp_health_check": {},
                        }
                    ],
                }
            ],
        },
    }


class TcpBalancer(StartStop):
    """The real Envoy (`envoy` binary) balancing 127.0.0.1:`port` over `backends`."""

    def __init__(self, envoy: Path, backends: list[int], workdir: Path) -> None:
        self.envoy = envoy
        self.backends = backends
        self.workdir = workdir
        self.port, self.admin_port = free_ports(2)
        self._proc: ManagedProcess | None = None

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "balancer.json"
        config.write_text(json.dumps(balancer_config(self.port, self.admin_port, self.backends)))
        self._proc = ManagedProcess(
            "balancer",
            [str(self.envoy), "-c", str(config), "--base-id", str(self.admin_port),
             "--log-level", "warning"],
            self.workdir / "balancer.log",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.healthy_backends() is None:
            if not self._proc.alive() or time.monotonic() > deadline:
                log = self._proc.log_tail()
                self.stop()
                raise RuntimeError(f"balancer did not start:\n{log}")
            time.sleep(0.1)

    def healthy_backends(self) -> set[int] | None:
        """The backend ports Envoy's health check passes now; None while its admin is down."""
        url = f"http://{LOOPBACK}:{self.admin_port}/clusters?format=json"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                clusters = json.load(resp)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None
        healthy: set[int] = set()
        for cluster in clusters.get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                status = host.get("health_status", {})
                if status.get("eds_health_status") == "HEALTHY" and not status.get(
                    "failed_active_health_check"
                ):
                    healthy.add(int(host["address"]["socket_address"]["port_value"]))
        return healthy

    def describe(self) -> str:
        """Envoy's view of the backends and its log, for a failure message."""
        url = f"http://{LOOPBACK}:{self.admin_port}/clusters"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                clusters = resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            clusters = f"(admin unreachable: {err})"
        tail = self._proc.log_tail() if self._proc else "(not started)"
        return f"backends {self.backends}:\n{clusters}\n{tail}"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(5)
