"""Module pre-flight rules: Istio's three accepted layouts, plugin.wasm extraction, Wasm exports."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from filterrelease.core.module import (
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    WASM_LAYER,
    LayerChoice,
    ModuleProblem,
    Reason,
    check_digest,
    check_wasm,
    choose_layer,
    extract_plugin,
    parse_oci,
    wasm_exports,
)
from tests.support.wasm import wasm_module


def targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def layer(media_type: str, digest: str = "sha256:" + "1" * 64) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": 1}


@pytest.mark.parametrize(
    ("manifest", "media_type", "layout", "tar_gz"),
    [
        (
            {
                "mediaType": DOCKER_MANIFEST,
                "layers": [layer(DOCKER_LAYER), layer(DOCKER_LAYER, "sha256:" + "2" * 64)],
            },
            DOCKER_MANIFEST,
            "docker",
            True,
        ),
        (
            {"mediaType": OCI_MANIFEST, "layers": [layer(OCI_LAYER, "sha256:" + "2" * 64)]},
            OCI_MANIFEST,
            "oci-compat",
            True,
        ),
        (
            {
                "layers": [
                    layer("application/vnd.module.wasm.config.v1+json"),
                    layer(WASM_LAYER, "sha256:" + "2" * 64),
                ]
            },
            OCI_MANIFEST,
            "oci-wasm",
            False,
        ),
    ],
)
def test_accepted_layouts(
    manifest: dict[str, object], media_type: str, layout: str, tar_gz: bool
) -> None:
    choice = choose_layer(manifest, media_type)
    assert choice == LayerChoice(layout=layout, digest="sha256:" + "2" * 64, tar_gz=tar_gz)


@pytest.mark.parametrize(
    ("manifest", "media_type", "message"),
    [
        (
            {
                "mediaType": OCI_MANIFEST,
                "layers": [layer("application/vnd.oci.image.layer.v1.tar")],
            },
            OCI_MANIFEST,
            "oras push",
        ),
        (
            {"mediaType": OCI_MANIFEST, "layers": [layer(WASM_LAYER)]},
            OCI_MANIFEST,
            "exactly two layers",
        ),
        ({"layers": [layer(WASM_LAYER), layer("a"), layer("b")]}, OCI_MANIFEST, "3 layer(s)"),
        (
            {"mediaType": DOCKER_MANIFEST, "layers": [layer(OCI_LAYER)]},
            DOCKER_MANIFEST,
            "Docker image whose last layer",
        ),
        ({"mediaType": OCI_MANIFEST, "layers": []}, OCI_MANIFEST, "no layers"),
        ({"manifests": []}, OCI_INDEX, "image index"),
    ],
)
def test_rejected_layouts_say_why(
    manifest: dict[str, object], media_type: str, message: str
) -> None:
    with pytest.raises(ModuleProblem) as err:
        choose_layer(manifest, media_type)
    assert err.value.reason is Reason.UNSUPPORTED_FORMAT
    assert message in err.value.message


def test_plugin_is_found_in_a_tar_gz_layer_even_in_a_folder() -> None:
    module = wasm_module("proxy_abi_version_0_2_1")
    blob = targz({"README": b"hi", "dist/plugin.wasm": module})
    assert extract_plugin(blob, LayerChoice(layout="oci-compat", digest="d", tar_gz=True)) == module


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (targz({"filter.wasm": b"x"}), "no file named plugin.wasm"),
        (b"not gzip", "not a valid tar.gz"),
    ],
)
def test_bad_tar_gz_layers(blob: bytes, message: str) -> None:
    with pytest.raises(ModuleProblem) as err:
        extract_plugin(blob, LayerChoice(layout="docker", digest="d", tar_gz=True))
    assert message in err.value.message


def test_raw_wasm_layer_is_the_module() -> None:
    assert (
        extract_plugin(b"raw", LayerChoice(layout="oci-wasm", digest="d", tar_gz=False)) == b"raw"
    )


def test_exports_are_read_from_the_binary() -> None:
    module = wasm_module("proxy_abi_version_0_2_1", "proxy_on_vm_start", "_initialize")
    assert wasm_exports(module) == ["proxy_abi_version_0_2_1", "proxy_on_vm_start", "_initialize"]
    assert check_wasm(module) == "proxy_abi_version_0_2_1"


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (b"PK\x03\x04 a zip file", "no \\0asm magic"),
        (b"\0asm\x02\0\0\0", "unsupported WebAssembly version"),
        (b"\0asm\x01\0\0\0\x07\x50", "truncated"),
        (wasm_module("main"), "exports no proxy-wasm ABI version"),
    ],
)
def test_invalid_modules(module: bytes, message: str) -> None:
    with pytest.raises(ModuleProblem) as err:
        check_wasm(module)
    assert err.value.reason is Reason.INVALID_MODULE
    assert message in err.value.message


def test_checksum_mismatch_names_both_digests() -> None:
    check_digest(None, "a" * 64, "manifest digest")
    check_digest("a" * 64, "a" * 64, "manifest digest")
    with pytest.raises(ModuleProblem) as err:
        check_digest("b" * 64, "a" * 64, "manifest digest")
    assert err.value.reason is Reason.CHECKSUM_MISMATCH
    assert "b" * 64 in err.value.message
    assert "sha256:" + "a" * 64 in err.value.message


@pytest.mark.parametrize(
    ("url", "registry", "repository", "reference"),
    [
        ("oci://127.0.0.1:5000/filters/sec:v1.1.0", "127.0.0.1:5000", "filters/sec", "v1.1.0"),
        ("oci://registry.local/f/sec", "registry.local", "f/sec", "latest"),
        ("oci://r.io/sec@sha256:" + "c" * 64, "r.io", "sec", "sha256:" + "c" * 64),
    ],
)
def test_parse_oci(url: str, registry: str, repository: str, reference: str) -> None:
    ref = parse_oci(url)
    assert (ref.registry, ref.repository, ref.reference) == (registry, repository, reference)
    assert ref.pinned("sha256:" + "d" * 64) == f"oci://{registry}/{repository}@sha256:" + "d" * 64
