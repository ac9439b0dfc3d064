"""Istio's CRDs, as a cluster with Istio would have them: Istio's own files from ../shared/istio
(never hand-written copies), one file per Istio version the tests run against.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
ISTIO_CRD_FILES = {
    "1.28.10": "wasmplugin-crd-1.28.10.yaml",
    "1.30.3": "extensions-crds-1.30.3.yaml",
}
ISTIO_VERSIONS = tuple(ISTIO_CRD_FILES)
DEFAULT_ISTIO_VERSION = "1.30.3"


def _local_origin() -> Path | None:
    """The checkout this one was cloned from, when that is a local path (`git clone . /tmp/x`):
    its shared/ folder is then the one meant."""
    try:
        url = subprocess.run(
            ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
            capture_output=True, text=True, check=False, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    url = url.removeprefix("file://")
    return Path(url) if url.startswith("/") else None


def istio_crd_dir() -> Path:
    """Where Istio's CRD files are: $FILTERRELEASE_ISTIO_CRDS, else shared/istio beside the repo
    (or beside the local checkout this one was cloned from)."""
    configured = os.environ.get("FILTERRELEASE_ISTIO_CRDS")
    if configured:
        candidates = [Path(configured)]
    else:
        candidates = [REPO.parent / "shared" / "istio"]
        if (origin := _local_origin()) is not None:
            candidates.append(origin.parent / "shared" / "istio")
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"Istio's CRDs are not at {' or '.join(map(str, candidates))}: set "
        "FILTERRELEASE_ISTIO_CRDS to the folder holding " + ", ".join(ISTIO_CRD_FILES.values())
    )


def install_istio_crds(cluster: LocalCluster, version: str) -> None:
    path = istio_crd_dir() / ISTIO_CRD_FILES[version]
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    # `kubectl wait` fails at once on a CRD that has no conditions yet: retry it until the
    # CRD is established.
    cluster.wait_for(
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/wasmplugins.extensions.istio.io", check=False,
        ).returncode == 0,
        timeout=90,
        what="the WasmPlugin CRD established",
    )  # fmt: skip
