"""Reading Wasm modules from OCI registries and HTTP servers, the way istio-agent fetches them.

One small synchronous client (urllib; the shell runs it in a worker thread). It resolves a
reference to its manifest, fetches blobs and verifies each against its digest, authenticates
with a dockerconfigjson pull secret (Basic, or the Bearer-token challenge that public registries
use), and, like istio-agent, falls back from https to plain http when the registry speaks plain
http. Failures come out as ModuleProblem with a reason: NotFound, Unauthorized, ChecksumMismatch,
or RegistryUnavailable for what may pass on a retry (connection refused, timeouts, 5xx).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from filterrelease.core.module import (
    DOCKER_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    ModuleProblem,
    OciRef,
    Reason,
    sha256_hex,
)

MAX_MODULE_BYTES = 64 * 1024 * 1024  # Envoy would not load a larger module anyway


class Credentials:
    """Username/password for one registry host."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def credentials_for(dockerconfigjson: bytes, registry: str) -> Credentials | None:
    """The entry of a kubernetes.io/dockerconfigjson Secret that matches the registry host."""
    try:
        auths = json.loads(dockerconfigjson).get("auths", {})
    except (ValueError, AttributeError) as err:
        raise ModuleProblem(
            Reason.UNAUTHORIZED, f"the pull secret is not valid JSON: {err}"
        ) from err
    for key, entry in auths.items():
        host = re.sub(r"^https?://", "", key).split("/", 1)[0]
        if host != registry:
            continue
        if entry.get("username") is not None:
            return Credentials(entry["username"], entry.get("password", ""))
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return Credentials(user, password)
    return None


class _Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class RegistryClient:
    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._scheme: dict[str, str] = {}  # registry host -> the scheme that worked
        self._ssl = ssl.create_default_context()

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
        """An http(s):// module."""
        try:
            return self._request(url, {}).body
        except _HttpError as err:
            raise _problem(err.status, f"{url}", err.body) from err

    # -- plumbing -------------------------------------------------------------------------

    def _get(
        self,
        ref: OciRef,
        path: str,
        creds: Credentials | None,
        headers: dict[str, str],
        *,
        what: str,
    ) -> _Response:
        target = f"{ref.registry}/{ref.repository} {what}"
        try:
            return self._authenticated(ref, path, creds, headers)
        except _HttpError as err:
            raise _problem(err.status, target, err.body, has_creds=creds is not None) from err

    def _authenticated(
        self, ref: OciRef, path: str, creds: Credentials | None, headers: dict[str, str]
    ) -> _Response:
        if creds is not None:
            headers = {**headers, "Authorization": creds.basic()}
        try:
            return self._on_registry(ref.registry, path, headers)
        except _HttpError as err:
            challenge = err.headers.get("www-authenticate", "")
            if err.status != 401 or not challenge.lower().startswith("bearer"):
                raise
        token = self._bearer_token(challenge, creds)
        return self._on_registry(
            ref.registry, path, {**headers, "Authorization": f"Bearer {token}"}
        )

    def _bearer_token(self, challenge: str, creds: Credentials | None) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm:
            raise _HttpError(401, {}, b"bearer challenge without realm")
        url = realm + "?" + urllib.parse.urlencode(params)
        resp = self._request(url, {"Authorization": creds.basic()} if creds else {})
        body: dict[str, Any] = json.loads(resp.body)
        return str(body.get("token") or body.get("access_token") or "")

    def _on_registry(self, registry: str, path: str, headers: dict[str, str]) -> _Response:
        scheme = self._scheme.get(registry)
        if scheme:
            return self._request(f"{scheme}://{registry}{path}", headers)
        try:
            resp = self._request(f"https://{registry}{path}", headers)
        except _PlainHttpError:
            # As istio-agent does: a registry that answers TLS with plain http is plain http.
            resp = self._request(f"http://{registry}{path}", headers)
            self._scheme[registry] = "http"
            return resp
        self._scheme[registry] = "https"
        return resp

    def _request(self, url: str, headers: dict[str, str]) -> _Response:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310  (http(s) only)
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self._timeout, context=self._ssl
            ) as resp:
                body = resp.read(MAX_MODULE_BYTES + 1)
                return _Response(resp.status, _lower(resp.headers.items()), body)
        except urllib.error.HTTPError as err:
            raise _HttpError(err.code, _lower(err.headers.items()), err.read(4096)) from err
        except urllib.error.URLError as err:
            if isinstance(err.reason, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(err.reason):
                raise _PlainHttpError from err
            raise ModuleProblem(
                Reason.REGISTRY_UNAVAILABLE, f"cannot reach {url}: {err.reason}"
            ) from err
        except (TimeoutError, ConnectionError) as err:
            raise ModuleProblem(Reason.REGISTRY_UNAVAILABLE, f"cannot reach {url}: {err}") from err


class _HttpError(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.body = body


class _PlainHttpError(Exception):
    pass


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def _problem(status: int, target: str, body: bytes, *, has_creds: bool = False) -> ModuleProblem:
    detail = body.decode("utf-8", "replace").strip()[:300]
    if status == 404:
        return ModuleProblem(Reason.NOT_FOUND, f"{target} does not exist (404): check the tag")
    if status in (401, 403):
        hint = (
            "the credentials in spec.module.imagePullSecret were refused"
            if has_creds
            else "the registry needs credentials: set spec.module.imagePullSecret to a "
            "kubernetes.io/dockerconfigjson Secret in the release's namespace"
        )
        return ModuleProblem(Reason.UNAUTHORIZED, f"{target}: HTTP {status}; {hint}")
    if status >= 500 or status == 429:
        return ModuleProblem(
            Reason.REGISTRY_UNAVAILABLE, f"{target}: the registry answered HTTP {status} {detail}"
        )
    return ModuleProblem(Reason.NOT_FOUND, f"{target}: HTTP {status} {detail}")
