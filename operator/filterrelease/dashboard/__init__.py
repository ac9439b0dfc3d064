"""The rollout dashboard in the browser (`kubectl filterrelease dashboard`): every release live,
a release's steps, pods, measurements, Events and history, and the manual requests."""

from __future__ import annotations

from filterrelease.dashboard.server import serve

__all__ = ["serve"]
