"""HTTP GETs for the registry client: redirects followed by hand, credentials kept to their host.

urllib's redirect handler copies every header but Content-Length/Content-Type into the
redirected request, Authorization included; registries answer blob GETs with a redirect to
object storage or a CDN on another host (ECR to S3 presigned URLs, Docker Hub to its CDN), so a
pull secret's password or token would go there, and S3 refuses a presigned request that also
carries Authorization (HTTP 400). So urllib follows no redirect here; `Transport.get` does:

- Authorization goes only to the origin (scheme, host, port) of the URL it was meant for: the
  registry, or the token realm the registry named. That is what istio-agent's own client does
  (go-containerregistry sets it only when the request's host:port, default port filled in,
  is the registry's) and what containerd does (it authorizes a redirected request only for a
  host it holds a challenge for). Subdomains get nothing either (Go's net/http would send it
  to them): an object store under the registry's domain is still another service. Once a
  chain has left the origin the header is not sent again, even if it comes back to it.
- At most MAX_REDIRECTS hops (Go's and containerd's limit), http(s) only, and never from
  https to plain http: the rest of the download would travel in clear and unauthenticated.
- TLS verifies with the system CAs plus an optional extra bundle, or not at all for the
  insecure registries; the pull's whole chain (redirects, token realm) uses the registry's
  choice, as istio-agent's per-fetch transport does.

Messages name URLs without userinfo or query (a presigned URL's query is a credential).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_MODULE_BYTES = 64 * 1024 * 1024  # Envoy would not load a larger module anyway
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
ERROR_BODY_BYTES = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Unreachable(Exception):  # noqa: N818  (an outcome, like ModuleProblem)
    """No answer worth judging (connection refused, timeout, TLS failure, a bad redirect):
    the registry is unavailable, which says nothing about the module."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedirectRefused(Unreachable):
    """A redirect we will not follow (https to http, not http(s), too many hops)."""


class PlainHttp(Exception):  # noqa: N818
    """The first URL is https but the server answered in plain HTTP."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lowercased
    body: bytes
    url: str  # where this answer came from, after redirects


Origin = tuple[str, str, int]


def origin(url: str) -> Origin:
    """(scheme, host, port) of an http(s) URL, the default port filled in; ValueError if the
    URL has none."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]


def redact(url: str) -> str:
    """The URL for a message: no userinfo, no query, no fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
    except ValueError:
        return "<unparsable URL>"
    netloc = f"{host}:{port}" if port else host
    query = "?…" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


def without_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user:password@, and that user and password (percent-decoded)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return bare, (urllib.parse.unquote(user), urllib.parse.unquote(password))


def next_hop(current: str, location: str) -> str:
    """The absolute URL a redirect from `current` leads to; RedirectRefused when it is not
    one to follow. Userinfo in a Location is dropped: credentials come from the pull secret
    and go to the registry only."""
    try:
        target, _ = without_userinfo(urllib.parse.urljoin(current, location.strip()))
        to = origin(target)
        frm = origin(current)
    except ValueError:
        raise RedirectRefused(
            f"{redact(current)} redirected to {redact(location)}, which is not an http(s) URL"
        ) from None
    if frm[0] == "https" and to[0] == "http":
        raise RedirectRefused(
            f"{redact(current)} redirected to plain http ({redact(target)}): refused, the "
            "download would travel unencrypted"
        )
    return target


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hands every 3xx back as an HTTPError: Transport.get decides what to follow."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def tls_contexts(ca_file: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(verifying, not verifying) TLS contexts. The verifying one trusts the system CAs and
    the PEM bundle `ca_file` too; create_default_context(cafile=...) would trust the file
    *instead of* the system's, so it is loaded afterwards."""
    verifying = ssl.create_default_context()
    if ca_file:
        try:
            verifying.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"cannot load the registry CA bundle {ca_file}: {err}") from err
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only for the registries named insecure
    return verifying, insecure


class Transport:
    """GETs with redirects followed under the rules above; one per RegistryClient."""

    def __init__(self, timeout: float, *, max_redirects: int = MAX_REDIRECTS) -> None:
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._openers: dict[int, urllib.request.OpenerDirector] = {}

    def get(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        authorization: str | None,
        tls: ssl.SSLContext,
    ) -> Response:
        """The final answer to GET url (any status but a redirect). `authorization` is sent to
        url's own origin only. PlainHttp when url is https and the server speaks plain HTTP;
        Unreachable (or RedirectRefused) when there is no answer to judge."""
        try:
            trusted = origin(url)
        except ValueError:
            raise Unreachable(f"{redact(url)} is not an http(s) URL") from None
        credentials = authorization
        current = url
        for hop in range(self._max_redirects + 1):
            sent = dict(headers)
            if credentials is not None:
                sent["Authorization"] = credentials
            resp = self._send(current, sent, tls, first=hop == 0)
            if resp.status not in REDIRECT_STATUSES:
                return resp
            location = resp.headers.get("location")
            if not location:
                raise Unreachable(f"{redact(current)} answered HTTP {resp.status} with no Location")
            current = next_hop(current, location)
            if origin(current) != trusted:
                credentials = None
        raise RedirectRefused(f"{redact(url)}: more than {self._max_redirects} redirects")

    def _opener(self, tls: ssl.SSLContext) -> urllib.request.OpenerDirector:
        opener = self._openers.get(id(tls))
        if opener is None:
            # The default handlers stay (environment proxies among them); ours replace the
            # redirect and https ones.
            opener = urllib.request.build_opener(
                _NoRedirects, urllib.request.HTTPSHandler(context=tls)
            )
            self._openers[id(tls)] = opener
        return opener

    def _send(
        self, url: str, headers: Mapping[str, str], tls: ssl.SSLContext, *, first: bool
    ) -> Response:
        try:
            request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310  (http(s), checked by origin())
            with self._opener(tls).open(request, timeout=self._timeout) as resp:
                # One byte over the bound, so that the caller can tell a module too large.
                body = resp.read(MAX_MODULE_BYTES + 1)
                return Response(resp.status, _lower(resp.headers.items()), body, url)
        except urllib.error.HTTPError as err:
            with err:
                try:
                    body = b"" if err.code in REDIRECT_STATUSES else err.read(ERROR_BODY_BYTES)
                except (OSError, http.client.HTTPException):
                    body = b""  # the status is the answer; its text is a courtesy
                return Response(err.code, _lower(err.headers.items()), body, url)
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(reason):
                if first:
                    raise PlainHttp from None
                raise Unreachable(f"{redact(url)} answers TLS with plain HTTP") from None
            raise Unreachable(f"cannot reach {redact(url)}: {_reason(reason)}") from None
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, bad answers
            raise Unreachable(f"cannot reach {redact(url)}: {_reason(err)}") from None
        except ValueError:  # http.client's InvalidURL quotes the URL, userinfo and all
            raise Unreachable(f"cannot request {redact(url)}: not a valid URL") from None


def _reason(reason: object) -> str:
    """Why a connection failed, without anything it may have quoted of a URL."""
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {reason.verify_message}"
    if isinstance(reason, ssl.SSLError):
        return str(reason.reason or type(reason).__name__)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(reason, http.client.HTTPException):
        return f"bad HTTP answer ({type(reason).__name__})"
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}
