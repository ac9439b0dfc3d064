"""A registry that answers blob GETs with a redirect to object storage on another host, as ECR
(to S3) and Docker Hub (to its CDN) do, with Basic auth or the Bearer-token flow. On loopback.

    with RedirectingSetup(tmp_path, auth="bearer") as setup:
        digest = setup.publish("filters/x", "v1", wasm)
        ... pull oci://{setup.front.host}/filters/x:v1 with setup.credentials ...
        setup.blob_store.seen   # every request the object store received, headers and all
        setup.token_server.seen # every token request

Four parts, each a real server:
- `origin`: a plain docker-registry (distribution 2.8) that takes the pushes, no auth;
- `front`: a second docker-registry on the same storage with auth (htpasswd, or token auth
  verifying the JWTs our token server signs) and distribution's own `redirect` storage
  middleware, which answers every blob GET with 307 to `<baseurl><storage path>`;
- `blob_store` ("object storage", 127.0.0.2 by default): serves the storage directory at those
  paths, records every request, and refuses any carrying Authorization with HTTP 400 as S3
  does for a presigned URL ("Only one auth mechanism allowed");
- `token_server` (the token realm, 127.0.0.3): distribution's token protocol, ES256 JWTs with
  an x5c chain to the CA in the front's rootcertbundle; a refusal echoes the request's
  Authorization back, the worst a token endpoint can do, so that a client quoting error
  bodies is caught.

Pushes go to the origin because the publisher (oci_publish) lets urllib follow the front's
redirects, Authorization and all, which the object store refuses, as S3 would.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import secrets
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from localcluster.network import LOOPBACK
from localcluster.oci_publish import Layout, publish
from localcluster.pki import CertificateAuthority, CertKey
from localcluster.processes import StartStop
from localcluster.registry import _INSTANCE_HEADER, Registry

BLOB_STORE_HOST = "127.0.0.2"  # another host than the registry's 127.0.0.1, not just a port
TOKEN_REALM_HOST = "127.0.0.3"  # noqa: S105  (an address, not a password)
TOKEN_SERVICE = "testbed-registry"  # noqa: S105
TOKEN_ISSUER = "testbed-token-server"  # noqa: S105
# What the token server writes in `exp`: long enough that the registry never refuses a token
# for its age during a test; what a client believes is `expires_in` in the answer.
_JWT_SECONDS = 3600


@dataclass(frozen=True)
class Seen:
    """One request a test server received."""

    method: str
    path: str  # with the query
    headers: dict[str, str]  # names lowercased

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)


class _Server(StartStop):
    """An in-process ThreadingHTTPServer on one loopback address, stopped on stop()."""

    def __init__(self, host: str) -> None:
        self.bind_host = host
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.bind_host}:{self.port}"

    def record(self, handler: BaseHTTPRequestHandler) -> Seen:
        seen = Seen(
            handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}
        )
        with self._lock:
            self.seen.append(seen)
        return seen

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> None:
        self._server = ThreadingHTTPServer((self.bind_host, 0), self.handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


def _reply(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
) -> None:
    handler.send_response(status)
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class BlobStore(_Server):
    """Object storage for the front's redirects: the files under `root`, by path."""

    def __init__(self, root: Path, host: str = BLOB_STORE_HOST) -> None:
        super().__init__(host)
        self.root = root.resolve()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                store.record(self)
                if "Authorization" in self.headers:
                    body = (
                        b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                        b"allowed; only the X-Amz-Algorithm query parameter, Signature query "
                        b"string parameter or the Authorization header should be specified"
                        b"</Message></Error>"
                    )
                    _reply(self, 400, body, {"Content-Type": "application/xml"})
                    return
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                file = (store.root / path.lstrip("/")).resolve()
                if not file.is_relative_to(store.root) or not file.is_file():
                    _reply(self, 404, b"<Error><Code>NoSuchKey</Code></Error>", {})
                    return
                data = file.read_bytes()
                _reply(self, 200, data, {"Content-Type": "application/octet-stream"})

            def do_HEAD(self) -> None:
                self.do_GET()

        return Handler


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(_Server):
    """The token realm: GET /token?service=...&scope=... with Basic credentials."""

    def __init__(
        self,
        workdir: Path,
        username: str,
        password: str,
        *,
        host: str = TOKEN_REALM_HOST,
        expires_in: int | None = 300,
        issued_at: bool = True,
    ) -> None:
        super().__init__(host)
        self.workdir = workdir
        self.username = username
        self.password = password
        self.expires_in = expires_in  # None: the answer omits it (the spec's 60 s default)
        self.issued_at = issued_at
        self.issued: list[str] = []
        self._signer: CertKey | None = None
        self.rotate()

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def root_bundle(self) -> Path:
        """The CA the front trusts token signatures by (distribution's rootcertbundle)."""
        return self.workdir / "token-ca.crt"

    def rotate(self) -> None:
        """A new CA and signing key: once the front restarts with the new bundle, every token
        issued before is refused."""
        ca = CertificateAuthority("testbed-token-ca")
        self._signer = ca.issue("testbed-token-signer", client=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root_bundle.write_bytes(ca.pair.cert_pem)

    def token_for(self, scopes: list[str]) -> str:
        """A JWT distribution's token access controller accepts, granting `scopes`."""
        assert self._signer is not None
        cert = x509.load_pem_x509_certificate(self._signer.cert_pem)
        key = serialization.load_pem_private_key(self._signer.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        now = int(datetime.datetime.now(datetime.UTC).timestamp())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": self.username,
            "aud": TOKEN_SERVICE,
            "exp": now + _JWT_SECONDS,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                seen = server.record(self)
                if urllib.parse.urlsplit(self.path).path != "/token":
                    _reply(self, 404, b"", {})
                    return
                got = self.headers.get("Authorization", "")
                if got != expected:
                    # The worst case: the refusal quotes what it was sent.
                    echo = {"details": "incorrect username or password", "received": got,
                            "request": self.path}  # fmt: skip
                    _reply(self, 401, json.dumps(echo).encode(), {})
                    return
                token = server.token_for(seen.query.get("scope", []))
                server.issued.append(token)
                answer: dict[str, object] = {"token": token, "access_token": token}
                if server.expires_in is not None:
                    answer["expires_in"] = server.expires_in
                if server.issued_at:
                    answer["issued_at"] = datetime.datetime.now(datetime.UTC).isoformat()
                _reply(self, 200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

        return Handler


class RedirectingRegistry(Registry):
    """docker-registry on `storage_dir` (shared with the origin), redirecting blob GETs to
    `redirect_to`, with htpasswd auth (username/password), token auth (token_server), or
    none; over TLS when `tls` holds a serving certificate for 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        *,
        storage_dir: Path,
        redirect_to: str,
        username: str | None = None,
        password: str | None = None,
        token_server: TokenServer | None = None,
        tls: CertKey | None = None,
        name: str = "front-registry",
    ) -> None:
        super().__init__(workdir, username=username, password=password, name=name)
        self._storage = storage_dir
        self.redirect_to = redirect_to
        self.token_server = token_server
        self.tls = tls

    @property
    def storage_dir(self) -> Path:
        return self._storage

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def ready(self) -> bool:
        if self._process is None or not self._process.alive():
            return False
        # Our own process on loopback, told apart by its instance header: no need to verify.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(f"{self.url}/v2/", timeout=2) as resp:
                status, headers = resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            with exc:
                status, headers = exc.code, exc.headers
        except OSError:
            return False
        if headers.get(_INSTANCE_HEADER) != self._instance:
            return False
        if self.auth is None and self.token_server is None:
            return bool(status == 200)
        return status == 401 and bool(headers.get("WWW-Authenticate"))

    def _config(self, htpasswd: Path | None) -> str:
        config: dict[str, Any] = json.loads(super()._config(htpasswd))
        config["middleware"] = {
            "storage": [{"name": "redirect", "options": {"baseurl": self.redirect_to}}]
        }
        if self.token_server is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(self.token_server.root_bundle),
                }
            }
        if self.tls is not None:
            cert, key = self.tls.write(self.workdir, "front-tls")
            config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
        return json.dumps(config, indent=2) + "\n"


Auth = Literal["basic", "bearer", "none"]


@dataclass
class RedirectingSetup:
    """Origin, object store, token realm (for bearer) and the redirecting front, started and
    stopped together. `tls`: the front serves https with a certificate of `ca`."""

    workdir: Path
    auth: Auth = "basic"
    username: str = "puller"
    password: str = field(default_factory=lambda: "pw-" + secrets.token_urlsafe(12))
    blob_host: str = BLOB_STORE_HOST
    tls: bool = False
    redirect_to: str | None = None  # default: the blob store's URL
    ca: CertificateAuthority = field(default_factory=CertificateAuthority)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.origin = Registry(self.workdir / "origin", name="origin-registry")
        self.blob_store = BlobStore(self.origin.storage_dir, self.blob_host)
        self.token_server = (
            TokenServer(self.workdir / "token", self.username, self.password)
            if self.auth == "bearer"
            else None
        )
        self.front: RedirectingRegistry | None = None

    @property
    def credentials(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def ca_file(self) -> Path:
        path = self.workdir / "front-ca.crt"
        path.write_bytes(self.ca.pair.cert_pem)
        return path

    def __enter__(self) -> RedirectingSetup:
        try:
            self._stack.enter_context(self.origin)
            self.origin.storage_dir.mkdir(parents=True, exist_ok=True)
            self._stack.enter_context(self.blob_store)
            if self.token_server is not None:
                self._stack.enter_context(self.token_server)
            basic = self.auth == "basic"
            self.front = RedirectingRegistry(
                self.workdir / "front",
                storage_dir=self.origin.storage_dir,
                redirect_to=self.redirect_to or self.blob_store.url,
                username=self.username if basic else None,
                password=self.password if basic else None,
                token_server=self.token_server,
                tls=self.ca.issue("front", ip_addresses=[LOOPBACK], server=True)
                if self.tls
                else None,
            )
            self._stack.enter_context(self.front)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def registry(self) -> RedirectingRegistry:
        if self.front is None:
            raise RuntimeError("not started")
        return self.front

    def publish(self, repository: str, tag: str, wasm: bytes, layout: Layout = "oci-wasm") -> str:
        """Push through the origin; the front serves it from the same storage."""
        return publish(self.origin.host, repository, tag, wasm, layout)

    def blob_requests(self) -> list[Seen]:
        return [s for s in self.blob_store.seen if "/blobs/" in s.path]

    def storage_path(self, digest: str) -> str:
        """Where distribution keeps a blob, as its redirect names it."""
        hex_ = digest.removeprefix("sha256:")
        return f"/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


def dockerconfigjson(registry: str, username: str, password: str) -> str:
    """A kubernetes.io/dockerconfigjson payload with one entry, as kubectl writes it."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    entry = {"username": username, "password": password, "auth": auth}
    return json.dumps({"auths": {registry: entry}})
