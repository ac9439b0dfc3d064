"""Child processes of the local cluster: started so that none can outlive us, stopped as a group.

Three layers make sure no component is left behind:
  * each child leads its own session/process group, so a stop signal reaches anything it forks;
  * on Linux each child asks the kernel (PR_SET_PDEATHSIG) for SIGKILL when its parent dies,
    which covers the case where Python itself is SIGKILLed and no cleanup code runs;
  * LocalCluster registers an atexit hook that calls stop() on normal interpreter exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from localcluster.network import LOOPBACK, free_ports

_PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    # Resolve prctl in the parent: the preexec hook runs between fork and exec, where doing
    # as little as possible (no dlopen) is the safe thing.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # If the parent died between fork and prctl the signal will never come: exit now.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class StartStop:
    """`with thing as t:` starts it and stops it however the block ends."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedProcess:
    """One running component, its process group and its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            # The child gets its own copy of the descriptor; ours is closed when the `with`
            # ends, so no log file stays open in the parent for the life of the cluster.
            # Note: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so
            # start clusters from a thread that lives as long as the cluster (pytest: main).
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509 - needed for PDEATHSIG
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the whole process group (the child is its leader: pgid == pid)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait for the leader to exit; True if it did."""
        try:
            self.popen.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace: float) -> None:
        """SIGTERM the group, give it `grace` seconds, then SIGKILL the group. Never raises."""
        try:
            if self.alive():
                self.signal_group(signal.SIGTERM)
                if not self.wait(grace):
                    self.signal_group(signal.SIGKILL)
                    self.wait(5)
            # Anything the leader forked and left in its group goes too.
            self.signal_group(signal.SIGKILL)
        except Exception as exc:  # stop must never raise; report and carry on
            print(f"localcluster: stopping {self.name} failed: {exc!r}", file=sys.stderr)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def describe_exit(self) -> str:
        code = self.popen.poll()
        if code is None:
            return f"{self.name} (pid {self.pid}) is running"
        return f"{self.name} (pid {self.pid}) exited with code {code}"


def wait_until_ready(
    proc: ManagedProcess,
    ready: Callable[[], bool],
    *,
    name: str,
    endpoint: str,
    timeout: float,
    error: type[Exception],
) -> None:
    """Poll `ready` until it is true; raise `error`, with the process's log tail, if the
    process exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not proc.alive():
            raise error(
                f"{proc.describe_exit()} before answering on {endpoint}; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        if time.monotonic() >= deadline:
            raise error(
                f"{name} did not answer on {endpoint} within {timeout:g}s; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(0.05)


def stop_in_reverse(processes: Sequence[ManagedProcess], grace: float) -> None:
    """Stop components in reverse start order, so clients go before the servers they use."""
    for proc in reversed(processes):
        proc.stop(grace)


class LoopbackDaemon(StartStop):
    """A server process of ours on 127.0.0.1 (the registries, Prometheus): spawn() writes its
    config and starts it on a free port (kept across restarts), start() waits until ready()
    and stops it again on any failure, stop() is idempotent and never raises."""

    name: str
    ready_path: str  # the endpoint ready() probes, for the timeout message
    error: type[Exception]
    start_timeout: float
    # Seconds it gets to exit after SIGTERM: it holds nothing worth a longer wait.
    stop_grace: float = 5.0

    def __init__(self, port: int | None) -> None:
        self._port = port
        self._process: ManagedProcess | None = None
        self._stopped = False
        self.started_in: float | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        if self._process is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._process

    def spawn(self) -> ManagedProcess:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def _claim_port(self) -> int:
        """The port to listen on; a daemon is spawned once per start."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} can be started only once (restart() after stop())")
        if self._port is None:
            self._port = free_ports(1)[0]
        return self._port

    def start(self, timeout: float | None = None) -> None:
        t0 = time.monotonic()
        proc = self.spawn()
        try:
            wait_until_ready(
                proc,
                self.ready,
                name=self.name,
                endpoint=f"{self.url}{self.ready_path}",
                timeout=self.start_timeout if timeout is None else timeout,
                error=self.error,
            )
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        print(
            f"localcluster: {self.name} up in {self.started_in:.2f}s: {self.url}",
            file=sys.stderr,
            flush=True,
        )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._process is not None:
            self._process.stop(self.stop_grace)

    def restart(self, timeout: float | None = None) -> None:
        """Start again after stop(), on the same port and data: an outage that ends (what
        points at its URL stays valid)."""
        self.stop()
        self._process = None
        self._stopped = False
        self.start(timeout)
