"""Wasm modules for the tests: made byte by byte (for what a real filter build cannot be), made
unique by a custom section (same code, a digest of its own), and the security-headers versions
published to a cluster's registry."""

from __future__ import annotations

import subprocess
from pathlib import Path

from localcluster.oci_publish import publish

REPO_ROOT = Path(__file__).resolve().parents[2]


def built_filters() -> dict[str, bytes]:
    """Every filter of filters/, built from source (cached by filters/build.sh), by name."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "filters" / "build.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    out = Path(result.stdout.strip().splitlines()[-1])
    return {p.stem: p.read_bytes() for p in sorted(out.glob("*.wasm"))}


def wasm_module(*exports: str) -> bytes:
    """A minimal valid Wasm binary with one function and the given exports."""

    def vec(items: list[bytes]) -> bytes:
        return bytes([len(items)]) + b"".join(items)

    def section(sid: int, body: bytes) -> bytes:
        return bytes([sid, len(body)]) + body

    types = section(1, vec([b"\x60\x00\x00"]))  # () -> ()
    funcs = section(3, vec([b"\x00"]))
    export = section(7, vec([bytes([len(n)]) + n.encode() + b"\x00\x00" for n in exports]))
    code = section(10, vec([b"\x02\x00\x0b"]))  # body: no locals, end
    return b"\0asm\x01\0\0\0" + types + funcs + export + code


def with_custom_section(module: bytes, name: str, payload: bytes) -> bytes:
    """The module with a Wasm custom section appended: same code, different bytes and digest."""

    def uleb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    body = uleb(len(name)) + name.encode() + payload
    return module + b"\x00" + uleb(len(body)) + body


class Published:
    """Versions of the security-headers filter in the cluster's open registry."""

    def __init__(self, registry: str, modules: dict[str, bytes]) -> None:
        self.registry = registry
        self.modules = modules
        self.digests: dict[str, str] = {}
        for tag in ("v1.1.0", "v1.2.0"):
            wasm = with_custom_section(
                modules["security-headers"], "filterrelease.version", tag.encode()
            )
            self.digests[tag] = publish(registry, "filters/security-headers", tag, wasm, "oci-wasm")

    def url(self, tag: str, repository: str = "filters/security-headers") -> str:
        return f"oci://{self.registry}/{repository}:{tag}"

    def pinned(self, tag: str) -> str:
        return f"oci://{self.registry}/filters/security-headers@{self.digests[tag]}"
