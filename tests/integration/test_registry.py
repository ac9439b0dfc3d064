"""A real OCI registry (docker-registry, distribution 2.8) on loopback, and our push client.

Everything published here is read back with plain HTTP requests, independent of the client
under test, and judged against Istio's rules for Wasm images (pkg/wasm/imagefetcher.go).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from localcluster import LocalCluster
from localcluster.oci_publish import (
    ACCEPTED_LAYOUTS,
    LAYOUTS,
    REJECTED_LAYOUTS,
    Layout,
    PublishError,
    build_image,
    pinned_reference,
    publish,
)
from localcluster.registry import Registry, RegistryError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# A stand-in module: the Wasm magic and version, then filler. Real filters are built elsewhere.
WASM = b"\0asm\x01\0\0\0" + bytes(range(256)) * 4
CREDENTIALS = ("publisher", "correct horse battery staple")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
# Without these the registry refuses OCI manifests (404) and tries, and fails, to down-convert
# Docker schema 2 to schema 1 (400): a reader must always say what it accepts.
ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"

# layout -> (manifest type, config type, layer types in order)
EXPECTED: dict[Layout, tuple[str, str, list[str]]] = {
    "docker": (DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json", [DOCKER_LAYER]),
    "oci-compat": (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", [OCI_LAYER]),
    "oci-wasm": (OCI_MANIFEST, WASM_CONFIG, [WASM_CONFIG, WASM_LAYER]),
    "oras-single": (OCI_MANIFEST, "application/vnd.oci.empty.v1+json", [OCI_TAR]),
    "compat-no-plugin": (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", [OCI_LAYER]),
    "wasm-three-layers": (OCI_MANIFEST, WASM_CONFIG, [WASM_CONFIG, WASM_LAYER, OCI_TAR]),
}


# -- plain-HTTP reading, independent of the client under test ---------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    accept: str | None = None,
    body: bytes | None = None,
) -> Reply:
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    if accept is not None:
        headers["Accept"] = accept
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=10) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def get_manifest(
    registry: Registry, repository: str, reference: str, auth: tuple[str, str] | None = None
) -> Reply:
    reply = http(
        "GET", f"{registry.url}/v2/{repository}/manifests/{reference}", auth=auth, accept=ACCEPT
    )
    assert reply.status == 200, reply
    return reply


def get_blob(
    registry: Registry, repository: str, descriptor: dict[str, Any], auth: tuple[str, str] | None
) -> bytes:
    reply = http("GET", f"{registry.url}/v2/{repository}/blobs/{descriptor['digest']}", auth=auth)
    assert reply.status == 200, reply
    assert len(reply.body) == descriptor["size"]
    assert "sha256:" + hashlib.sha256(reply.body).hexdigest() == descriptor["digest"]
    return reply.body


def tar_gz_members(data: bytes) -> dict[str, bytes]:
    members = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        for info in tar.getmembers():
            extracted = tar.extractfile(info)
            assert extracted is not None, info.name
            members[info.name] = extracted.read()
    return members


def istio_would_load(manifest: dict[str, Any], blobs: dict[str, bytes]) -> bytes | None:
    """Istio's agent's decision (pkg/wasm/imagefetcher.go), restated: the module it would
    extract from this image, or None where it refuses the image."""
    layers = manifest["layers"]

    def plugin_in_last(media_type: str) -> bytes | None:
        if not layers or layers[-1]["mediaType"] != media_type:
            return None
        members = tar_gz_members(blobs[layers[-1]["digest"]])
        found = [data for name, data in members.items() if name.rsplit("/", 1)[-1] == "plugin.wasm"]
        return found[0] if found else None

    if manifest.get("mediaType") == DOCKER_MANIFEST:
        return plugin_in_last(DOCKER_LAYER)  # Docker images get no second chance
    compat = plugin_in_last(OCI_LAYER)
    if compat is not None:
        return compat
    if len(layers) != 2:
        return None
    wasm = [layer for layer in layers if layer["mediaType"] == WASM_LAYER]
    return blobs[wasm[0]["digest"]] if wasm else None


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("auth-registry")
    with Registry(workdir, username=CREDENTIALS[0], password=CREDENTIALS[1]) as r:
        yield r


# -- the registry itself ------------------------------------------------------------------------


def test_registry_serves_plain_http_on_loopback(registry: Registry) -> None:
    assert re.fullmatch(r"127\.0\.0\.1:\d+", registry.host)
    assert registry.url == f"http://{registry.host}"
    reply = http("GET", f"{registry.url}/v2/")
    assert reply.status == 200
    assert reply.headers["docker-distribution-api-version"] == "registry/2.0"
    assert registry.process.alive()


def test_auth_registry_refuses_anonymous_and_accepts_credentials(auth_registry: Registry) -> None:
    anonymous = http("GET", f"{auth_registry.url}/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic realm=")
    wrong = http("GET", f"{auth_registry.url}/v2/", auth=(CREDENTIALS[0], "wrong"))
    assert wrong.status == 401
    assert http("GET", f"{auth_registry.url}/v2/", auth=CREDENTIALS).status == 200


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"apt-get install docker-registry"):
        Registry(tmp_path, binary=tmp_path / "no-such-registry").start()


def test_failed_start_reports_the_log_and_leaves_nothing_running(
    registry: Registry, tmp_path: Path
) -> None:
    clash = Registry(tmp_path, name="clash", port=registry.port)
    with pytest.raises(RegistryError, match="address already in use") as excinfo:
        clash.start(timeout=10)
    assert "clash" in str(excinfo.value)
    assert not clash.process.alive()
    clash.stop()  # idempotent after the failed start's own stop
    assert registry.process.alive()


def test_stop_is_idempotent_and_frees_the_port(tmp_path: Path) -> None:
    r = Registry(tmp_path)
    r.start()
    url = f"{r.url}/v2/"
    r.stop()
    r.stop()
    assert not r.process.alive()
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(url, timeout=2)


# -- publishing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_publish_layout_reads_back_as_istio_expects(registry: Registry, layout: Layout) -> None:
    repository = f"filters/{layout}"
    digest = publish(registry.host, repository, "v1.0.0", WASM, layout)

    reply = get_manifest(registry, repository, "v1.0.0")
    manifest_type, config_type, layer_types = EXPECTED[layout]
    assert reply.headers["content-type"] == manifest_type
    assert reply.headers["docker-content-digest"] == digest
    assert digest == "sha256:" + hashlib.sha256(reply.body).hexdigest()
    manifest = reply.json()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == manifest_type
    assert manifest["config"]["mediaType"] == config_type
    assert [layer["mediaType"] for layer in manifest["layers"]] == layer_types
    # By digest too, as Istio and the operator fetch a pinned module.
    assert get_manifest(registry, repository, digest).body == reply.body

    blobs = {
        d["digest"]: get_blob(registry, repository, d, None)
        for d in [manifest["config"], *manifest["layers"]]
    }
    loaded = istio_would_load(manifest, blobs)
    if layout in ACCEPTED_LAYOUTS:
        assert loaded == WASM
    else:
        assert layout in REJECTED_LAYOUTS
        assert loaded is None


@pytest.mark.parametrize("layout", ["docker", "oci-compat"])
def test_compat_layouts_hold_plugin_wasm_in_a_tar_gz(registry: Registry, layout: Layout) -> None:
    repository = f"compat/{layout}"
    publish(registry.host, repository, "v1", WASM, layout)
    manifest = get_manifest(registry, repository, "v1").json()
    layer = get_blob(registry, repository, manifest["layers"][-1], None)
    assert layer[:2] == b"\x1f\x8b"  # gzip
    assert tar_gz_members(layer) == {"plugin.wasm": WASM}
    config = json.loads(get_blob(registry, repository, manifest["config"], None))
    uncompressed = gzip.decompress(layer)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]


def test_compat_no_plugin_has_no_plugin_wasm(registry: Registry) -> None:
    publish(registry.host, "broken/no-plugin", "v1", WASM, "compat-no-plugin")
    manifest = get_manifest(registry, "broken/no-plugin", "v1").json()
    layer = get_blob(registry, "broken/no-plugin", manifest["layers"][-1], None)
    assert "plugin.wasm" not in tar_gz_members(layer)


def test_oci_wasm_layer_is_the_raw_module(registry: Registry) -> None:
    publish(registry.host, "raw/module", "v1", WASM, "oci-wasm")
    manifest = get_manifest(registry, "raw/module", "v1").json()
    (wasm_layer,) = [d for d in manifest["layers"] if d["mediaType"] == WASM_LAYER]
    assert get_blob(registry, "raw/module", wasm_layer, None) == WASM
    runtime = json.loads(get_blob(registry, "raw/module", manifest["layers"][0], None))
    assert runtime["type"] == "envoy_proxy"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_publishing_is_deterministic(registry: Registry, layout: Layout) -> None:
    first = publish(registry.host, f"again/{layout}", "v1", WASM, layout)
    assert publish(registry.host, f"again/{layout}", "v1", WASM, layout) == first
    assert publish(registry.host, f"elsewhere/{layout}", "v2", WASM, layout) == first
    assert build_image(WASM, layout).digest == first
    assert publish(registry.host, f"again/{layout}", "v3", WASM + b"\0", layout) != first
    assert get_manifest(registry, f"again/{layout}", "v1").headers["docker-content-digest"] == first


def test_any_bytes_can_be_published(registry: Registry) -> None:
    """Whether the payload is Wasm is the operator's check, not the publisher's."""
    text = b"this is a README, not a Wasm module\n"
    for layout in ACCEPTED_LAYOUTS:
        repository = f"not-wasm/{layout}"
        publish(registry.host, repository, "v1", text, layout)
        manifest = get_manifest(registry, repository, "v1").json()
        blobs = {
            d["digest"]: get_blob(registry, repository, d, None)
            for d in [manifest["config"], *manifest["layers"]]
        }
        assert istio_would_load(manifest, blobs) == text


def test_push_by_digest_only(registry: Registry) -> None:
    digest = publish(registry.host, "untagged/module", None, WASM, "oci-wasm")
    assert get_manifest(registry, "untagged/module", digest).headers["content-type"] == OCI_MANIFEST
    tags = http("GET", f"{registry.url}/v2/untagged/module/tags/list").json()
    assert not tags.get("tags")


def test_invalid_names_are_refused_before_any_request(registry: Registry) -> None:
    with pytest.raises(ValueError, match="repository"):
        publish(registry.host, "Filters/Upper", "v1", WASM, "oci-wasm")
    with pytest.raises(ValueError, match="tag"):
        publish(registry.host, "filters/x", "v1/bad", WASM, "oci-wasm")


# -- basic auth -----------------------------------------------------------------------------------


def test_auth_registry_publish_and_pull(auth_registry: Registry) -> None:
    with pytest.raises(PublishError, match="requires credentials"):
        publish(auth_registry.host, "private/filter", "v1", WASM, "oci-wasm")
    with pytest.raises(PublishError, match="401"):
        publish(
            auth_registry.host,
            "private/filter",
            "v1",
            WASM,
            "oci-wasm",
            auth=(CREDENTIALS[0], "wrong"),
        )
    digest = publish(auth_registry.host, "private/filter", "v1", WASM, "docker", auth=CREDENTIALS)

    url = f"{auth_registry.url}/v2/private/filter/manifests/v1"
    assert http("GET", url, accept=ACCEPT).status == 401
    assert http("GET", url, accept=ACCEPT, auth=(CREDENTIALS[0], "wrong")).status == 401
    reply = get_manifest(auth_registry, "private/filter", "v1", auth=CREDENTIALS)
    assert reply.headers["docker-content-digest"] == digest
    assert digest == "sha256:" + hashlib.sha256(reply.body).hexdigest()
    layer = reply.json()["layers"][-1]
    blob_url = f"{auth_registry.url}/v2/private/filter/blobs/{layer['digest']}"
    assert http("GET", blob_url).status == 401
    assert tar_gz_members(get_blob(auth_registry, "private/filter", layer, CREDENTIALS)) == {
        "plugin.wasm": WASM
    }


# -- the Bearer token flow, against a small in-process stand-in -------------------------------


@dataclass
class TokenRegistry:
    """A registry that only takes Bearer tokens from its own /token endpoint, in memory."""

    username: str
    password: str
    port: int = 0
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def _token_handler(state: TokenRegistry) -> type[BaseHTTPRequestHandler]:
    token = "opaque-token-123"
    basic = "Basic " + base64.b64encode(f"{state.username}:{state.password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {token}":
                return True
            repo = self.path.split("/")[2] + "/" + self.path.split("/")[3]
            realm = f"http://127.0.0.1:{state.port}/token"
            challenge = (
                f'Bearer realm="{realm}",service="fake-registry",'
                f'scope="repository:{repo}:pull,push"'
            )
            self._reply(401, {"WWW-Authenticate": challenge}, b'{"errors":[]}')
            return False

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            if parsed.path != "/token":
                self._reply(404, {})
                return
            state.token_requests.append(urllib.parse.parse_qs(parsed.query))
            if self.headers.get("Authorization") != basic:
                self._reply(401, {})
                return
            self._reply(
                200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode()
            )

        def do_HEAD(self) -> None:
            if self._authorized():
                digest = self.path.rsplit("/", 1)[-1]
                self._reply(200 if digest in state.blobs else 404, {})

        def do_POST(self) -> None:
            if self._authorized():
                self._body()
                base = self.path.rstrip("/")
                self._reply(202, {"Location": f"{base}/upload-1?_state=abc"})

        def do_PUT(self) -> None:
            if not self._authorized():
                return
            parsed = urllib.parse.urlsplit(self.path)
            body = self._body()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if "/blobs/uploads/" in parsed.path:
                query = urllib.parse.parse_qs(parsed.query)
                assert query["_state"] == ["abc"]
                assert query["digest"] == [digest]
                state.blobs[digest] = body
            else:
                reference = parsed.path.rsplit("/", 1)[-1]
                state.manifests[reference] = (self.headers["Content-Type"], body)
            self._reply(201, {"Docker-Content-Digest": digest})

    return Handler


@pytest.fixture
def token_registry() -> Iterator[TokenRegistry]:
    state = TokenRegistry("robot", "token-pass")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="token-registry", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_bearer_token_flow(token_registry: TokenRegistry) -> None:
    host = f"127.0.0.1:{token_registry.port}"
    auth = (token_registry.username, token_registry.password)
    digest = publish(host, "team/filter", "v1", WASM, "oci-wasm", auth=auth)

    image = build_image(WASM, "oci-wasm")
    assert digest == image.digest
    assert token_registry.manifests["v1"] == (OCI_MANIFEST, image.manifest)
    assert token_registry.blobs[f"sha256:{hashlib.sha256(WASM).hexdigest()}"] == WASM
    assert token_registry.token_requests[0] == {
        "service": ["fake-registry"],
        "scope": ["repository:team/filter:pull,push"],
    }
    # One token serves the whole push.
    assert len(token_registry.token_requests) == 1

    with pytest.raises(PublishError, match="token request"):
        publish(host, "team/filter", "v2", WASM, "oci-wasm", auth=("robot", "wrong"))


# -- the CLI --------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "testbed"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "localcluster.oci_publish", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_pinned_reference(registry: Registry, tmp_path: Path) -> None:
    module = tmp_path / "plugin.wasm"
    module.write_bytes(WASM)
    args = ["--registry", registry.host, "--repository", "filters/security-headers"]
    result = _cli(*args, "--tag", "v1.1.0", "--layout", "oci-compat", str(module))
    assert result.returncode == 0, result.stderr
    digest = build_image(WASM, "oci-compat").digest
    expected = f"oci://{registry.host}/filters/security-headers@{digest}"
    assert result.stdout.strip() == expected
    assert expected == pinned_reference(registry.host, "filters/security-headers", digest)
    assert (
        get_manifest(registry, "filters/security-headers", "v1.1.0").headers[
            "docker-content-digest"
        ]
        == digest
    )

    missing = _cli(*args, "--tag", "v1", str(tmp_path / "absent.wasm"))
    assert missing.returncode == 1
    assert "absent.wasm" in missing.stderr


def test_cli_with_credentials(auth_registry: Registry, tmp_path: Path) -> None:
    module = tmp_path / "plugin.wasm"
    module.write_bytes(WASM)
    args = ["--registry", auth_registry.host, "--repository", "cli/private", "--tag", "v1"]
    refused = _cli(*args, str(module))
    assert refused.returncode == 1
    assert "requires credentials" in refused.stderr
    result = _cli(
        *args,
        "--username",
        CREDENTIALS[0],
        str(module),
        env={"OCI_PUBLISH_PASSWORD": CREDENTIALS[1]},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"oci://{auth_registry.host}/cli/private@sha256:")


# -- the registries of a LocalCluster -------------------------------------------------------


def test_local_cluster_runs_both_registries(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with LocalCluster(tmp_path / "cluster", nodes=1) as cluster:
        started = time.monotonic() - t0
        print(f"cluster with registries up in {started:.1f}s")
        open_, private = cluster.registry, cluster.auth_registry
        assert open_.host != private.host
        assert {"registry", "auth-registry"} <= set(cluster.pids)
        assert http("GET", f"{open_.url}/v2/").status == 200
        assert http("GET", f"{private.url}/v2/").status == 401
        assert private.auth == cluster.registry_credentials
        assert http("GET", f"{private.url}/v2/", auth=cluster.registry_credentials).status == 200

        digest = publish(open_.host, "filters/demo", "v1", WASM, "oci-wasm")
        assert get_manifest(open_, "filters/demo", digest).headers["content-type"] == OCI_MANIFEST
        auth = cluster.registry_credentials
        private_digest = publish(private.host, "filters/demo", "v1", WASM, "oci-wasm", auth=auth)
        assert private_digest == digest
        assert (cluster.logs_dir / "registry.log").is_file()
        assert not cluster.dead_components()
    assert not open_.process.alive()
    assert not private.process.alive()
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(f"{open_.url}/v2/", timeout=2)


def test_local_cluster_without_registries(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, registries=False)
    with pytest.raises(RuntimeError, match="registries=False"):
        _ = cluster.registry
