"""Loopback ports and health probes of the local cluster's endpoints."""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports.

    All sockets stay open until every port is picked, so the kernel cannot hand out the same
    port twice; two clusters starting at once can still race for a port between our close and
    the component's bind, which then fails loudly in start() rather than silently sharing.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
        return ports


def client_tls(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A TLS context that trusts our CA and optionally presents a client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def http_ok(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """True if GET url answers 200; any connection or HTTP error is just "not yet"."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:  # noqa: S310 - our own loopback URLs
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


def http_get(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> str:
    """Body of GET url, or the error as text (for diagnostics only)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:  # noqa: S310 - our own loopback URLs
            return str(resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
