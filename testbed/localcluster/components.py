"""Command lines of the control-plane components, with the reason for each non-default flag."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.kwok import FALLBACK_POD_CIDR, NODE_ANNOTATION, NODE_ANNOTATION_VALUE
from localcluster.network import LOOPBACK, free_ports

SERVICE_CIDR = "10.96.0.0/16"
# The first address of the service range: the apiserver's own `kubernetes` Service. In-cluster
# clients (none run here, but certificates are checked by name) would dial it.
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def allocate(cls) -> Ports:
        return cls(*free_ports(len(dataclasses.fields(cls))))


@dataclass(frozen=True)
class Pki:
    """Paths of the files every component reads; see cluster.py for how they are made."""

    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path
    controller_manager_cert: Path
    controller_manager_key: Path
    scheduler_cert: Path
    scheduler_key: Path
    kwok_cert: Path
    kwok_key: Path
    sa_private_key: Path
    sa_public_key: Path


def etcd(bin_dir: Path, data_dir: Path, ports: Ports) -> list[str]:
    client = f"http://{LOOPBACK}:{ports.etcd_client}"
    peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
    return [
        str(bin_dir / "etcd"),
        "--name=testbed",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        # etcd binds a peer port even as a single member; give it a free one so two clusters
        # (or a developer's own etcd on 2380) do not collide.
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=testbed={peer}",
        "--initial-cluster-state=new",
        # The data is thrown away with the workdir; skipping fsync makes every API write
        # (and so every test) much faster on slow CI disks.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def kube_apiserver(bin_dir: Path, pki: Pki, ports: Ports) -> list[str]:
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://{LOOPBACK}:{ports.etcd_client}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.apiserver_cert}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        # TokenRequest (kubectl create token, projected SA tokens) needs all three.
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_public_key}",
        f"--service-account-signing-key-file={pki.sa_private_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # Endpoints may not point at loopback, so publishing 127.0.0.1 for the `kubernetes`
        # Service fails (and logs an error) on every sync. No pod here dials that Service.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        # The apiserver reaches kwok's kubelet-like server (logs, exec, port-forward) at the
        # node's address. The default preference starts with Hostname, and `kwok-node-0` does
        # not resolve; kwok publishes InternalIP 127.0.0.1 (--node-ip).
        "--kubelet-preferred-address-types=InternalIP",
        # kwok serves a certificate from our CA (with IP SAN 127.0.0.1), so verify it...
        f"--kubelet-certificate-authority={pki.ca_cert}",
        # ...and present a client certificate as a real apiserver would (kwok ignores it).
        f"--kubelet-client-certificate={pki.kubelet_client_cert}",
        f"--kubelet-client-key={pki.kubelet_client_key}",
        # Keep the apiserver's own chatter out of test logs; errors still show.
        "--v=1",
    ]


def kube_controller_manager(bin_dir: Path, pki: Pki, ports: Ports, kubeconfig: Path) -> list[str]:
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        # No --authentication/--authorization-kubeconfig: delegated auth would only guard
        # /metrics, and it loops on "missing requestheader-client-ca-file" errors unless the
        # apiserver also gets a front-proxy CA. /healthz is reachable either way.
        f"--bind-address={LOOPBACK}",
        # Not the default 10257: two clusters (or a real one) may run on this machine.
        f"--secure-port={ports.controller_manager}",
        f"--tls-cert-file={pki.controller_manager_cert}",
        f"--tls-private-key-file={pki.controller_manager_key}",
        "--leader-elect=false",
        # All default controllers. The cloud ones (service-lb, node-route, cloud-node-lifecycle)
        # skip themselves without a cloud provider; node-ipam stays off because
        # --allocate-node-cidrs defaults to false (nodes get their podCIDR from us instead).
        "--controllers=*",
        # Each controller runs as its own ServiceAccount (kube-system/<controller>), as in
        # kubeadm clusters. With =false every controller would act as the bare
        # system:kube-controller-manager user, whose bootstrap ClusterRole is tiny under RBAC
        # (it could not even create a ReplicaSet's pods), so Deployments would never run.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_private_key}",
        # Published as the kube-root-ca.crt ConfigMap in every namespace.
        f"--root-ca-file={pki.ca_cert}",
        # Lets CertificateSigningRequests be signed by our CA, should a test need one.
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # Client-side rate limits (default 20 qps, burst 30) pace the start-up, in which every
        # controller creates its ServiceAccount and requests a token; a loopback apiserver
        # serving one test run can take far more.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--v=1",
    ]


def kube_scheduler(bin_dir: Path, pki: Pki, ports: Ports, kubeconfig: Path) -> list[str]:
    return [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        # No delegated auth kubeconfigs, for the same reason as the controller-manager.
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.scheduler}",
        f"--tls-cert-file={pki.scheduler_cert}",
        f"--tls-private-key-file={pki.scheduler_key}",
        "--leader-elect=false",
        "--v=1",
    ]


NODE_LEASE_SECONDS = 40


def kwok(
    bin_dir: Path, pki: Pki, ports: Ports, kubeconfig: Path, configs: Sequence[Path]
) -> list[str]:
    return [
        str(bin_dir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        # Stage objects first, then any extra config (e.g. ClusterLogs); kwok reads them once
        # at start-up.
        *(f"--config={c}" for c in configs),
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}={NODE_ANNOTATION_VALUE}",
        # Node Leases, renewed every quarter of this, as a kubelet does. Said explicitly: with
        # --config files that hold only Stages, kwok 0.8 leaves its default (40) unset and
        # renews no Lease; then only the status heartbeat Stage (every 5-10 min) kept nodes
        # alive, so the node lifecycle controller (grace 50 s) marked every node NotReady for
        # ~5 s each ~55 s, with NodeNotReady on their pods.
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        # Nodes advertise this address (InternalIP) and hostIP of their pods.
        f"--node-ip={LOOPBACK}",
        # kwok's kubelet-like server: the apiserver proxies `kubectl logs/exec` here...
        f"--server-address={LOOPBACK}:{ports.kwok}",
        # ...and finds it through the port nodes publish in status.daemonEndpoints.
        f"--node-port={ports.kwok}",
        f"--tls-cert-file={pki.kwok_cert}",
        f"--tls-private-key-file={pki.kwok_key}",
        # Pod IP pool for managed nodes that have no spec.podCIDR (ours all have one).
        f"--cidr={FALLBACK_POD_CIDR}",
    ]
