"""istio-agent's side of a WasmPlugin: fetch the module, rewrite the filter to a local file.

Written from Istio 1.30.3's pkg/wasm (and independently of the operator's own pre-flight
fetcher, so that one bug cannot hide in both):

* convert.go MaybeConvertWasmExtensionConfig / rewriteVMConfig: a named pull secret that istiod
  could not read fails the conversion ("missing image pulling secret"); a failed conversion is
  logged as `error in converting the wasm config to local: <err>. applying <deny|allow> RBAC
  filter` and the filter is replaced by a deny-all RBAC filter, or an allow-all one when the
  plugin's failure policy is FAIL_OPEN. A `file://` module is passed through (no_remote_load).
* cache.go LocalFileCache.getOrFetch: modules cached by (module name, sha256); a tagged URL
  remembers the checksum it last resolved to, per agent. Pull policy: Always re-pulls when the
  WasmPlugin's resourceVersion changed; IfNotPresent never; unspecified is IfNotPresent except
  for oci://...:latest. For oci:// the checksum compared with `sha256` is the MANIFEST digest
  (a digest in the URL counts as the expected checksum); for http(s):// the sha256 of the
  downloaded bytes. Results counted in istio_agent_wasm_remote_fetch_count: manifest_failure
  (oci manifest step), download_failure (http download or oci layers), checksum_mismatched,
  fetch_failure (not a Wasm binary: no `\\0asm` magic), success.
* imagefetcher.go PrepareFetch: a Docker v2 manifest must have a LAST layer of type
  application/vnd.docker.image.rootfs.diff.tar.gzip holding plugin.wasm; other manifests are
  tried as the OCI "compat" variant (LAST layer application/vnd.oci.image.layer.v1.tar+gzip
  holding plugin.wasm), then as the OCI artifact variant (EXACTLY two layers, one of type
  application/vnd.module.wasm.content.layer.v1+wasm, the raw module). Pull secrets are
  .dockerconfigjson content, looked up by registry host.
* httpfetcher.go: up to 5 attempts, retrying 5xx (but 501, 505, 511) and connection errors
  with backoff from 0.5 s; a gzip or tar body is unboxed.

Loopback and private registries are spoken to over plain HTTP, as go-containerregistry does.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import ipaddress
import json
import re
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshagent import envoyconfig, metrics
from meshagent.istiod import RemoteWasm
from meshagent.layout import write_atomically

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
PLUGIN_FILE = "plugin.wasm"
WASM_MAGIC = b"\x00asm"
MAX_WASM_BYTES = 256 * 1024 * 1024  # features.MaxWasmBinarySizeBytes default
REQUEST_TIMEOUT_S = 30.0  # istiod's HttpUri timeout (extensions.go buildDataSource)
HTTP_MAX_ATTEMPTS = 5
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FetchError(Exception):
    """A failed fetch; `result` is the remote-fetch counter's label (None: not counted)."""

    def __init__(self, message: str, result: str | None) -> None:
        super().__init__(message)
        self.result = result


class AgentLog:
    """One pod's agent log in Istio's format: `<time>\\t<level>\\t<scope>\\t<message>`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, level: str, scope: str, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        with self._lock, self.path.open("a") as out:
            out.write(f"{stamp}\t{level}\t{scope}\t{message}\n")

    def info(self, message: str, scope: str = "wasm") -> None:
        self.write("info", scope, message)

    def warn(self, message: str, scope: str = "wasm") -> None:
        self.write("warn", scope, message)

    def error(self, message: str, scope: str = "wasm") -> None:
        self.write("error", scope, message)


# -- OCI references and the registry client -------------------------------------------------


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str | None
    digest: str | None  # "sha256:<hex>"

    @property
    def identifier(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def context(self) -> str:
        """registry/repository: the module's name, neutral to tag and digest."""
        return f"{self.registry}/{self.repository}"


def parse_reference(ref: str) -> Reference:
    """HOST[:PORT]/REPO[:TAG][@sha256:HEX] (go-containerregistry name.ParseReference, minus
    Docker Hub defaults: a registry host is required)."""
    rest, _, digest = ref.partition("@")
    if "/" not in rest:
        raise ValueError(f"could not parse reference: {ref}")
    registry, _, path = rest.partition("/")
    repository, tag = path, None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = path.rsplit(":", 1)
    if not registry or not repository or repository != repository.lower():
        raise ValueError(f"could not parse reference: {ref}")
    if digest and not (digest.startswith("sha256:") and _SHA256_HEX.fullmatch(digest[7:])):
        raise ValueError(f"could not parse reference: {ref}")
    return Reference(registry, repository, tag, digest or None)


def _plain_http(registry: str) -> bool:
    """go-containerregistry Registry.Scheme(): http for localhost, loopback and RFC 1918."""
    host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    if host == "localhost" or host.endswith(".local"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def docker_credentials(config_json: bytes, registry: str) -> tuple[str, str] | None:
    """(user, password) for `registry` from a .dockerconfigjson, or None (anonymous)."""
    try:
        auths: Mapping[str, Any] = json.loads(config_json).get("auths") or {}
    except (ValueError, AttributeError):
        return None
    for key, entry in auths.items():
        host = key.split("://", 1)[-1].split("/", 1)[0]
        if host != registry or not isinstance(entry, Mapping):
            continue
        if entry.get("username") or entry.get("password"):
            return str(entry.get("username", "")), str(entry.get("password", ""))
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
    return None


class RegistryClient:
    """GET manifests and blobs from one registry, answering Basic and Bearer challenges."""

    def __init__(self, registry: str, credentials: tuple[str, str] | None, timeout: float):
        scheme = "http" if _plain_http(registry) else "https"
        self.base = f"{scheme}://{registry}"
        self.credentials = credentials
        self.timeout = timeout
        self._authorization: str | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, accept: str | None = None) -> tuple[bytes, Mapping[str, str]]:
        headers = {"Accept": accept} if accept else {}
        status, body, response_headers = self._send(self.base + path, headers)
        if status == 401:
            self._authorization = self._authenticate(response_headers.get("www-authenticate", ""))
            status, body, response_headers = self._send(self.base + path, headers)
        if status != 200:
            detail = body[:300].decode(errors="replace").strip()
            raise OSError(f"GET {self.base + path}: unexpected status code {status}: {detail}")
        return body, response_headers

    def _send(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        all_headers = dict(headers)
        if self._authorization:
            all_headers["Authorization"] = self._authorization
        request = urllib.request.Request(url, headers=all_headers)  # noqa: S310 - http(s) only
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                body = resp.read(MAX_WASM_BYTES + 1)
                return resp.status, body, {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read(64 * 1024)
                return exc.code, body, {k.lower(): v for k, v in exc.headers.items()}
        except http.client.HTTPException as exc:  # e.g. IncompleteRead: not an OSError
            raise OSError(f"GET {url}: {exc!r}") from exc

    def _authenticate(self, challenge: str) -> str:
        scheme, _, rest = challenge.strip().partition(" ")
        params = {
            key.lower(): quoted or bare
            for key, quoted, bare in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)
        }
        if scheme.lower() == "basic":
            if self.credentials is None:
                raise OSError(f"{self.base}: authentication required and no credentials given")
            return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if scheme.lower() == "bearer" and params.get("realm"):
            query = urllib.parse.urlencode(
                [(k, params[k]) for k in ("service", "scope") if params.get(k)]
            )
            realm = params["realm"]
            url = realm + ("&" if "?" in realm else "?") + query
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise OSError(f"rejected unsafe bearer realm {realm!r}")
            headers = {}
            if self.credentials is not None:
                encoded = base64.b64encode(":".join(self.credentials).encode()).decode()
                headers["Authorization"] = "Basic " + encoded
            status, body, _ = self._send(url, headers)
            token = json.loads(body).get("token") or json.loads(body).get("access_token")
            if status != 200 or not token:
                raise OSError(f"token request to {realm} failed with status {status}")
            return f"Bearer {token}"
        raise OSError(f"{self.base}: unsupported authentication challenge {challenge!r}")


# -- image layouts ---------------------------------------------------------------------------


def _plugin_from_targz(blob: bytes) -> bytes:
    """extractWasmPluginBinary: the file whose base name is plugin.wasm in a tar.gz."""
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
            for member in tar:
                if Path(member.name).name == PLUGIN_FILE and member.isfile():
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        return extracted.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ValueError(f"failed to parse layer as tar.gz: {exc}") from exc
    raise ValueError(f"{PLUGIN_FILE} not found in the archive")


def extract_module(manifest: Mapping[str, Any], blob: Callable[[str], bytes]) -> bytes:
    """The Wasm module from an image in one of the three layouts Istio accepts.
    `blob(digest)` downloads a layer. Raises ValueError naming what did not fit."""
    layers = manifest.get("layers") or []
    if manifest.get("mediaType") == DOCKER_MANIFEST:
        if not layers:
            raise ValueError("number of layers must be greater than zero")
        last = layers[-1]
        if last.get("mediaType") != DOCKER_LAYER:
            raise ValueError(f"invalid media type {last.get('mediaType')} (expect {DOCKER_LAYER})")
        return _plugin_from_targz(blob(last["digest"]))
    errors: list[str] = []
    if layers and layers[-1].get("mediaType") == OCI_LAYER:
        try:
            return _plugin_from_targz(blob(layers[-1]["digest"]))
        except ValueError as exc:
            errors.append(f"could not parse as compat variant: {exc}")
    else:
        found = layers[-1].get("mediaType") if layers else None
        errors.append(f"could not parse as compat variant: invalid media type {found}")
    if len(layers) != 2:
        errors.append(
            f"could not parse as oci variant: number of layers must be 2 but got {len(layers)}"
        )
    else:
        wasm = [layer for layer in layers if layer.get("mediaType") == WASM_LAYER]
        if wasm:
            return blob(wasm[0]["digest"])
        errors.append(
            f"could not parse as oci variant: could not find the layer of type {WASM_LAYER}"
        )
    raise ValueError("the given image is in invalid format as an OCI image: " + "; ".join(errors))


def _unbox(body: bytes) -> bytes:
    """httpfetcher.go unboxIfPossible: peel gzip and tar wrappers off a module, best effort."""
    data = body
    for _ in range(8):
        if data[:4] == WASM_MAGIC:
            return data
        try:
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            elif len(data) > 262 and data[257:262] == b"ustar":
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                    first = tar.next()
                    extracted = tar.extractfile(first) if first is not None else None
                    if extracted is None:
                        return body
                    data = extracted.read()
            else:
                return body
        except (OSError, tarfile.TarError, EOFError):
            return body
    return body


def _http_download(url: str, timeout: float) -> bytes:
    """httpfetcher.go Fetch: retries 5xx (but 501, 505, 511) and connection errors."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    backoff = 0.5
    last = ""
    for attempt in range(1, HTTP_MAX_ATTEMPTS + 1):
        try:
            with opener.open(url, timeout=timeout) as resp:
                return _unbox(resp.read(MAX_WASM_BYTES))
        except urllib.error.HTTPError as exc:
            exc.close()
            last = f"wasm module download request failed: status code {exc.code}"
            if exc.code < 500 or exc.code in (501, 505, 511):
                raise OSError(
                    f"wasm module download failed after {attempt} attempts, last error: {last}"
                ) from None
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or repr(exc)
        if attempt < HTTP_MAX_ATTEMPTS:
            time.sleep(backoff)
            backoff *= 1.5
    raise OSError(
        f"wasm module download failed after {HTTP_MAX_ATTEMPTS} attempts, last error: {last}"
    )


# -- the module cache (one per pod, like one istio-agent per pod) ------------------------------


@dataclass(frozen=True)
class _Key:
    url: str
    name: str  # the module's name, neutral to tag and digest
    resource_name: str
    resource_version: str


@dataclass
class _ChecksumEntry:
    checksum: str
    resource_versions: dict[str, str] = field(default_factory=dict)


class ModuleCache:
    """LocalFileCache of one istio-agent. The module FILES live in a directory shared by all
    agents (content-addressed: <dir>/<sha256(module name)>/<checksum>.wasm); which modules an
    agent has pulled, and what a tag resolved to, is per agent."""

    def __init__(self, directory: Path, pod_metrics: metrics.PodMetrics, log: AgentLog) -> None:
        self.dir = directory
        self.metrics = pod_metrics
        self.log = log
        self._lock = threading.Lock()
        self._modules: dict[tuple[str, str], Path] = {}
        self._checksums: dict[str, _ChecksumEntry] = {}

    def get(
        self,
        url: str,
        *,
        checksum: str,
        resource_name: str,
        resource_version: str,
        pull_secret: bytes | None,
        pull_policy: str,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> Path:
        """The local path of the module at `url` (cache.go Get / getOrFetch)."""
        key = _Key(url, _module_name(url), resource_name, resource_version)
        scheme = urllib.parse.urlsplit(url).scheme
        found, checksum = self._lookup(key, checksum, _ignore_resource_version(pull_policy, url))
        if found is not None:
            return found
        binary: Callable[[], bytes] | None = None
        if scheme in ("http", "https"):
            try:
                data = _http_download(url, timeout)
            except OSError as exc:
                self._count(metrics.DOWNLOAD_FAILURE)
                raise FetchError(str(exc), metrics.DOWNLOAD_FAILURE) from exc
            actual = hashlib.sha256(data).hexdigest()
        elif scheme == "oci":
            binary, actual = self._prepare_oci(url[len("oci://") :], pull_secret, timeout)
            data = b""
        else:
            raise FetchError(f"unsupported Wasm module downloading URL scheme: {scheme}", None)

        if not checksum:
            # The digest is known now: maybe that module is cached after all.
            again, _ = self._lookup(key, actual, True)
            if again is not None:
                return again
        elif actual != checksum:
            self._count(metrics.CHECKSUM_MISMATCH)
            raise FetchError(
                f"module downloaded from {url} has checksum {actual}, "
                f"which does not match: {checksum}",
                metrics.CHECKSUM_MISMATCH,
            )
        if binary is not None:
            try:
                data = binary()
            except (OSError, ValueError) as exc:
                self._count(metrics.DOWNLOAD_FAILURE)
                raise FetchError(
                    f"could not fetch Wasm binary: {exc}", metrics.DOWNLOAD_FAILURE
                ) from exc
        if data[:4] != WASM_MAGIC or len(data) < 8:
            self._count(metrics.FETCH_FAILURE)
            raise FetchError(f"fetched Wasm binary from {url} is invalid", metrics.FETCH_FAILURE)
        self._count(metrics.FETCH_SUCCESS)
        return self._add(key, actual, data)

    def _count(self, result: str) -> None:
        self.metrics.inc("istio_agent_wasm_remote_fetch_count", result=result)

    def _prepare_oci(
        self, ref_text: str, pull_secret: bytes | None, timeout: float
    ) -> tuple[Callable[[], bytes], str]:
        """imagefetcher.go PrepareFetch: the manifest now (its digest is the checksum), the
        layers later. Any failure here is a manifest_failure."""
        try:
            ref = parse_reference(ref_text)
            self.log.info(
                f"fetching image {ref.repository} from registry {ref.registry} "
                f"with tag {ref.identifier}"
            )
            credentials = docker_credentials(pull_secret, ref.registry) if pull_secret else None
            client = RegistryClient(ref.registry, credentials, timeout)
            try:
                raw, _ = client.get(
                    f"/v2/{ref.repository}/manifests/{ref.identifier}",
                    accept=f"{OCI_MANIFEST}, {DOCKER_MANIFEST}",
                )
            except OSError as exc:
                raise OSError(f"could not fetch manifest: {exc}") from exc
            try:
                manifest = json.loads(raw)
                if not isinstance(manifest, dict) or "layers" not in manifest:
                    raise ValueError("not an image manifest")
            except ValueError as exc:
                raise OSError(f"could not fetch image: {exc}") from exc
        except (OSError, ValueError) as exc:
            self._count(metrics.MANIFEST_FAILURE)
            raise FetchError(
                f"could not fetch Wasm OCI image: {exc}", metrics.MANIFEST_FAILURE
            ) from exc

        def blob(digest: str) -> bytes:
            data, _ = client.get(f"/v2/{ref.repository}/blobs/{digest}")
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise OSError(f"blob {digest}: content does not match its digest")
            return data

        return (lambda: extract_module(manifest, blob)), hashlib.sha256(raw).hexdigest()

    def _lookup(self, key: _Key, checksum: str, ignore_version: bool) -> tuple[Path | None, str]:
        """cache.go getEntry: (the cached module or None, the checksum to expect)."""
        hit = False
        try:
            with self._lock:
                url = key.url
                if not checksum and url.startswith("oci://") and "@sha256:" in url:
                    checksum = url.rsplit("@sha256:", 1)[1]
                if not checksum and url in self._checksums:
                    entry = self._checksums[url]
                    seen = entry.resource_versions.get(key.resource_name)
                    if ignore_version or seen == key.resource_version:
                        checksum = entry.checksum
                    entry.resource_versions[key.resource_name] = key.resource_version
                path = self._modules.get((key.name, checksum))
                if path is not None and path.is_file():
                    hit = True
                    return path, checksum
                return None, checksum
        finally:
            self.metrics.inc("istio_agent_wasm_cache_lookup_count", hit="true" if hit else "false")

    def _add(self, key: _Key, checksum: str, data: bytes) -> Path:
        """cache.go addEntry; a tagged (or http) URL remembers what it resolved to."""
        with self._lock:
            if not key.url.startswith("oci://") or "@" not in key.url:
                entry = self._checksums.setdefault(key.url, _ChecksumEntry(checksum))
                entry.checksum = checksum
                entry.resource_versions[key.resource_name] = key.resource_version
            digest_dir = self.dir / hashlib.sha256(key.name.encode()).hexdigest()
            path = digest_dir / f"{checksum}.wasm"
            if not path.is_file():
                write_atomically(path, data)
            self._modules[(key.name, checksum)] = path
            self.metrics.set("istio_agent_wasm_cache_entries", len(self._modules))
            return path


def _module_name(url: str) -> str:
    """cache.go moduleNameFromURL: oci URLs without tag or digest."""
    if url.startswith("oci://"):
        try:
            return "oci://" + parse_reference(url[len("oci://") :]).context
        except ValueError:
            return url
    return url


def _ignore_resource_version(pull_policy: str, url: str) -> bool:
    """cache.go shouldIgnoreResourceVersion."""
    if pull_policy == "Always":
        return False
    if pull_policy == "IfNotPresent":
        return True
    parts = urllib.parse.urlsplit(url)
    return parts.scheme != "oci" or not url.endswith(":latest")


# -- the conversion of one ECDS resource -----------------------------------------------------


def convert(resource: RemoteWasm, cache: ModuleCache) -> dict[str, Any]:
    """The filter config istio-agent forwards to Envoy for `resource` (convert.go): the Wasm
    filter with its module rewritten to a local file, or on failure the RBAC stand-in."""
    status = metrics.CONVERSION_SUCCESS
    try:
        if resource.scheme == "file":
            status = metrics.NO_REMOTE_LOAD
            module = Path(urllib.parse.urlsplit(resource.url).path)
        else:
            if resource.pull_secret == b"":
                status = metrics.FETCH_FAILURE
                raise FetchError(
                    f"cannot fetch Wasm module {resource.config_name}: "
                    "missing image pulling secret",
                    None,
                )
            try:
                module = cache.get(
                    resource.url,
                    checksum=resource.sha256,
                    resource_name=resource.resource_name,
                    resource_version=resource.resource_version,
                    pull_secret=resource.pull_secret,
                    pull_policy=resource.pull_policy,
                )
            except FetchError as exc:
                status = metrics.FETCH_FAILURE
                raise FetchError(
                    f"cannot fetch Wasm module {resource.url}: {exc}", exc.result
                ) from exc
            except Exception as exc:  # a fetch never takes the sidecar down
                status = metrics.FETCH_FAILURE
                raise FetchError(f"cannot fetch Wasm module {resource.url}: {exc!r}", None) from exc
    except FetchError as exc:
        allow = resource.failure_policy == "FAIL_OPEN"
        cache.log.error(
            f"error in converting the wasm config to local: {exc}. "
            f"applying {'allow' if allow else 'deny'} RBAC filter"
        )
        return envoyconfig.rbac_filter(allow=allow)
    finally:
        cache.metrics.inc("istio_agent_wasm_config_conversion_count", result=status)
    return envoyconfig.wasm_filter(
        name=resource.config_name,
        root_id=resource.root_id,
        configuration=resource.configuration,
        module=module,
        failure_policy=resource.failure_policy,
        env=dict(resource.env),
        host_env_keys=resource.host_env_keys,
    )
