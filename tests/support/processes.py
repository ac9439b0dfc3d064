"""Whether processes a test started are still there, by pid and by process group."""

from __future__ import annotations

import os


def still_running(pids: dict[str, int]) -> dict[str, int]:
    """The processes, or their process groups, that still exist."""
    return {name: pid for name, pid in pids.items() if _exists(pid) or _group_exists(pid)}


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
