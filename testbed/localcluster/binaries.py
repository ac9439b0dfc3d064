"""Locating (and, on first use, building) the control-plane binaries via testbed/build.sh."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build.sh"
REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)


class BinariesError(RuntimeError):
    """build.sh failed or did not produce the binaries."""


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    # Parallel test workers (pytest-xdist) or a demo started during a test run would otherwise
    # run two cold builds into the same partial directory. The lock lives next to the cache.
    cache_root = Path(
        os.environ.get("FILTERRELEASE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "filterrelease"
    )
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / "testbed-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_binaries() -> Path:
    """Run build.sh (a fast no-op once cached) and return the directory holding the binaries.

    build.sh prints progress on stderr, which we pass through untouched so a cold build of
    several minutes shows signs of life, and prints the bin dir as the last line of stdout.
    """
    with _build_lock():
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise BinariesError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise BinariesError(f"{BUILD_SCRIPT} printed no bin directory")
    bin_dir = Path(lines[-1].strip())
    missing = [b for b in REQUIRED if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise BinariesError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir
