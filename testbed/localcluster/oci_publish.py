"""Publish a Wasm filter build to an OCI registry, without docker: our own small push client.

    digest = publish("127.0.0.1:5000", "filters/security-headers", "v1.1.0", wasm, "oci-wasm")

or from a shell (the filter author's build-and-push step; prints the pinned reference):

    PYTHONPATH=testbed uv run python -m localcluster.oci_publish \\
        --registry 127.0.0.1:5000 --repository filters/security-headers --tag v1.1.0 \\
        --layout oci-wasm path/to/plugin.wasm
    oci://127.0.0.1:5000/filters/security-headers@sha256:...

Layouts Istio's agent accepts (pkg/wasm/imagefetcher.go):
  docker       Docker image manifest v2 schema 2 whose LAST layer is
               application/vnd.docker.image.rootfs.diff.tar.gzip, a tar.gz holding plugin.wasm.
  oci-compat   OCI image manifest whose LAST layer is application/vnd.oci.image.layer.v1.tar+gzip,
               a tar.gz holding plugin.wasm (the "compat" variant).
  oci-wasm     OCI manifest with EXACTLY two layers, one of them
               application/vnd.module.wasm.content.layer.v1+wasm (the raw module), the other the
               application/vnd.module.wasm.config.v1+json runtime config (the "oci" variant).
Layouts it rejects, for negative tests:
  oras-single        one raw-wasm layer of a generic type (what a plain `oras push` makes).
  compat-no-plugin   the oci-compat layout, but the tar.gz holds filter.wasm, not plugin.wasm.
  wasm-three-layers  the oci-wasm layout plus a third layer.
The payload is never checked: any bytes (a text file, say) can go out in any layout; whether
they are a Wasm module is for the consumer to find out.

Output is deterministic: the same bytes and layout give the same blobs and manifest digest
(tar entries with fixed name/mode/owner/mtime, gzip with mtime 0, canonical JSON). The gzip
stream comes from zlib, so a different zlib build could in principle compress differently.

The client speaks the distribution API: HEAD blob (skip if present), POST + PUT monolithic
blob upload, PUT manifest. Authentication follows the registry's 401 challenge: Basic with the
given credentials, or the Bearer token flow (GET the realm with service/scope, basic-authed when
credentials are given, then retry with the token).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

# -- media types ---------------------------------------------------------------------------

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
TITLE_ANNOTATION = "org.opencontainers.image.title"
PLUGIN_FILE = "plugin.wasm"

Layout = Literal[
    "docker", "oci-compat", "oci-wasm", "oras-single", "compat-no-plugin", "wasm-three-layers"
]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
ACCEPTED_LAYOUTS: tuple[Layout, ...] = ("docker", "oci-compat", "oci-wasm")
REJECTED_LAYOUTS: tuple[Layout, ...] = ("oras-single", "compat-no-plugin", "wasm-three-layers")

# What distribution accepts as repository path components and tags (distribution/reference).
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_TIMEOUT = 30.0


class PublishError(RuntimeError):
    """The registry refused a step of the push; the message carries what it said."""


# -- building images (pure) ------------------------------------------------------------------


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Blob:
    """Content plus the descriptor fields that go into the manifest."""

    media_type: str
    data: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
        }
        if self.annotations:
            desc["annotations"] = dict(self.annotations)
        return desc


@dataclass(frozen=True)
class Image:
    """A manifest and the blobs it references (config first), ready to push."""

    media_type: str
    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        body = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.descriptor(),
            "layers": [layer.descriptor() for layer in self.layers],
        }
        object.__setattr__(self, "manifest", _canonical_json(body))

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> list[Blob]:
        """Distinct blobs, config first (a blob used twice is uploaded once)."""
        seen: dict[str, Blob] = {}
        for blob in (self.config, *self.layers):
            seen.setdefault(blob.digest, blob)
        return list(seen.values())


def tar_gz(files: Mapping[str, bytes]) -> tuple[bytes, bytes]:
    """(tar, tar.gz) of `files` at the archive root, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(files[name]))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, compresslevel=9, mtime=0)


def _image_config(diff_id: str) -> bytes:
    """A minimal image config: what `docker build` of FROM scratch + COPY plugin.wasm gives,
    less the timestamps and history that would make it unreproducible."""
    return _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )


def _runtime_config() -> bytes:
    """The runtime config of the solo.io Wasm artifact spec (the "oci" variant)."""
    return _canonical_json({"type": "envoy_proxy", "abiVersions": [], "config": {}})


def _compat_image(
    manifest_type: str, config_type: str, layer_type: str, name: str, wasm: bytes
) -> Image:
    tar_bytes, targz = tar_gz({name: wasm})
    return Image(
        media_type=manifest_type,
        config=Blob(config_type, _image_config(sha256_digest(tar_bytes))),
        layers=(Blob(layer_type, targz),),
    )


def build_image(wasm: bytes, layout: Layout) -> Image:
    """The image of `wasm` in `layout` (see the module docstring); deterministic."""
    if layout == "docker":
        return _compat_image(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, PLUGIN_FILE, wasm)
    if layout == "oci-compat":
        return _compat_image(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, PLUGIN_FILE, wasm)
    if layout == "compat-no-plugin":
        return _compat_image(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, "filter.wasm", wasm)
    if layout in ("oci-wasm", "wasm-three-layers"):
        runtime = _runtime_config()
        layers = [
            Blob(WASM_CONFIG, runtime, {TITLE_ANNOTATION: "runtime-config.json"}),
            Blob(WASM_LAYER, wasm, {TITLE_ANNOTATION: PLUGIN_FILE}),
        ]
        if layout == "wasm-three-layers":
            layers.append(Blob(OCI_LAYER_TAR, b"extra\n", {TITLE_ANNOTATION: "README"}))
        # The manifest config is the same runtime config (one blob, stored once).
        return Image(OCI_MANIFEST, Blob(WASM_CONFIG, runtime), tuple(layers))
    if layout == "oras-single":
        # `oras push REG/REPO:TAG plugin.wasm` with no media type given: the empty config and
        # one layer of the raw file typed as an (uncompressed) tar.
        return Image(
            OCI_MANIFEST,
            Blob(OCI_EMPTY, b"{}"),
            (Blob(OCI_LAYER_TAR, wasm, {TITLE_ANNOTATION: PLUGIN_FILE}),),
        )
    raise ValueError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")


# -- the distribution client -------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_registry(registry: str) -> tuple[str, str]:
    """("http://127.0.0.1:5000", "127.0.0.1:5000") from "127.0.0.1:5000" or a URL.

    Without a scheme, loopback registries are plain HTTP (as docker treats localhost) and
    everything else is HTTPS.
    """
    if "://" in registry:
        parsed = urllib.parse.urlsplit(registry)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"registry must be HOST[:PORT] or an http(s) URL, not {registry!r}")
        return f"{parsed.scheme}://{parsed.netloc}", parsed.netloc
    host = registry.rstrip("/")
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    scheme = "http" if _is_loopback(hostname) else "https"
    return f"{scheme}://{host}", host


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ..., 'scope': ...}) from a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted if quoted else bare
        for key, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)
    }
    return scheme.lower(), params


@dataclass
class _Response:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class RegistryClient:
    """Just enough of the distribution API to push images, with Basic and Bearer auth."""

    def __init__(
        self, registry: str, *, auth: tuple[str, str] | None = None, timeout: float = _TIMEOUT
    ) -> None:
        self.base_url, self.host = split_registry(registry)
        self.auth = auth
        self.timeout = timeout
        self._authorization: str | None = None
        hostname = urllib.parse.urlsplit(self.base_url).hostname or ""
        # Environment proxies are for the outside world, never for our loopback registries.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- raw requests ---------------------------------------------------------------------

    def _send(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> _Response:
        # URLs also come from the registry (upload Location, token realm): http(s) only.
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise PublishError(f"refusing to {method} a non-HTTP URL {url!r}")
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))  # noqa: S310 - scheme checked above
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                return _Response(resp.status, _lower(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return _Response(exc.code, _lower(exc.headers.items()), exc.read())
        except OSError as exc:
            raise PublishError(f"{method} {_no_query(url)}: {exc}") from exc

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Sequence[int] = (200,),
    ) -> _Response:
        """One request; on a 401 challenge authenticate and retry once. Raises unless the
        status is one of `expect`."""
        url = urllib.parse.urljoin(self.base_url + "/", path_or_url)
        all_headers = dict(headers or {})
        if self._authorization:
            all_headers["Authorization"] = self._authorization
        resp = self._send(method, url, body, all_headers)
        if resp.status == 401:
            self._authorization = self._authenticate(resp.header("WWW-Authenticate") or "")
            all_headers["Authorization"] = self._authorization
            resp = self._send(method, url, body, all_headers)
        if resp.status not in expect:
            raise PublishError(
                f"{method} {_no_query(url)}: HTTP {resp.status}: {_error_text(resp)}"
            )
        return resp

    def _authenticate(self, challenge: str) -> str:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self.auth is None:
                raise PublishError(f"{self.host} requires credentials (Basic auth); none given")
            return _basic(self.auth)
        if scheme == "bearer":
            return f"Bearer {self._fetch_token(params)}"
        raise PublishError(f"{self.host} answered 401 with an unsupported challenge {challenge!r}")

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        """The Bearer token flow (distribution's token auth spec): GET the realm with the
        service and scope from the challenge, with Basic credentials when we have them."""
        realm = params.get("realm")
        if not realm:
            raise PublishError(f"{self.host}: Bearer challenge without a realm: {params}")
        query = [(key, params[key]) for key in ("service", "scope") if params.get(key)]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": _basic(self.auth)} if self.auth else {}
        resp = self._send("GET", url, None, headers)
        if resp.status != 200:
            raise PublishError(f"token request GET {url}: HTTP {resp.status}: {_error_text(resp)}")
        try:
            answer = json.loads(resp.body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError) as exc:
            raise PublishError(f"token request GET {url}: not a token answer") from exc
        if not isinstance(token, str) or not token:
            raise PublishError(f"token request GET {url}: answer has no token")
        return token

    # -- the push -----------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", expect=(200, 404))
        return resp.status == 200

    def upload_blob(self, repository: str, blob: Blob) -> None:
        """Monolithic upload: POST opens an upload session, one PUT with ?digest= ends it."""
        if self.blob_exists(repository, blob.digest):
            return
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        location = started.header("Location")
        if not location:
            raise PublishError(f"{self.host}: blob upload started without a Location header")
        url = urllib.parse.urljoin(self.base_url + "/", location)
        separator = "&" if urllib.parse.urlsplit(url).query else "?"
        url += f"{separator}digest={urllib.parse.quote(blob.digest)}"
        done = self.request(
            "PUT",
            url,
            body=blob.data,
            headers={"Content-Type": "application/octet-stream"},
            expect=(201,),
        )
        stored = done.header("Docker-Content-Digest")
        if stored and stored != blob.digest:
            raise PublishError(f"{self.host} stored blob {blob.digest} as {stored}")

    def put_manifest(self, repository: str, reference: str, image: Image) -> str:
        resp = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            body=image.manifest,
            headers={"Content-Type": image.media_type},
            expect=(201,),
        )
        stored = resp.header("Docker-Content-Digest")
        if stored and stored != image.digest:
            raise PublishError(f"{self.host} stored manifest {image.digest} as {stored}")
        return image.digest

    def push(self, repository: str, tag: str | None, image: Image) -> str:
        """Upload the blobs, then the manifest (under `tag`, or by digest alone); its digest."""
        _check_names(repository, tag)
        for blob in image.blobs:
            self.upload_blob(repository, blob)
        return self.put_manifest(repository, tag or image.digest, image)


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def _no_query(url: str) -> str:
    """The URL for messages: upload URLs carry a long opaque _state query."""
    return url.split("?", 1)[0]


def _basic(auth: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


def _error_text(resp: _Response) -> str:
    """The registry's error list ({"errors": [{code, message, detail}]}) as one line."""
    try:
        errors = json.loads(resp.body)["errors"]
        return "; ".join(
            f"{e.get('code')}: {e.get('message')}"
            + (f" ({json.dumps(e['detail'])})" if e.get("detail") else "")
            for e in errors
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return resp.body[:500].decode(errors="replace") or "(empty body)"


def _check_names(repository: str, tag: str | None) -> None:
    if not _REPOSITORY.fullmatch(repository):
        raise ValueError(f"invalid repository name {repository!r} (lowercase path components)")
    if tag is not None and not _TAG.fullmatch(tag):
        raise ValueError(f"invalid tag {tag!r}")


def publish(
    registry: str,
    repository: str,
    tag: str | None,
    wasm: bytes,
    layout: Layout = "oci-wasm",
    *,
    auth: tuple[str, str] | None = None,
    timeout: float = _TIMEOUT,
) -> str:
    """Push `wasm` as `registry`/`repository`:`tag` in `layout`; the manifest digest.

    `registry` is HOST[:PORT] (loopback means plain HTTP) or an http(s):// URL. With
    tag=None the manifest is pushed by digest only.
    """
    image = build_image(wasm, layout)
    return RegistryClient(registry, auth=auth, timeout=timeout).push(repository, tag, image)


def pinned_reference(registry: str, repository: str, digest: str) -> str:
    """oci://HOST/REPO@sha256:..., the form a WasmPlugin url takes when pinned to a digest."""
    return f"oci://{split_registry(registry)[1]}/{repository}@{digest}"


# -- CLI ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.oci_publish",
        description="Push a Wasm module to an OCI registry; print oci://HOST/REPO@sha256:...",
    )
    parser.add_argument("--registry", required=True, help="HOST:PORT, or an http(s):// URL")
    parser.add_argument("--repository", required=True, help="e.g. filters/security-headers")
    parser.add_argument("--tag", help="e.g. v1.1.0 (default: push by digest only)")
    parser.add_argument("--layout", choices=LAYOUTS, default="oci-wasm")
    parser.add_argument("--username")
    parser.add_argument(
        "--password", help="or set OCI_PUBLISH_PASSWORD (keeps it out of the process list)"
    )
    parser.add_argument("module", type=Path, help="the .wasm file (any bytes are pushed as-is)")
    args = parser.parse_args(argv)

    password = args.password or os.environ.get("OCI_PUBLISH_PASSWORD")
    if (args.username is None) != (password is None):
        parser.error("--username and --password (or OCI_PUBLISH_PASSWORD) go together")
    auth = (args.username, password) if args.username is not None and password else None
    try:
        wasm = args.module.read_bytes()
        digest = publish(args.registry, args.repository, args.tag, wasm, args.layout, auth=auth)
    except (OSError, ValueError, PublishError) as exc:
        print(f"oci_publish: {exc}", file=sys.stderr)
        return 1
    print(pinned_reference(args.registry, args.repository, digest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
