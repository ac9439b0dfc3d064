"""Reading a container's log through the pods/log API (what `kubectl logs` does).

The pods/log API takes a relative `sinceSeconds`, not a moment, and the clocks of the operator
and the node differ, so the log is asked for with a second of slack and with timestamps, and
lines before `since` are dropped here by the time the kubelet stamped them. The body is read
raw (`_preload_content=False`): the client's deserialisation of a `str` response would decode
it as JSON when a line happens to look like JSON. At most `limit_bytes` are read per call, so
a chatty proxy cannot exhaust the operator's memory; the newest lines are then the ones lost,
which the caller sees as fewer lines, never as an error.

The client is synchronous: each call runs in a worker thread (asyncio.to_thread). Failures come
out as KubeError, with the API server's message.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from filterrelease.kube.api import KubeError, _error

DEFAULT_LIMIT_BYTES = 16 * 1024 * 1024
SLACK_SECONDS = 1


def parse_stamp(text: str) -> datetime | None:
    """The RFC 3339 time the API puts before a line with timestamps=true (nanoseconds cut to
    microseconds); None if it is not one."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest[:9] if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def lines_since(body: str, since: datetime) -> list[str]:
    """The lines of a timestamped log body written at or after `since`, without their stamps.
    A line whose stamp cannot be read is kept: dropping it could hide the line that matters."""
    out = []
    for line in body.splitlines():
        stamp_text, sep, content = line.partition(" ")
        stamp = parse_stamp(stamp_text) if sep else None
        if stamp is None:
            out.append(line)
        elif stamp >= since:
            out.append(content)
    return out


class PodLogs:
    """`await logs.read(namespace, pod, container, since)`: the lines since a moment."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        timeout: float = 10.0,
        limit_bytes: int = DEFAULT_LIMIT_BYTES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self._timeout = timeout
        self._limit_bytes = limit_bytes
        self._clock = clock

    async def read(self, namespace: str, pod: str, container: str, since: datetime) -> list[str]:
        return await asyncio.to_thread(self._read, namespace, pod, container, since)

    # The LogReader the providers take (providers/proxylogs.py).
    __call__ = read

    def _read(self, namespace: str, pod: str, container: str, since: datetime) -> list[str]:
        ago = (self._clock() - since).total_seconds()
        try:
            resp: Any = self._core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                since_seconds=max(math.ceil(ago) + SLACK_SECONDS, 1),
                timestamps=True,
                limit_bytes=self._limit_bytes,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            try:
                body = resp.data.decode("utf-8", errors="replace")
            finally:
                resp.release_conn()
        except (ApiException, OSError) as exc:
            raise _error(exc) from exc
        except Exception as exc:  # urllib3 wraps connection errors and timeouts in its own types
            if type(exc).__module__.startswith("urllib3"):
                raise KubeError(0, f"{type(exc).__name__}: {exc}") from exc
            raise
        return lines_since(body, since)
