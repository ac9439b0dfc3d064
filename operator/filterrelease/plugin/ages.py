"""Ages as kubectl prints them ("45s", "5m", "2h10m", "3d"): precise when young, coarse when old."""

from __future__ import annotations

from datetime import UTC, datetime


def human_duration(seconds: float) -> str:
    """kubectl's rounding: the second unit is shown only while it still matters."""
    s = int(seconds)
    if s < 0:
        return "0s"  # a clock a little ahead of ours
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(stamp: str | None, now: datetime) -> str:
    """How long ago an RFC 3339 timestamp was; "<unknown>" when there is none to read."""
    if not stamp:
        return "<unknown>"
    try:
        # Conditions are to the second; Events' eventTime carries microseconds.
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return human_duration((now - then).total_seconds())
