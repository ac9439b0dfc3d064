"""Pull-secret credentials stay with their registry, against real redirecting registries.

The registry is the real docker-registry (distribution 2.8) with its own `redirect` storage
middleware: every blob GET is answered with 307 to an object store on another loopback host
(127.0.0.2), which records each request and, like S3 with a presigned URL, refuses one that
carries Authorization. Basic auth is distribution's htpasswd; the Bearer flow is distribution's
token auth, verifying JWTs of a token realm on a third host (127.0.0.3) that echoes the
credentials it is sent back into its refusals (localcluster/redirecting_registry.py).

The first part drives the client directly and asserts what each host received; the last part
runs the operator on the local cluster: a release behind such a registry goes Ready, and no
password or token shows in its log, Events or status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devcluster.operator_process import OperatorProcess
from filterrelease.core.module import ModuleProblem, OciRef, Reason, parse_oci
from filterrelease.providers.registry import Credentials, RegistryClient
from localcluster import LocalCluster
from localcluster.network import LOOPBACK
from localcluster.redirecting_registry import (
    BLOB_STORE_HOST,
    TOKEN_SERVICE,
    Auth,
    RedirectingSetup,
    Seen,
    dockerconfigjson,
)
from tests.support.kubectl import apply_json, get_json
from tests.support.releases import (
    NAME,
    TIMEOUT,
    condition,
    plugin,
    release,
    release_with,
    wait_ready,
)
from tests.support.wasm import Published, with_custom_section

pytestmark = pytest.mark.integration

WASM = b"\0asm\x01\0\0\0" + bytes(range(256)) * 4
REPOSITORY = "filters/redirected"
# What urllib sends of its own accord; the object store must get these and nothing else.
PLAIN_HEADERS = {"host", "user-agent", "accept-encoding", "connection"}


class Clock:
    """The client's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["basic", "bearer"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedirectingSetup]:
    with RedirectingSetup(tmp_path, auth=request.param) as s:
        yield s


def pull(
    client: RegistryClient, setup: RedirectingSetup, creds: Credentials | None
) -> tuple[OciRef, list[str]]:
    """Manifest and every layer of REPOSITORY:v1; the layer digests."""
    ref = parse_oci(f"oci://{setup.registry.host}/{REPOSITORY}:v1")
    body, _, _ = client.manifest(ref, creds)
    layers = [layer["digest"] for layer in json.loads(body)["layers"]]
    for digest in layers:
        assert hashlib.sha256(client.blob(ref, digest, creds)).hexdigest() == digest[7:]
    return ref, layers


def assert_plain(seen: list[Seen], setup: RedirectingSetup, layers: list[str]) -> None:
    """The object store got exactly one GET per layer, at distribution's storage path, with
    nothing but urllib's own headers."""
    assert [(s.method, s.path) for s in seen] == [("GET", setup.storage_path(d)) for d in layers]
    for s in seen:
        assert set(s.headers) == PLAIN_HEADERS, s.headers
        assert s.headers["host"] == f"{setup.blob_store.bind_host}:{setup.blob_store.port}"


def secrets_of(setup: RedirectingSetup, password: str | None = None) -> list[str]:
    user, pw = setup.username, password or setup.password
    issued = setup.token_server.issued if setup.token_server else []
    return [pw, base64.b64encode(f"{user}:{pw}".encode()).decode(), *issued]


# -- the setup itself -------------------------------------------------------------------------


def test_object_store_refuses_authorization_as_s3_does(tmp_path: Path) -> None:
    """What the client used to do (urllib copying Authorization into the redirect) fails."""
    with RedirectingSetup(tmp_path, auth="basic") as setup:
        setup.publish(REPOSITORY, "v1", WASM)
        manifest = json.loads(_urllib_get(setup, f"/v2/{REPOSITORY}/manifests/v1").read())
        layer = manifest["layers"][-1]["digest"]
        with pytest.raises(urllib.error.HTTPError) as caught:
            _urllib_get(setup, f"/v2/{REPOSITORY}/blobs/{layer}")
        assert caught.value.code == 400
        [seen] = setup.blob_store.seen
        assert seen.headers["authorization"].startswith("Basic ")


def _urllib_get(setup: RedirectingSetup, path: str) -> Any:
    auth = base64.b64encode(":".join(setup.credentials).encode()).decode()
    accept = "application/vnd.oci.image.manifest.v1+json"
    request = urllib.request.Request(
        f"{setup.registry.url}{path}", headers={"Authorization": f"Basic {auth}", "Accept": accept}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(request, timeout=10)


# -- credentials stay with the registry -------------------------------------------------------


def test_blobs_come_from_the_object_store_without_credentials(setup: RedirectingSetup) -> None:
    digest = setup.publish(REPOSITORY, "v1", WASM)
    client = RegistryClient(timeout=5)
    ref, layers = pull(client, setup, Credentials(*setup.credentials))
    assert client.manifest(ref, Credentials(*setup.credentials))[2] == digest
    assert_plain(setup.blob_requests(), setup, layers)
    if setup.token_server is not None:
        # The realm the registry named got the Basic credentials, to exchange for a token.
        [asked] = setup.token_server.seen
        assert asked.headers["authorization"] == Credentials(*setup.credentials).basic()
        assert asked.query == {
            "service": [TOKEN_SERVICE],
            "scope": [f"repository:{REPOSITORY}:pull"],
        }


def test_same_host_on_another_port_is_another_host(tmp_path: Path) -> None:
    with RedirectingSetup(tmp_path, auth="basic", blob_host=LOOPBACK) as setup:
        setup.publish(REPOSITORY, "v1", WASM)
        assert setup.blob_store.bind_host == setup.registry.host.split(":")[0]
        _, layers = pull(RegistryClient(timeout=5), setup, Credentials(*setup.credentials))
        assert_plain(setup.blob_requests(), setup, layers)


def test_wrong_password_is_refused_and_quoted_nowhere(setup: RedirectingSetup) -> None:
    setup.publish(REPOSITORY, "v1", WASM)
    wrong = "wrong-" + setup.password
    with pytest.raises(ModuleProblem) as caught:
        pull(RegistryClient(timeout=5), setup, Credentials(setup.username, wrong))
    problem = caught.value
    assert problem.reason == Reason.UNAUTHORIZED
    assert "were refused" in problem.message
    for secret in secrets_of(setup, wrong):
        assert secret not in problem.message
    assert problem.__cause__ is None
    if setup.token_server is not None:
        # The realm did echo the credentials into its refusal: the client did not pass it on.
        [asked] = setup.token_server.seen
        assert asked.headers["authorization"] == Credentials(setup.username, wrong).basic()
    assert setup.blob_store.seen == []


def test_no_pull_secret_says_one_is_needed(setup: RedirectingSetup) -> None:
    setup.publish(REPOSITORY, "v1", WASM)
    with pytest.raises(ModuleProblem, match="needs credentials") as caught:
        pull(RegistryClient(timeout=5), setup, None)
    assert caught.value.reason == Reason.UNAUTHORIZED
    if setup.token_server is not None:
        assert ["authorization" in s.headers for s in setup.token_server.seen] == [False]


# -- Bearer tokens: one per registry, scope and secret, until it expires ------------------------


@pytest.fixture
def bearer(tmp_path: Path) -> Iterator[RedirectingSetup]:
    with RedirectingSetup(tmp_path, auth="bearer") as s:
        s.publish(REPOSITORY, "v1", WASM)
        yield s


def test_one_token_serves_two_pulls(bearer: RedirectingSetup) -> None:
    assert bearer.token_server is not None
    client = RegistryClient(timeout=5)
    creds = Credentials(*bearer.credentials)
    _, layers = pull(client, bearer, creds)
    pull(client, bearer, creds)
    assert len(bearer.token_server.seen) == 1
    assert_plain(bearer.blob_requests(), bearer, layers * 2)


def test_another_secret_gets_its_own_token(bearer: RedirectingSetup) -> None:
    assert bearer.token_server is not None
    client = RegistryClient(timeout=5)
    pull(client, bearer, Credentials(*bearer.credentials))
    with pytest.raises(ModuleProblem, match="were refused"):
        pull(client, bearer, Credentials(bearer.username, "another-namespace's-secret"))
    with pytest.raises(ModuleProblem, match="needs credentials"):
        pull(client, bearer, None)
    assert len(bearer.token_server.seen) == 3


@pytest.mark.parametrize("expires_in", [60, None], ids=["expires_in=60", "spec-default"])
def test_token_is_fetched_again_once_expired(
    bearer: RedirectingSetup, expires_in: int | None
) -> None:
    assert bearer.token_server is not None
    bearer.token_server.expires_in = expires_in  # None: the answer omits it, 60 s by the spec
    bearer.token_server.issued_at = False
    clock = Clock()
    client = RegistryClient(timeout=5, clock=clock)
    creds = Credentials(*bearer.credentials)
    pull(client, bearer, creds)
    clock.now += 59
    pull(client, bearer, creds)
    assert len(bearer.token_server.seen) == 1
    clock.now += 1
    pull(client, bearer, creds)
    assert len(bearer.token_server.seen) == 2
    clock.now += 30
    pull(client, bearer, creds)
    assert len(bearer.token_server.seen) == 2


def test_token_the_registry_stops_accepting_is_replaced(bearer: RedirectingSetup) -> None:
    assert bearer.token_server is not None
    client = RegistryClient(timeout=5)
    creds = Credentials(*bearer.credentials)
    pull(client, bearer, creds)
    bearer.token_server.rotate()  # a new signing CA; the registry restarts trusting only it
    bearer.registry.restart()
    pull(client, bearer, creds)
    assert len(bearer.token_server.seen) == 2


# -- TLS: a private CA, insecure registries, no downgrade -------------------------------------


@pytest.fixture
def tls_setup(tmp_path: Path) -> Iterator[RedirectingSetup]:
    """An https front with a certificate of its own CA, redirecting to the plain-http store."""
    with RedirectingSetup(tmp_path, auth="basic", tls=True) as s:
        s.publish(REPOSITORY, "v1", WASM)
        yield s


def test_private_ca_and_insecure_registries(tls_setup: RedirectingSetup) -> None:
    ref = parse_oci(f"oci://{tls_setup.registry.host}/{REPOSITORY}:v1")
    creds = Credentials(*tls_setup.credentials)
    for client in (
        RegistryClient(timeout=5),  # the system CAs only
        RegistryClient(timeout=5, insecure_registries=["127.0.0.1:1"]),  # another registry
    ):
        with pytest.raises(ModuleProblem, match="certificate verify failed") as caught:
            client.manifest(ref, creds)
        assert caught.value.reason == Reason.REGISTRY_UNAVAILABLE
    for client in (
        RegistryClient(timeout=5, ca_file=str(tls_setup.ca_file)),
        RegistryClient(timeout=5, insecure_registries=[tls_setup.registry.host.upper()]),
        RegistryClient(timeout=5, insecure_registries=["*"]),
    ):
        assert client.manifest(ref, creds)[2].startswith("sha256:")


def test_redirect_from_https_to_http_is_refused(tls_setup: RedirectingSetup) -> None:
    client = RegistryClient(timeout=5, ca_file=str(tls_setup.ca_file))
    creds = Credentials(*tls_setup.credentials)
    ref = parse_oci(f"oci://{tls_setup.registry.host}/{REPOSITORY}:v1")
    body, _, _ = client.manifest(ref, creds)
    layer = json.loads(body)["layers"][-1]["digest"]
    with pytest.raises(ModuleProblem, match="redirected to plain http") as caught:
        client.blob(ref, layer, creds)
    assert caught.value.reason == Reason.REGISTRY_UNAVAILABLE
    assert tls_setup.blob_store.seen == []


def test_plain_http_realm_of_an_https_registry_gets_no_password(
    tmp_path: Path,
) -> None:
    with RedirectingSetup(tmp_path, auth="bearer", tls=True) as setup:
        assert setup.token_server is not None
        setup.publish(REPOSITORY, "v1", WASM)
        client = RegistryClient(timeout=5, ca_file=str(setup.ca_file))
        ref = parse_oci(f"oci://{setup.registry.host}/{REPOSITORY}:v1")
        with pytest.raises(ModuleProblem, match="not sent there in clear text") as caught:
            client.manifest(ref, Credentials(*setup.credentials))
        assert caught.value.reason == Reason.UNAUTHORIZED
        assert setup.token_server.seen == []


# -- redirect chains, loops and http(s) modules, against a scripted server ---------------------


class Hops:
    """A scripted HTTP server: path -> (status, Location or body); records every request."""

    def __init__(self, host: str, routes: dict[str, tuple[int, str | bytes]]) -> None:
        self.routes = routes
        self.seen: list[Seen] = []
        hops = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hops.seen.append(
                    Seen("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                status, value = hops.routes.get(self.path, (404, b""))
                body = value if isinstance(value, bytes) else b""
                self.send_response(status)
                if isinstance(value, str):
                    self.send_header("Location", value.replace("{self}", hops.url))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def __enter__(self) -> Hops:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


DIGEST = "sha256:" + hashlib.sha256(WASM).hexdigest()
BLOB_PATH = f"/v2/{REPOSITORY}/blobs/{DIGEST}"


def test_credentials_are_not_sent_again_when_a_chain_comes_back() -> None:
    with Hops(LOOPBACK, {}) as registry, Hops(BLOB_STORE_HOST, {}) as storage:
        registry.routes[BLOB_PATH] = (307, f"{storage.url}/bounce")
        storage.routes["/bounce"] = (302, f"{registry.url}/final")
        registry.routes["/final"] = (200, WASM)
        ref = parse_oci(f"oci://{registry.host}/{REPOSITORY}@{DIGEST}")
        creds = Credentials("robot", "pw")
        assert RegistryClient(timeout=5).blob(ref, DIGEST, creds) == WASM
        assert [(s.path, "authorization" in s.headers) for s in registry.seen] == [
            (BLOB_PATH, True),
            ("/final", False),
        ]
        assert [(s.path, "authorization" in s.headers) for s in storage.seen] == [
            ("/bounce", False)
        ]


def test_a_redirect_loop_ends_after_ten_hops() -> None:
    with Hops(LOOPBACK, {}) as registry:
        registry.routes[BLOB_PATH] = (308, "{self}/loop")
        registry.routes["/loop"] = (301, "{self}/loop")
        ref = parse_oci(f"oci://{registry.host}/{REPOSITORY}@{DIGEST}")
        with pytest.raises(ModuleProblem, match="more than 10 redirects") as caught:
            RegistryClient(timeout=5).blob(ref, DIGEST, None)
        assert caught.value.reason == Reason.REGISTRY_UNAVAILABLE
        assert len(registry.seen) == 11


def test_http_module_userinfo_goes_to_its_own_host_only() -> None:
    with Hops(LOOPBACK, {}) as server, Hops(BLOB_STORE_HOST, {}) as storage:
        server.routes["/m.wasm"] = (302, f"{storage.url}/m.wasm?X-Amz-Signature=SIG")
        storage.routes["/m.wasm?X-Amz-Signature=SIG"] = (200, WASM)
        url = f"http://robot:hunter2@{server.host}/m.wasm"
        assert RegistryClient(timeout=5).download(url) == WASM
        assert server.seen[0].headers["authorization"] == Credentials("robot", "hunter2").basic()
        assert "authorization" not in storage.seen[0].headers

        storage.routes.clear()  # the object store now answers 404
        with pytest.raises(ModuleProblem) as caught:
            RegistryClient(timeout=5).download(url)
        assert caught.value.reason == Reason.NOT_FOUND
        assert "hunter2" not in caught.value.message
        assert "SIG" not in caught.value.message
        assert "where the registry redirected" in caught.value.message


# -- through the operator -----------------------------------------------------------------------


def _secret(cluster: LocalCluster, namespace: str, name: str, config: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }
    assert apply_json(cluster, secret).returncode == 0


@pytest.fixture
def operated_setup(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    published: Published,
    operator: OperatorProcess,
) -> Iterator[RedirectingSetup]:
    auth: Auth = "basic" if getattr(request, "param", "bearer") == "basic" else "bearer"
    # Bytes of its own, so that no earlier test has verified this digest: the operator then
    # downloads the layer, through the object store.
    module = with_custom_section(
        published.modules["security-headers"], "filterrelease.test", tmp_path.name.encode()
    )
    with RedirectingSetup(tmp_path, auth=auth) as s:
        s.publish(REPOSITORY, "v1", module, "oci-compat")
        yield s


@pytest.mark.parametrize("operated_setup", ["basic", "bearer"], indirect=True)
def test_release_behind_a_redirecting_registry_goes_ready(
    istio_cluster: LocalCluster, namespace: str, published: Published,
    operated_setup: RedirectingSetup,
) -> None:  # fmt: skip
    setup = operated_setup
    host = setup.registry.host
    _secret(istio_cluster, namespace, "pull", dockerconfigjson(host, *setup.credentials))
    url = f"oci://{host}/{REPOSITORY}:v1"
    body = release_with(namespace, published, url, imagePullSecret="pull")
    assert apply_json(istio_cluster, body).returncode == 0
    status = wait_ready(istio_cluster, namespace, NAME)["status"]
    assert status["module"]["url"].startswith(f"oci://{host}/{REPOSITORY}@sha256:")
    assert status["module"]["layout"] == "oci-compat"
    assert plugin(istio_cluster, namespace, NAME)["spec"]["imagePullSecret"] == "pull"
    blobs = setup.blob_requests()
    assert blobs, "the module came through the object store"
    for seen in blobs:
        assert set(seen.headers) == PLAIN_HEADERS, seen.headers
    if setup.token_server is not None:
        assert {s.headers.get("authorization") for s in setup.token_server.seen} == {
            Credentials(*setup.credentials).basic()
        }


def test_pull_secrets_never_show_in_log_events_or_status(
    istio_cluster: LocalCluster,
    namespace: str,
    published: Published,
    operator: OperatorProcess,
    operated_setup: RedirectingSetup,
) -> None:
    """One release pulls with a good secret, one with a wrong one that the token realm echoes
    back; then the operator's log, every Event of the namespace and both releases' status are
    searched for every form of both passwords and for every token issued."""
    setup = operated_setup
    assert setup.token_server is not None
    host = setup.registry.host
    wrong = "wrong-" + setup.password
    good_config = dockerconfigjson(host, *setup.credentials)
    bad_config = dockerconfigjson(host, setup.username, wrong)
    _secret(istio_cluster, namespace, "good", good_config)
    _secret(istio_cluster, namespace, "bad", bad_config)
    url = f"oci://{host}/{REPOSITORY}:v1"
    good = release_with(namespace, published, url, imagePullSecret="good")
    bad = release_with(namespace, published, url, imagePullSecret="bad")
    bad["metadata"]["name"] = "refused"
    assert apply_json(istio_cluster, good).returncode == 0
    assert apply_json(istio_cluster, bad).returncode == 0
    wait_ready(istio_cluster, namespace, NAME)

    def refused() -> bool:
        c = condition(release(istio_cluster, namespace, "refused"), "ModuleVerified")
        return bool(c and c["reason"] == "Unauthorized" and "were refused" in c["message"])

    istio_cluster.wait_for(refused, timeout=TIMEOUT, what="the wrong secret refused")
    # The realm saw both secrets, so both went through the operator's memory.
    basics = {s.headers.get("authorization") for s in setup.token_server.seen}
    assert basics == {
        Credentials(*setup.credentials).basic(),
        Credentials(setup.username, wrong).basic(),
    }
    assert setup.token_server.issued

    texts = {
        "operator log": operator.log_path.read_text(errors="replace"),
        "events": json.dumps(get_json(istio_cluster, "events", "-n", namespace)),
        "releases": json.dumps(get_json(istio_cluster, "filterreleases", "-n", namespace)),
        "wasmplugins": json.dumps(get_json(istio_cluster, "wasmplugins", "-n", namespace)),
    }
    forms = [
        *secrets_of(setup),
        *secrets_of(setup, wrong),
        base64.b64encode(good_config.encode()).decode(),
        base64.b64encode(bad_config.encode()).decode(),
    ]
    for where, text in texts.items():
        for secret in forms:
            assert secret not in text, f"a secret in the {where}"
    assert "were refused" in texts["releases"]  # what was searched is what a user reads
