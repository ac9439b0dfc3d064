"""Reading the sidecars' JSON access logs: parse one line, and tail a file incrementally.

One JSON object per line, as the mesh agent configures Envoy's file access log. Only the fields
the metrics need are interpreted; the rest is kept in `raw`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AccessLogEntry:
    """One request as the sidecar logged it."""

    response_code: int
    response_flags: str
    duration_ms: float | None
    method: str = ""
    path: str = ""
    start_time: str = ""
    upstream_host: str = ""
    request_id: str = ""
    x_filter_version: str = ""
    protocol: str = ""
    # Wire bytes of the request and response (headers and body) on the client's side of the
    # sidecar; None when the line does not carry them.
    request_bytes: float | None = None
    response_bytes: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _text(value: Any) -> str:
    """Envoy writes "-" (or null) for a missing value; both become ""."""
    if value is None:
        return ""
    text = str(value)
    return "" if text == "-" else text


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def parse_line(line: str) -> AccessLogEntry | None:
    """The entry a JSON access-log line describes, or None for anything else.

    A line that is not a JSON object (a partial write, a stray message) is skipped rather than
    failing the whole tail: metrics must keep flowing while a sidecar misbehaves.
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    code = _number(obj.get("response_code"))
    flags = _text(obj.get("response_flags")) or "-"
    return AccessLogEntry(
        response_code=int(code) if code is not None else 0,
        response_flags=flags,
        duration_ms=_number(obj.get("duration_ms", obj.get("duration"))),
        method=_text(obj.get("method")),
        path=_text(obj.get("path")),
        start_time=_text(obj.get("start_time")),
        upstream_host=_text(obj.get("upstream_host")),
        request_id=_text(obj.get("request_id")),
        x_filter_version=_text(obj.get("x_filter_version")),
        protocol=_text(obj.get("protocol")),
        request_bytes=_number(obj.get("downstream_wire_bytes_received")),
        response_bytes=_number(obj.get("downstream_wire_bytes_sent")),
        raw=obj,
    )


class FileTail:
    """Complete new lines of a growing file, one read() at a time.

    Keeps the byte offset and an unfinished last line between calls. A file that is replaced
    (new inode) or truncated is read again from its start. A missing file yields nothing.
    """

    def __init__(self, path: Path, *, start_offset: int = 0, max_chunk: int = 4 << 20) -> None:
        self.path = path
        self._offset = start_offset
        self._inode: int | None = None
        self._partial = b""
        self._max_chunk = max_chunk

    @property
    def offset(self) -> int:
        return self._offset

    def read_lines(self) -> list[str]:
        """The lines completed since the last call (without their newlines)."""
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size < self._offset or (
                    self._inode is not None and st.st_ino != self._inode
                ):
                    self._offset = 0
                    self._partial = b""
                self._inode = st.st_ino
                if st.st_size <= self._offset:
                    return []
                f.seek(self._offset)
                data = f.read(min(st.st_size - self._offset, self._max_chunk))
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines]
