"""Reading Wasm modules from OCI registries and HTTP servers, the way istio-agent fetches them.

One small synchronous client (the shell runs it in a worker thread). It resolves a reference to
its manifest, fetches blobs and verifies each against its digest, and authenticates with a
dockerconfigjson pull secret: Basic, or the Bearer-token challenge that public registries use,
tokens cached per registry, scope and secret until they expire (registry_auth.py). Redirects,
which registries answer blob GETs with, are followed without the credentials unless they stay
on the registry's own origin (registry_http.py).

Where istio-agent has a rule, this client has the same one, so that pre-flight judges a module
the way the proxies will fetch it (istio pkg/wasm: imagefetcher.go, httpfetcher.go, cache.go):
- a registry that answers TLS with plain HTTP is used over plain HTTP, whichever registry it is:
  istio-agent retries any reference with name.Insecure when the error says "server gave HTTP
  response to HTTPS client", with the pull secret, so the proxies will fetch from it;
- `insecure_registries` is WASM_INSECURE_REGISTRIES: hosts (host[:port], as written in the
  module URL) whose TLS certificate is not verified, "*" for all, for oci:// and https://
  modules alike. That is all it does in istio-agent: plain HTTP needs no listing there either;
- `ca_file` has no istio-agent counterpart (the proxies trust their image's CAs): it lets
  pre-flight trust a private registry's CA in addition to the system's.
Stricter than istio-agent, on purpose: a redirect from https to http is refused, and the pull
secret is not sent to a plain-http token realm named by an https registry.

Failures come out as ModuleProblem with a reason: NotFound, Unauthorized, ChecksumMismatch, or
RegistryUnavailable for what may pass on a retry (connection refused, timeouts, 5xx, a redirect
that is refused). No message quotes a pull secret, a token, or a URL's userinfo or query.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable

from filterrelease.core.module import (
    DOCKER_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    ModuleProblem,
    OciRef,
    Reason,
    sha256_hex,
)
from filterrelease.providers.registry_auth import (
    Challenge,
    Credentials,
    TokenAnswerError,
    TokenCache,
    credentials_for,
    parse_challenge,
    parse_token_answer,
    scrub,
)
from filterrelease.providers.registry_http import (
    MAX_MODULE_BYTES,
    MAX_REDIRECTS,
    Origin,
    PlainHttp,
    Response,
    Transport,
    Unreachable,
    origin,
    redact,
    tls_contexts,
    without_userinfo,
)

__all__ = ["MAX_MODULE_BYTES", "Credentials", "RegistryClient", "credentials_for"]


class RegistryClient:
    def __init__(
        self,
        timeout: float = 10.0,
        *,
        ca_file: str = "",
        insecure_registries: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self._http = Transport(timeout, max_redirects=max_redirects)
        self._verifying, self._unverified = tls_contexts(ca_file)
        self._insecure = frozenset(h.strip().lower() for h in insecure_registries if h.strip())
        # Wall clock: token answers say when they were issued in wall-clock time.
        self._clock = clock
        self._tokens = TokenCache(clock)
        self._lock = threading.Lock()  # pulls of several releases run in threads at once
        self._scheme: dict[str, str] = {}  # registry host -> the scheme that worked
        # (registry, repository) -> the token scope the registry asked for, so that the next
        # request there carries the cached token instead of collecting another challenge.
        self._scopes: dict[tuple[str, str], str] = {}

    # -- public ---------------------------------------------------------------------------

    def manifest(self, ref: OciRef, creds: Credentials | None) -> tuple[bytes, str, str]:
        """The manifest of ref: (body, media type, digest "sha256:<hex>")."""
        path = f"/v2/{ref.repository}/manifests/{ref.reference}"
        accept = ", ".join((*MANIFEST_ACCEPT, OCI_INDEX, DOCKER_LIST))
        resp = self._get(ref, path, creds, {"Accept": accept}, what=f"manifest {ref.reference}")
        digest = "sha256:" + sha256_hex(resp.body)
        served = resp.headers.get("docker-content-digest")
        if served and served != digest:
            raise ModuleProblem(
                Reason.CHECKSUM_MISMATCH,
                f"the registry says the manifest is {served} but its bytes hash to {digest}",
            )
        if ref.digest and ref.digest != digest:
            raise ModuleProblem(
                Reason.CHECKSUM_MISMATCH,
                f"asked for manifest {ref.digest} but received one hashing to {digest}",
            )
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        return resp.body, media_type, digest

    def blob(self, ref: OciRef, digest: str, creds: Credentials | None) -> bytes:
        resp = self._get(ref, f"/v2/{ref.repository}/blobs/{digest}", creds, {}, what="layer")
        actual = "sha256:" + sha256_hex(resp.body)
        if actual != digest:
            raise ModuleProblem(
                Reason.CHECKSUM_MISMATCH, f"layer {digest} arrived with content hashing to {actual}"
            )
        return resp.body

    def download(self, url: str) -> bytes:
        """An http(s):// module. User:password in the URL is sent as Basic auth to that URL's
        origin only, as istio-agent's Go client does."""
        where = redact(url)
        try:
            bare, userinfo = without_userinfo(url)
            trusted = origin(bare)
        except ValueError:
            raise ModuleProblem(Reason.NOT_FOUND, f"{where} is not an http(s) URL") from None
        creds = Credentials(*userinfo) if userinfo else None
        try:
            resp = self._http.get(
                bare,
                {},
                authorization=creds.basic() if creds else None,
                tls=self._tls(urllib.parse.urlsplit(bare).netloc),
            )
        except PlainHttp:
            raise ModuleProblem(
                Reason.REGISTRY_UNAVAILABLE,
                f"{where}: the server answers https in plain HTTP; use an http:// URL",
            ) from None
        except Unreachable as err:
            raise ModuleProblem(Reason.REGISTRY_UNAVAILABLE, err.message) from None
        if resp.status == 200:
            return resp.body
        hint = "the server refused the request"
        raise _problem(resp, where, trusted, hint, creds.secrets() if creds else ())

    # -- plumbing -------------------------------------------------------------------------

    def _get(
        self,
        ref: OciRef,
        path: str,
        creds: Credentials | None,
        headers: dict[str, str],
        *,
        what: str,
    ) -> Response:
        target = f"{ref.registry}/{ref.repository} {what}"
        try:
            origin(f"https://{ref.registry}/")
        except ValueError:  # a port that is not a number, say
            raise ModuleProblem(
                Reason.NOT_FOUND, f"{ref.registry} is not a valid registry host[:port]"
            ) from None
        secrets = list(creds.secrets()) if creds else []  # and every token used, below
        try:
            resp = self._authorized(ref, path, creds, headers, target=target, secrets=secrets)
        except Unreachable as err:
            raise ModuleProblem(Reason.REGISTRY_UNAVAILABLE, f"{target}: {err.message}") from None
        if resp.status == 200:
            return resp
        with self._lock:
            scheme = self._scheme.get(ref.registry, "https")
        trusted = origin(f"{scheme}://{ref.registry}/")
        raise _problem(resp, target, trusted, _auth_hint(creds), secrets)

    def _authorized(
        self,
        ref: OciRef,
        path: str,
        creds: Credentials | None,
        headers: dict[str, str],
        *,
        target: str,
        secrets: list[str],
    ) -> Response:
        identity = creds.identity() if creds else ""
        with self._lock:
            scope = self._scopes.get((ref.registry, ref.repository))
        cached = self._tokens.get((ref.registry, scope, identity)) if scope is not None else None
        if cached is not None:
            secrets.append(cached)
            authorization: str | None = f"Bearer {cached}"
        else:
            authorization = creds.basic() if creds else None
        resp = self._on_registry(ref.registry, path, headers, authorization)
        challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
        if resp.status != 401 or challenge is None or challenge.scheme != "bearer":
            return resp
        # First contact, a token that expired early or was revoked, or a scope we did not
        # know: a token for what the registry asks for now, and one more try.
        if cached is not None and scope is not None:
            self._tokens.discard((ref.registry, scope, identity), cached)
        scope = challenge.params.get("scope", "")
        with self._lock:
            self._scopes[(ref.registry, ref.repository)] = scope
        token = self._token(ref.registry, challenge, creds, target)
        secrets.append(token)
        return self._on_registry(ref.registry, path, headers, f"Bearer {token}")

    def _token(
        self, registry: str, challenge: Challenge, creds: Credentials | None, target: str
    ) -> str:
        """A Bearer token from the realm the registry named (distribution's token spec: GET
        with service and scope, Basic credentials when we have them), cached until it
        expires."""
        realm = challenge.params.get("realm", "")
        try:
            realm_scheme = origin(realm)[0]
        except ValueError:
            raise ModuleProblem(
                Reason.UNAUTHORIZED,
                f"{target}: the registry asks for a Bearer token but names no http(s) realm",
            ) from None
        with self._lock:
            registry_scheme = self._scheme.get(registry)
        if realm_scheme == "http" and registry_scheme == "https" and creds is not None:
            raise ModuleProblem(
                Reason.UNAUTHORIZED,
                f"{target}: the registry is https but its token realm {redact(realm)} is plain "
                "http; the pull secret is not sent there in clear text",
            )
        scope = challenge.params.get("scope", "")
        query = [("service", s) for s in [challenge.params.get("service", "")] if s]
        query += [("scope", s) for s in scope.split()]
        joiner = "&" if "?" in realm else "?"
        url = f"{realm}{joiner}{urllib.parse.urlencode(query)}" if query else realm
        where = f"{target}: the token endpoint {redact(realm)}"
        requested = self._clock()
        try:
            resp = self._http.get(
                url, {}, authorization=creds.basic() if creds else None, tls=self._tls(registry)
            )
        except PlainHttp:
            raise ModuleProblem(
                Reason.REGISTRY_UNAVAILABLE, f"{where} answers https in plain HTTP"
            ) from None
        # Nothing the token endpoint says is quoted: it may echo the credentials it was sent.
        if resp.status == 200:
            try:
                token = parse_token_answer(resp.body, requested)
            except TokenAnswerError as err:
                raise ModuleProblem(
                    Reason.UNAUTHORIZED, f"{where} answered with no usable token ({err})"
                ) from None
            self._tokens.put((registry, scope, creds.identity() if creds else ""), token)
            return token.value
        if resp.status >= 500 or resp.status == 429:
            raise ModuleProblem(Reason.REGISTRY_UNAVAILABLE, f"{where} answered HTTP {resp.status}")
        raise ModuleProblem(
            Reason.UNAUTHORIZED, f"{where} answered HTTP {resp.status}; {_auth_hint(creds)}"
        )

    def _on_registry(
        self, registry: str, path: str, headers: dict[str, str], authorization: str | None
    ) -> Response:
        tls = self._tls(registry)
        with self._lock:
            scheme = self._scheme.get(registry)
        if scheme == "http":
            url = f"http://{registry}{path}"
            return self._http.get(url, headers, authorization=authorization, tls=tls)
        # Unknown yet, or https so far: a registry that has since moved to plain HTTP is
        # followed there too rather than failing on a stale memo.
        try:
            url = f"https://{registry}{path}"
            resp = self._http.get(url, headers, authorization=authorization, tls=tls)
            scheme = "https"
        except PlainHttp:
            # As istio-agent does, for any registry (see the module's docstring).
            url = f"http://{registry}{path}"
            resp = self._http.get(url, headers, authorization=authorization, tls=tls)
            scheme = "http"
        with self._lock:
            self._scheme[registry] = scheme
        return resp

    def _tls(self, host: str) -> ssl.SSLContext:
        insecure = "*" in self._insecure or host.lower() in self._insecure
        return self._unverified if insecure else self._verifying


def _auth_hint(creds: Credentials | None) -> str:
    if creds is not None:
        return "the credentials in spec.module.imagePullSecret were refused"
    return (
        "the registry needs credentials: set spec.module.imagePullSecret to a "
        "kubernetes.io/dockerconfigjson Secret in the release's namespace"
    )


def _problem(
    resp: Response, target: str, trusted: Origin, auth_hint: str, secrets: Iterable[str]
) -> ModuleProblem:
    """The verdict on a final answer that is not 200."""
    status = resp.status
    if origin(resp.url) != trusted:
        # Storage the registry redirected to: its refusals say nothing of the pull secret
        # (it never saw it), and its error text may quote the presigned URL's signature.
        source = f"HTTP {status} from {redact(resp.url)}, where the registry redirected"
        if status == 404:
            return ModuleProblem(Reason.NOT_FOUND, f"{target}: {source}")
        return ModuleProblem(Reason.REGISTRY_UNAVAILABLE, f"{target}: {source}")
    detail = scrub(resp.body.decode("utf-8", "replace"), secrets).strip()[:300]
    if status == 404:
        return ModuleProblem(Reason.NOT_FOUND, f"{target} does not exist (404): check the tag")
    if status in (401, 403):
        return ModuleProblem(Reason.UNAUTHORIZED, f"{target}: HTTP {status}; {auth_hint}")
    if status >= 500 or status == 429:
        return ModuleProblem(
            Reason.REGISTRY_UNAVAILABLE, f"{target}: the registry answered HTTP {status} {detail}"
        )
    return ModuleProblem(Reason.NOT_FOUND, f"{target}: HTTP {status} {detail}")
