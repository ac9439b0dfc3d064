"""The releases the dashboard knows, kept from the watch thread and read by the handlers, and
the browsers' live streams it feeds."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from filterrelease.dashboard.rows import release_key, release_row
from filterrelease.dashboard.series import MeasurementSeries

Key = tuple[str, str]


class Board:
    """Every release the watch has seen, with its measurement series (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._releases: dict[Key, dict[str, Any]] = {}
        self._series: dict[Key, MeasurementSeries] = {}

    def apply(self, kind: str, release: dict[str, Any]) -> dict[str, Any] | None:
        """A watch event; the message for the browsers, or None when nothing they see changed."""
        key = release_key(release)
        with self._lock:
            if kind == "DELETED":
                self._series.pop(key, None)
                if self._releases.pop(key, None) is None:
                    return None
                return {"type": "deleted", "namespace": key[0], "name": key[1]}
            old = self._releases.get(key)
            version = _resource_version(release)
            if old is not None and version and _resource_version(old) == version:
                return None  # the same object again (the watch's first list after a restart)
            self._releases[key] = release
            self._series.setdefault(key, MeasurementSeries()).add(release.get("status") or {})
        return {"type": "release", "row": release_row(release)}

    def replace(self, releases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A fresh list (after the watch was lost): what changed, deletions included."""
        keys = {release_key(r) for r in releases}
        with self._lock:
            gone = [r for k, r in self._releases.items() if k not in keys]
        messages = [m for r in gone if (m := self.apply("DELETED", r))]
        messages += [m for r in releases if (m := self.apply("MODIFIED", r))]
        return messages

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            releases = list(self._releases.values())
        return sorted((release_row(r) for r in releases), key=lambda r: (r["namespace"], r["name"]))

    def release(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._releases.get(key)

    def metrics(self, key: Key) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            series = self._series.get(key)
            return series.metrics() if series is not None else {}


def _resource_version(release: dict[str, Any]) -> str:
    return str((release.get("metadata") or {}).get("resourceVersion") or "")


class Hub:
    """The connected browsers' event streams: one queue each, fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._queues.discard(queue)

    def publish(self, message: dict[str, Any]) -> None:
        """From the watch thread: handed to the event loop, which owns the queues."""
        self._loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: dict[str, Any] | None) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A browser that stopped reading: drop it (its EventSource reconnects and gets
                # a fresh snapshot) rather than hold messages for it without bound.
                self._end(queue)

    def close(self) -> None:
        """End every stream (None tells a stream handler to return)."""
        for queue in list(self._queues):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._queues.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
