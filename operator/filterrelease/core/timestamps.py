"""The one way the operator writes and reads a moment: UTC, to the second, as Kubernetes writes
its own condition times ("2026-11-24T12:00:00Z"). Every time in the status, in measurements and
in Events goes through here."""

from __future__ import annotations

from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def seconds_since(stamp: str | None, now: datetime) -> float:
    """Seconds from a stored moment to now; 0 when none is stored."""
    return (now - parse_timestamp(stamp)).total_seconds() if stamp else 0.0
