"""One piece of work at a time per release: its reconciles, and the clean-up after it is gone.

Watch events, the resync loop, requeue timers and the track clean-up may all reach the same
release at once. Locks are keyed by (namespace, track label key): the key names a release
among the releases of its namespace, also a deleted release that only its pods' labels still
name (a long name is shortened with a hash there, core/tracks.py). A lock exists only while
someone holds or waits for it, so deleted releases leave nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from filterrelease.core.tracks import track_label


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ReleaseLocks:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}

    @asynccontextmanager
    async def hold(self, namespace: str, key: str) -> AsyncIterator[None]:
        """Hold the lock of the release whose track label key is `key`."""
        entry = self._entries.setdefault((namespace, key), _Entry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[(namespace, key)]

    def of(self, namespace: str, name: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock of the release `name` (as hold() with its key)."""
        return self.hold(namespace, track_label(name))

    def __len__(self) -> int:
        return len(self._entries)
