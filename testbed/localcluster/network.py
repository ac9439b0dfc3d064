"""Loopback ports and health probes of the local cluster's endpoints."""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


# Where the kernel picks the local port of an outgoing connection. A port probed free in that
# range can be taken by any connect() on the machine between our probe and the component's bind
# (CI saw kube-apiserver die with "bind: address already in use" exactly so), so we hand out ports
# below it, which only an explicit bind ever takes.
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_EPHEMERAL_RANGE = (32768, 60999)
# The bottom of our window: above the well-known ports local services tend to use (registries,
# Prometheus, databases), and wide enough that two test runs picking at random rarely collide.
_WINDOW_LOW = 20000
_MIN_WINDOW = 2000
# Ports this process handed out lately: their components may not have bound them yet, so a
# probe would find them free. Picked at random, a repeat is rare but not impossible without this.
_RECENT: collections.deque[int] = collections.deque(maxlen=1000)
_RECENT_LOCK = threading.Lock()


def ephemeral_range(path: Path = _EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unknown)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return _LINUX_EPHEMERAL_RANGE
    return low, high


def free_ports(count: int, *, ephemeral: tuple[int, int] | None = None) -> list[int]:
    """`count` distinct loopback ports, free now and outside the kernel's ephemeral range.

    All probe sockets stay open until every port is picked, so no port is handed out twice.
    Outside the ephemeral range only another explicit bind can take a port before the
    component binds it; if the range leaves no room below it, the kernel picks instead.
    """
    low = (ephemeral or ephemeral_range())[0]
    window = range(_WINDOW_LOW, low) if low - _WINDOW_LOW >= _MIN_WINDOW else None
    with contextlib.ExitStack() as stack, _RECENT_LOCK:
        ports: list[int] = []
        candidates = iter(random.sample(window, len(window))) if window else None
        while len(ports) < count:
            wanted = 0 if candidates is None else next(candidates, None)
            if wanted is None:
                raise OSError(f"no free loopback port in {window}")
            if wanted in _RECENT:
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((LOOPBACK, wanted))
            except OSError:
                continue
            ports.append(sock.getsockname()[1])
        _RECENT.extend(ports)
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
