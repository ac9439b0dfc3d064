"""A local Kubernetes control plane with kwok-simulated nodes, for tests and the demo.

with LocalCluster(tmp_path) as cluster:
    cluster.kubectl("get", "nodes")
"""

from localcluster.binaries import ensure_binaries
from localcluster.cluster import LocalCluster
from localcluster.errors import ClusterStartError, KubectlError
from localcluster.registry import Registry, RegistryError

__all__ = [
    "ClusterStartError",
    "KubectlError",
    "LocalCluster",
    "Registry",
    "RegistryError",
    "ensure_binaries",
]
