"""Waiting for observable state: poll until a condition holds, never sleep a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    fn: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """fn() until it returns something other than None/False; TimeoutError naming `what`
    (and carrying on_timeout()'s diagnostics)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last is not None and last is not False:
            return last
        if time.monotonic() >= deadline:
            detail = f"\n{on_timeout()}" if on_timeout is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)
