"""Measurement series that outlive the status's window. Pure.

The status keeps only the last few measurements of each metric, and only of the current
analysis step; the dashboard keeps every one it has seen for the rollout, so a plot covers the
whole rollout since the dashboard started. A measurement is identified by its metric and when
it finished: the same one seen again in the next status is not a new point.
"""

from __future__ import annotations

from typing import Any

# Enough for a long rollout at one measurement every few seconds, and bounded all the same.
MAX_POINTS = 720


class MeasurementSeries:
    """Every measurement seen for one release's current rollout, per metric, oldest first."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.revision: str | None = None
        self.max_points = max_points
        self._points: dict[str, list[dict[str, Any]]] = {}
        self._seen: set[tuple[str, str]] = set()

    def add(self, status: dict[str, Any]) -> bool:
        """Take in a status; True when a point was added (or a new rollout dropped the old)."""
        rollout = status.get("rollout") or {}
        revision = rollout.get("revision")
        changed = False
        if revision is not None and revision != self.revision:
            # A new rollout is another canary: its points are not comparable with the last one's.
            changed = bool(self._points)
            self.revision = revision
            self._points = {}
            self._seen = set()
        for source in ("analysis", "background"):
            for result in rollout.get(source) or []:
                for measurement in result.get("measurements") or []:
                    changed = self._add_point(result, measurement) or changed
        return changed

    def _add_point(self, result: dict[str, Any], measurement: dict[str, Any]) -> bool:
        metric = str(measurement.get("metric") or result.get("name") or "")
        finished = str(measurement.get("finishedAt") or "")
        if not metric or not finished or (metric, finished) in self._seen:
            return False
        self._seen.add((metric, finished))
        points = self._points.setdefault(metric, [])
        points.append(
            {
                "at": finished,
                "phase": measurement.get("phase") or "",
                "value": measurement.get("value"),
                "baseline": measurement.get("baseline"),
                "message": measurement.get("message") or "",
            }
        )
        points.sort(key=lambda p: str(p["at"]))
        if len(points) > self.max_points:
            for dropped in points[: len(points) - self.max_points]:
                self._seen.discard((metric, str(dropped["at"])))
            del points[: len(points) - self.max_points]
        return True

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        """A copy: metric → its points, oldest first."""
        return {name: [dict(p) for p in points] for name, points in self._points.items()}
