"""Errors raised by the local cluster launcher."""

from __future__ import annotations

import subprocess


class ClusterStartError(RuntimeError):
    """A component failed to come up; the message carries the tail of its log."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; unlike CalledProcessError, str() shows what kubectl said."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()
