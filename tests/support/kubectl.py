"""kubectl with JSON in and out, as the integration tests read and write objects."""

from __future__ import annotations

import json
from typing import Any

from localcluster import LocalCluster


def get_json(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def apply_json(cluster: LocalCluster, manifest: dict[str, Any], *args: str) -> Any:
    return cluster.kubectl("apply", "-f", "-", *args, input=json.dumps(manifest), check=False)
