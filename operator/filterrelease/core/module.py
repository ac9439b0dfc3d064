"""Module pre-flight rules, pure: what Istio will accept before any proxy is asked to fetch it.

Istio's agent (istio/istio pkg/wasm/imagefetcher.go) accepts exactly three image layouts:
- a Docker image (manifest application/vnd.docker.distribution.manifest.v2+json) whose LAST
  layer is application/vnd.docker.image.rootfs.diff.tar.gzip holding a file named plugin.wasm;
- an OCI image whose LAST layer is application/vnd.oci.image.layer.v1.tar+gzip holding
  plugin.wasm (the "compat" variant);
- an OCI artifact with EXACTLY two layers, one of which is
  application/vnd.module.wasm.content.layer.v1+wasm (the raw module).
For oci:// URLs the sha256 Istio checks is the manifest digest; for http(s):// it is the sha256
of the .wasm file. These functions decide on bytes and JSON the shell fetched; they fetch nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from filterrelease.core.spec import Module

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = (DOCKER_MANIFEST, OCI_MANIFEST)
PLUGIN_FILE = "plugin.wasm"
# Envoy refuses modules that export none of these (proxy-wasm ABI versions it knows).
ABI_EXPORTS = ("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0", "proxy_abi_version_0_1_0")


class Reason(StrEnum):
    """Why a module failed pre-flight: the reason of condition ModuleVerified=False."""

    NOT_FOUND = "NotFound"
    UNAUTHORIZED = "Unauthorized"
    UNSUPPORTED_FORMAT = "UnsupportedFormat"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    INVALID_MODULE = "InvalidModule"
    CONFIG_REJECTED = "ConfigRejected"
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"  # transient: retried, never a verdict


class ModuleProblem(Exception):  # noqa: N818  (a verdict, raised by the rules below)
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class OciRef(BaseModel):
    model_config = ConfigDict(frozen=True)
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        return f"oci://{self.registry}/{self.repository}@{digest}"


_OCI = re.compile(
    r"^oci://(?P<registry>[^/]+)/(?P<repository>[a-z0-9._/-]+?)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


def parse_oci(url: str) -> OciRef:
    match = _OCI.match(url)
    if not match:
        raise ModuleProblem(Reason.NOT_FOUND, f"{url} is not a valid OCI reference")
    return OciRef(**match.groupdict())


class LayerChoice(BaseModel):
    """Which blob of an accepted image holds the module, and how it is packed."""

    model_config = ConfigDict(frozen=True)
    layout: str  # docker | oci-compat | oci-wasm
    digest: str
    tar_gz: bool


def choose_layer(manifest: dict[str, Any], media_type: str) -> LayerChoice:
    """Apply Istio's acceptance rules to a manifest, or raise UnsupportedFormat saying why."""
    if media_type in (OCI_INDEX, DOCKER_LIST):
        raise ModuleProblem(
            Reason.UNSUPPORTED_FORMAT,
            "the reference is an image index (multi-platform list), not a single Wasm image; "
            "push the module as a single-manifest image",
        )
    layers = manifest.get("layers") or []
    if not layers:
        raise ModuleProblem(Reason.UNSUPPORTED_FORMAT, "the image has no layers")
    last = layers[-1]
    declared = manifest.get("mediaType") or media_type
    if declared == DOCKER_MANIFEST:
        if last.get("mediaType") != DOCKER_LAYER:
            raise ModuleProblem(
                Reason.UNSUPPORTED_FORMAT,
                f"Docker image whose last layer is {last.get('mediaType')}; Istio needs "
                f"{DOCKER_LAYER} holding {PLUGIN_FILE}",
            )
        return LayerChoice(layout="docker", digest=last["digest"], tar_gz=True)
    if last.get("mediaType") == OCI_LAYER:
        return LayerChoice(layout="oci-compat", digest=last["digest"], tar_gz=True)
    wasm = [layer for layer in layers if layer.get("mediaType") == WASM_LAYER]
    if len(layers) == 2 and wasm:
        return LayerChoice(layout="oci-wasm", digest=wasm[0]["digest"], tar_gz=False)
    kinds = ", ".join(str(layer.get("mediaType")) for layer in layers)
    hint = (
        " (a plain `oras push` of the .wasm makes such an image; push it as a Wasm artifact "
        "or a compat image instead)"
        if len(layers) == 1
        else ""
    )
    raise ModuleProblem(
        Reason.UNSUPPORTED_FORMAT,
        f"Istio accepts a Docker or OCI image whose last layer is a tar.gz holding "
        f"{PLUGIN_FILE}, or an OCI artifact with exactly two layers one of which is {WASM_LAYER}; "
        f"this image has {len(layers)} layer(s): {kinds}{hint}",
    )


def extract_plugin(blob: bytes, choice: LayerChoice) -> bytes:
    """The module bytes inside the chosen layer."""
    if not choice.tar_gz:
        return blob
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            for member in tar:
                if member.isfile() and member.name.rsplit("/", 1)[-1] == PLUGIN_FILE:
                    data = tar.extractfile(member)
                    if data is not None:
                        return data.read()
    except (OSError, EOFError, tarfile.TarError) as err:
        raise ModuleProblem(
            Reason.UNSUPPORTED_FORMAT, f"the module layer is not a valid tar.gz: {err}"
        ) from err
    raise ModuleProblem(
        Reason.UNSUPPORTED_FORMAT, f"the {choice.layout} layer holds no file named {PLUGIN_FILE}"
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(expected_hex: str | None, actual_hex: str, what: str) -> None:
    if expected_hex and expected_hex != actual_hex:
        raise ModuleProblem(
            Reason.CHECKSUM_MISMATCH,
            f"spec.module.sha256 is {expected_hex} but the {what} is sha256:{actual_hex}; "
            "the image changed or the checksum is wrong",
        )


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated integer")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise ValueError("integer too long")


def wasm_exports(module: bytes) -> list[str]:
    """Names exported by a WebAssembly binary (only the export section is decoded)."""
    if module[:4] != b"\0asm":
        raise ValueError("not a WebAssembly binary (no \\0asm magic)")
    if module[4:8] != b"\x01\0\0\0":
        raise ValueError("unsupported WebAssembly version")
    pos, names = 8, []
    while pos < len(module):
        section = module[pos]
        size, pos = _uleb(module, pos + 1)
        end = pos + size
        if end > len(module):
            raise ValueError("truncated section")
        if section == 7:  # export section: vec(name, kind byte, index)
            count, p = _uleb(module, pos)
            for _ in range(count):
                length, p = _uleb(module, p)
                names.append(module[p : p + length].decode("utf-8", "replace"))
                _, p = _uleb(module, p + length + 1)
        pos = end
    return names


def check_wasm(module: bytes) -> str:
    """Raise InvalidModule unless the bytes are a proxy-wasm module; return its ABI export."""
    try:
        exports = wasm_exports(module)
    except ValueError as err:
        raise ModuleProblem(Reason.INVALID_MODULE, f"the module is not valid Wasm: {err}") from err
    abi = [name for name in exports if name in ABI_EXPORTS]
    if not abi:
        raise ModuleProblem(
            Reason.INVALID_MODULE,
            "the module is WebAssembly but exports no proxy-wasm ABI version "
            f"({', '.join(ABI_EXPORTS)}): it was not built with a proxy-wasm SDK",
        )
    return abi[0]


class VerifiedModule(BaseModel):
    """A module that passed pre-flight, pinned: what the WasmPlugin will point at."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, alias_generator=to_camel)
    source_url: str  # as written in the spec
    url: str  # pinned: oci://host/repo@sha256:<manifest digest>, or the http(s) URL as is
    sha256: str  # what Istio checks: manifest digest (oci) or module sha256 (http), hex
    layout: str  # docker | oci-compat | oci-wasm | http
    abi: str
    pull_secret: str | None = None
    generation: int | None = None  # the release generation it was resolved for
    dry_run: bool = False  # loaded in a real Envoy with the release's pluginConfig
    # Which pluginConfig that was (dry_run_key): a restarted operator takes the verdict from the
    # status rather than run the same dry run again.
    dry_run_config: str | None = None


class ModuleFailure(BaseModel):
    model_config = ConfigDict(frozen=True)
    reason: Reason
    message: str

    @property
    def transient(self) -> bool:
        return self.reason is Reason.REGISTRY_UNAVAILABLE


def reusable_resolution(
    module: Module, generation: int, previous: VerifiedModule | None
) -> VerifiedModule | None:
    """The earlier resolution of the same module source, if the release must stay on it.

    A tag is resolved once and the release stays pinned to that digest: a tag that moves in the
    registry must not roll a new module out behind the user's back. imagePullPolicy Always asks
    for a fresh resolution at every new generation of the release (never on a mere resync).
    """
    if previous is None or previous.source_url != module.url:
        return None
    if module.sha256 and module.sha256 != previous.sha256:
        return None
    if module.image_pull_secret != previous.pull_secret:
        return None
    if module.image_pull_policy == "Always" and previous.generation != generation:
        return None
    return previous


def dry_run_key(configuration: str) -> str:
    """Names the pluginConfig (as the JSON text Istio hands the plugin) a dry run passed with."""
    return hashlib.sha256(configuration.encode()).hexdigest()[:16]
