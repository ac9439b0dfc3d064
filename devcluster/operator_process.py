"""Run the operator as a real subprocess (`python -m filterrelease`) against a local cluster."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from localcluster.network import free_ports
from localcluster.processes import ManagedProcess, StartStop


class OperatorProcess(StartStop):
    """The operator, started with `kubeconfig`; its log goes to `log_path`."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        resync_seconds: float = 300,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.extra_env = extra_env or {}
        self.metrics_port, self.health_port, self.webhook_port = free_ports(3)
        self._proc: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 60) -> None:
        env = {
            **os.environ,
            # The pod admission webhook on loopback, where the local API server calls it; the
            # certificate is self-signed for 127.0.0.1. extra_env may change any of this.
            "FILTERRELEASE_WEBHOOK_ADDRESS": "127.0.0.1",
            "FILTERRELEASE_WEBHOOK_PORT": str(self.webhook_port),
            "FILTERRELEASE_WEBHOOK_HOST": "127.0.0.1",
            **self.extra_env,
            "KUBECONFIG": str(self.kubeconfig),
            "FILTERRELEASE_RESYNC_SECONDS": str(self.resync_seconds),
            "FILTERRELEASE_METRICS_ADDRESS": "127.0.0.1",
            "FILTERRELEASE_METRICS_PORT": str(self.metrics_port),
            "FILTERRELEASE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.health_port}/healthz",
        }
        self._proc = ManagedProcess(
            "filterrelease", [sys.executable, "-m", "filterrelease"], self.log_path, env=env
        )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not self._proc.alive():
                raise RuntimeError(f"operator exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"operator not healthy after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        return self._get(f"http://127.0.0.1:{self.health_port}/healthz") is not None

    def metrics(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""

    def metric(self, metric: str, /, **labels: str) -> float:
        """The value of one sample of the operator's metrics, 0 when absent."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        head = f"{metric}{{{want}}}" if labels else metric
        for line in self.metrics().splitlines():
            if line.startswith(head + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else "(not started)"

    def stop(self, grace: float = 15) -> None:
        if self._proc is not None:
            self._proc.stop(grace)

    def kill(self) -> None:
        """SIGKILL, as a crashed or evicted pod would die."""
        if self._proc is not None and self._proc.alive():
            self._proc.signal_group(signal.SIGKILL)
            self._proc.wait(10)

    @staticmethod
    def _get(url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310  (loopback only)
                body: bytes = resp.read()
                return body.decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
