"""What keeps another web page from acting through the dashboard. Pure.

The dashboard acts with the user's own credentials, so a page on another origin must not reach
it: a POST needs the per-server token (only pages the dashboard served carry it: the
same-origin policy keeps other pages from reading them), and every request must name the host
the dashboard is bound to, or a DNS-rebinding page could become same-origin.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

TOKEN_HEADER = "X-Filterrelease-Token"  # noqa: S105 (a header name, not a secret)
# The addresses that mean "every interface": not something a Host header names.
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 (compared with, never bound here)


def allowed_hosts(address: str, port: int) -> frozenset[str] | None:
    """The Host header values to accept; None for a wildcard bind (in a cluster, reached
    through a Service or a port-forward under any name: read-only is its default)."""
    if address in WILDCARDS:
        return None
    names = {address}
    try:
        if ipaddress.ip_address(address).is_loopback:
            names |= {"localhost", "127.0.0.1", "[::1]"}
        if ipaddress.ip_address(address).version == 6:
            names.add(f"[{address}]")
    except ValueError:
        pass  # a host name: it alone
    return frozenset(f"{name}:{port}" for name in names)


def host_allowed(host: str | None, allowed: frozenset[str] | None) -> bool:
    if allowed is None:
        return True
    return host is not None and host.lower() in allowed


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """A browser's Origin on a POST must be the dashboard's own (absent: not a browser's
    cross-site request, which always carries one)."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return host is not None and parts.scheme in ("http", "https") and parts.netloc == host


def token_matches(sent: str | None, token: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), token.encode())
