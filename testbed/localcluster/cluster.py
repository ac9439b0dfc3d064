"""LocalCluster: a real control plane (etcd, apiserver, controller-manager, scheduler) with kwok
playing the kubelets, all on 127.0.0.1, started and stopped from Python.

Start order is the dependency order; each step waits, with a deadline, for proof that the
component works before the next one relies on it. Any failure stops what was started and raises
ClusterStartError carrying the failing component's log tail.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from localcluster import components
from localcluster.binaries import ensure_binaries
from localcluster.errors import ClusterStartError, KubectlError
from localcluster.kubeconfig import write_kubeconfig
from localcluster.kwok import STAGES_YAML, node_manifests
from localcluster.network import LOOPBACK, client_tls, http_get, http_ok
from localcluster.pki import CertificateAuthority, CertKey, write_service_account_keys
from localcluster.processes import ManagedProcess, StartStop, stop_in_reverse
from localcluster.registry import Registry

# Seconds a component gets to exit after SIGTERM before its group is SIGKILLed. The apiserver
# drains in about a second; nothing here holds state worth a longer wait.
_STOP_GRACE = 5.0
_SMOKE_NAMESPACE = "kube-system"
_SMOKE_NAME = "testbed-smoke"
_SMOKE_IMAGE = "registry.local/pause:1"
_MAX_NODES = 256  # one /24 of 10.244.0.0/16 per node
# Fixed credentials of the registry that requires basic auth: test data, not a secret.
REGISTRY_USERNAME = "filterrelease"
REGISTRY_PASSWORD = "testbed-registry-password"  # noqa: S105 - test data


def _elapsed_since(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f}s"


class LocalCluster(StartStop):
    """A throwaway Kubernetes control plane with `nodes` kwok-simulated nodes.

    Use as a context manager, or call start() and stop(). Everything lives under `workdir`:
    logs/<component>.log, pki/, etcd/, kwok/, admin.kubeconfig, and with `registries` two OCI
    registries on loopback (registry/, auth-registry/): an open one and one that requires basic
    auth with `registry_credentials`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        bin_dir: Path | None = None,
        nodes: int = 3,
        kwok_configs: Sequence[Path] = (),
        registries: bool = True,
    ) -> None:
        """`kwok_configs` are extra kwok config files (e.g. ClusterLogs rules that serve pod
        logs from files), passed with --config after our stages; kwok reads them at start."""
        if not 0 <= nodes <= _MAX_NODES:
            raise ValueError(f"nodes must be between 0 and {_MAX_NODES}")
        self.workdir = Path(workdir).resolve()
        self._bin_dir = Path(bin_dir).resolve() if bin_dir is not None else None
        self.nodes = nodes
        self.kwok_configs = [Path(c).resolve() for c in kwok_configs]
        self._registries: dict[str, Registry] = {}
        if registries:
            for name, user, password in (
                ("registry", None, None),
                ("auth-registry", *self.registry_credentials),
            ):
                self._registries[name] = Registry(
                    self.workdir / name,
                    name=name,
                    username=user,
                    password=password,
                    log_path=self.logs_dir / f"{name}.log",
                )
        self._processes: list[ManagedProcess] = []
        self._server: str | None = None
        self._ports: components.Ports | None = None
        self._api_tls: ssl.SSLContext | None = None
        self._clients: dict[str, CertKey] = {}
        self._started = False
        self._stopped = False

    # -- public surface -------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def server(self) -> str:
        if self._server is None:
            raise RuntimeError("the cluster has not been started")
        return self._server

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def kwok_server_port(self) -> int:
        """Port of kwok's kubelet-like server (where the apiserver fetches pod logs)."""
        if self._ports is None:
            raise RuntimeError("the cluster has not been started")
        return self._ports.kwok

    @property
    def registry(self) -> Registry:
        """The open OCI registry (plain HTTP on loopback; push and pull without credentials)."""
        return self._registry("registry")

    @property
    def auth_registry(self) -> Registry:
        """The OCI registry that requires basic auth with `registry_credentials`."""
        return self._registry("auth-registry")

    @property
    def registry_credentials(self) -> tuple[str, str]:
        return (REGISTRY_USERNAME, REGISTRY_PASSWORD)

    def _registry(self, name: str) -> Registry:
        if name not in self._registries:
            raise RuntimeError("this cluster was made with registries=False")
        return self._registries[name]

    @property
    def pids(self) -> dict[str, int]:
        """Component name -> pid of every process this cluster started (alive or not)."""
        return {p.name: p.pid for p in self._processes}

    def dead_components(self) -> list[str]:
        """Names of started components that have exited (empty while all is well)."""
        return [p.name for p in self._processes if not p.alive()]

    def kubectl_env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for running kubectl (or other clients) against this cluster by hand."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.admin_kubeconfig)
        # A discovery cache per cluster: the default ~/.kube/cache is keyed by host:port, and
        # a port reused by a later cluster would serve stale API lists (missing CRDs).
        env["KUBECACHEDIR"] = str(self.workdir / "kubectl-cache")
        return env

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (admin by default) and capture its output."""
        argv = [str(self.bin_dir / "kubectl"), *args]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.kubectl_env(kubeconfig),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def serviceaccount_kubeconfig(
        self, namespace: str, name: str, *, path: Path | None = None
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount namespace/name with a 24h token.

        Creates the namespace and the ServiceAccount if missing. The token comes from the
        TokenRequest API, like a pod's projected token; no client certificate is involved.
        """
        manifest = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace},
                },
            ],
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        token = self.kubectl(
            "create", "token", name, "--namespace", namespace, "--duration=24h"
        ).stdout.strip()
        if path is None:
            path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(
            path,
            server=self.server,
            ca_pem=self.ca_file.read_bytes(),
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 0.2,
    ) -> None:
        """Poll `predicate` until it returns True; raise TimeoutError naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(min(interval, remaining))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, deadline_s: float = 120) -> None:
        """Start every component and wait until pods really run; stop everything on failure.

        The deadline covers the cluster, not a cold build of the binaries (which can take
        many minutes and has its own progress output).
        """
        if self._started:
            raise RuntimeError("a LocalCluster can be started only once")
        self._started = True
        bin_dir = self.bin_dir
        # Registered before the first child exists, so even an exception escaping everything
        # (or a plain interpreter exit after KeyboardInterrupt) tears the cluster down.
        atexit.register(self.stop)
        try:
            self._start(bin_dir, time.monotonic() + deadline_s)
        except urllib.error.HTTPError as exc:
            self.stop()
            detail = exc.read().decode(errors="replace")
            raise ClusterStartError(
                f"apiserver refused a start-up request: {exc}\n{detail}"
            ) from exc
        except BaseException:
            # Includes KeyboardInterrupt: nothing we started may outlive a failed start.
            self.stop()
            raise

    def stop(self) -> None:
        """Stop all components (reverse start order, whole process groups). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            stop_in_reverse(self._processes, _STOP_GRACE)
        finally:
            atexit.unregister(self.stop)

    # -- start-up steps --------------------------------------------------------------------

    def _start(self, bin_dir: Path, deadline: float) -> None:
        t0 = time.monotonic()
        self._prepare_workdir()
        pki = self._make_pki()
        ports = self._ports = components.Ports.allocate()
        self._server = f"https://{LOOPBACK}:{ports.apiserver}"
        self._api_tls = client_tls(
            pki.ca_cert, self._pki_dir / "admin.crt", self._pki_dir / "admin.key"
        )

        # The registries need nothing else, so they warm up while the control plane starts.
        registries: list[tuple[Registry, ManagedProcess]] = []
        for registry in self._registries.values():
            registries.append((registry, registry.spawn()))
            self._processes.append(registries[-1][1])
        etcd = self._spawn("etcd", components.etcd(bin_dir, self.workdir / "etcd", ports))
        self._await(
            lambda: http_ok(f"http://{LOOPBACK}:{ports.etcd_client}/health"),
            deadline,
            "etcd /health",
            [etcd],
        )

        apiserver = self._spawn("kube-apiserver", components.kube_apiserver(bin_dir, pki, ports))
        self._await(
            lambda: http_ok(f"{self.server}/readyz", context=self._api_tls),
            deadline,
            "kube-apiserver /readyz",
            [apiserver],
            diagnose=lambda: http_get(f"{self.server}/readyz?verbose", context=self._api_tls),
        )

        kubeconfigs = self._write_component_kubeconfigs(pki)
        # These three only need the apiserver, so they start together and warm up in parallel.
        kcm = self._spawn(
            "kube-controller-manager",
            components.kube_controller_manager(
                bin_dir, pki, ports, kubeconfigs["kube-controller-manager"]
            ),
        )
        scheduler = self._spawn(
            "kube-scheduler",
            components.kube_scheduler(bin_dir, pki, ports, kubeconfigs["kube-scheduler"]),
        )
        kwok_dir = self.workdir / "kwok"
        stages = kwok_dir / "stages.yaml"
        stages.write_text(STAGES_YAML)
        kwok = self._spawn(
            "kwok",
            components.kwok(bin_dir, pki, ports, kubeconfigs["kwok"], [stages, *self.kwok_configs]),
            # kwok would also load ~/.kwok/kwok.yaml; point its workdir into ours instead.
            env={**os.environ, "KWOK_WORKDIR": str(kwok_dir)},
        )
        if self.nodes:
            for node in node_manifests(self.nodes):
                self._api("POST", "/api/v1/nodes", node)

        ca_tls = client_tls(pki.ca_cert)
        self._await(
            lambda: http_ok(
                f"https://{LOOPBACK}:{ports.controller_manager}/healthz", context=ca_tls
            ),
            deadline,
            "kube-controller-manager /healthz",
            [kcm],
        )
        self._await(
            lambda: http_ok(f"https://{LOOPBACK}:{ports.scheduler}/healthz", context=ca_tls),
            deadline,
            "kube-scheduler /healthz",
            [scheduler],
        )
        self._await(
            lambda: http_ok(f"https://{LOOPBACK}:{ports.kwok}/healthz", context=ca_tls),
            deadline,
            "kwok /healthz",
            [kwok],
        )
        for registry, proc in registries:
            self._await(registry.ready, deadline, f"{registry.name} /v2/", [proc])
        self._await(
            self._all_nodes_ready, deadline, f"{self.nodes} nodes Ready and untainted", [kwok, kcm]
        )
        self._smoke_test(deadline, [kcm, scheduler, kwok])
        self._log(f"cluster up in {_elapsed_since(t0)}: {self.server}")

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A reused workdir must not resurrect the objects of a cluster whose keys are gone.
        for stale in ("etcd", "pki", "kwok", "kubectl-cache", *self._registries):
            shutil.rmtree(self.workdir / stale, ignore_errors=True)
        self.logs_dir.mkdir(exist_ok=True)
        logs = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
        for name in (*logs, *self._registries):
            (self.logs_dir / f"{name}.log").unlink(missing_ok=True)
        (self.workdir / "etcd").mkdir(mode=0o700)
        (self.workdir / "kwok").mkdir()

    @property
    def _pki_dir(self) -> Path:
        return self.workdir / "pki"

    def _make_pki(self) -> components.Pki:
        pki_dir = self._pki_dir
        pki_dir.mkdir(mode=0o700)
        ca = CertificateAuthority()
        ca_cert, ca_key = ca.pair.write(pki_dir, "ca")
        apiserver_cert, apiserver_key = ca.issue(
            "kube-apiserver",
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ip_addresses=[LOOPBACK, components.KUBERNETES_SERVICE_IP],
            server=True,
        ).write(pki_dir, "apiserver")
        kubelet_client = ca.issue("kube-apiserver-kubelet-client", client=True).write(
            pki_dir, "apiserver-kubelet-client"
        )
        kcm_serving = ca.issue(
            "kube-controller-manager", server=True, dns_names=["localhost"], ip_addresses=[LOOPBACK]
        ).write(pki_dir, "controller-manager-serving")
        scheduler_serving = ca.issue(
            "kube-scheduler", server=True, dns_names=["localhost"], ip_addresses=[LOOPBACK]
        ).write(pki_dir, "scheduler-serving")
        kwok_serving = ca.issue(
            "kwok", server=True, dns_names=["localhost"], ip_addresses=[LOOPBACK]
        ).write(pki_dir, "kwok-serving")
        # Client identities. Kept as files too: the admin one is what our own HTTPS probes use.
        self._clients = {
            "admin": ca.issue("testbed-admin", organizations=["system:masters"], client=True),
            "kube-controller-manager": ca.issue("system:kube-controller-manager", client=True),
            "kube-scheduler": ca.issue("system:kube-scheduler", client=True),
            # kwok acts as the kubelet of *every* fake node and patches any pod's status,
            # impersonating as stages require. The Node authorizer scopes a kubelet to its own
            # node, so no single `system:node:*` identity fits; a superuser with its own name
            # (so the audit trail still tells kwok apart from the admin) is the honest choice.
            "kwok": ca.issue("kwok-controller", organizations=["system:masters"], client=True),
        }
        self._clients["admin"].write(pki_dir, "admin")
        sa_private, sa_public = write_service_account_keys(pki_dir)
        return components.Pki(
            ca_cert=ca_cert,
            ca_key=ca_key,
            apiserver_cert=apiserver_cert,
            apiserver_key=apiserver_key,
            kubelet_client_cert=kubelet_client[0],
            kubelet_client_key=kubelet_client[1],
            controller_manager_cert=kcm_serving[0],
            controller_manager_key=kcm_serving[1],
            scheduler_cert=scheduler_serving[0],
            scheduler_key=scheduler_serving[1],
            kwok_cert=kwok_serving[0],
            kwok_key=kwok_serving[1],
            sa_private_key=sa_private,
            sa_public_key=sa_public,
        )

    def _write_component_kubeconfigs(self, pki: components.Pki) -> dict[str, Path]:
        ca_pem = pki.ca_cert.read_bytes()
        paths: dict[str, Path] = {}
        for who, pair in self._clients.items():
            path = (
                self.admin_kubeconfig
                if who == "admin"
                else self.workdir / "kubeconfigs" / f"{who}.kubeconfig"
            )
            paths[who] = write_kubeconfig(
                path,
                server=self.server,
                ca_pem=ca_pem,
                user=who,
                client_cert_pem=pair.cert_pem,
                client_key_pem=pair.key_pem,
            )
        return paths

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.logs_dir / f"{name}.log", env=env, cwd=self.workdir)
        self._processes.append(proc)
        return proc

    def _await(
        self,
        predicate: Callable[[], bool],
        deadline: float,
        what: str,
        suspects: Sequence[ManagedProcess],
        diagnose: Callable[[], str] | None = None,
    ) -> None:
        """Poll like wait_for, but fail at once if any component dies, naming it."""
        t0 = time.monotonic()
        while True:
            for proc in self._processes:
                if not proc.alive():
                    raise ClusterStartError(
                        f"{proc.describe_exit()} while waiting for {what}; "
                        f"log {proc.log_path}:\n{proc.log_tail()}"
                    )
            if predicate():
                self._log(f"{what}: ok after {_elapsed_since(t0)}")
                return
            if time.monotonic() >= deadline:
                details = "\n".join(
                    f"--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in suspects
                )
                extra = f"\n--- probe:\n{diagnose()}" if diagnose else ""
                raise ClusterStartError(f"deadline passed waiting for {what}\n{details}{extra}")
            time.sleep(0.1)

    # -- readiness proofs ------------------------------------------------------------------

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        """One admin request to the apiserver. Start-up talks REST directly rather than via
        kubectl: each kubectl run costs 0.3-0.8s on a busy 2-core box (process start plus
        discovery), which was a third of the whole start time."""
        request = urllib.request.Request(  # noqa: S310 - our own loopback apiserver
            f"{self.server}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._api_tls, timeout=10) as resp:  # noqa: S310
            return json.load(resp)

    def _api_get(self, path: str) -> Any:
        return self._api("GET", path)

    def _all_nodes_ready(self) -> bool:
        """All our nodes are Ready and carry no taint.

        The node-lifecycle controller may taint a node `node.kubernetes.io/not-ready` in the
        moment before kwok reports it Ready; it lifts the taint on the next node update, and
        only then will the scheduler use that node.
        """
        try:
            nodes = self._api_get("/api/v1/nodes")["items"]
        except OSError:
            return False
        usable = [
            n
            for n in nodes
            if not n.get("spec", {}).get("taints")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(usable) >= self.nodes

    def _smoke_test(self, deadline: float, suspects: Sequence[ManagedProcess]) -> None:
        """Prove the whole chain: deployment -> replicaset -> pod -> scheduled -> Running+IP."""
        if not self.nodes:
            return
        deployments = f"/apis/apps/v1/namespaces/{_SMOKE_NAMESPACE}/deployments"
        self._api("POST", deployments, _smoke_deployment())
        selector = urllib.parse.quote(f"app={_SMOKE_NAME}")
        pods_path = f"/api/v1/namespaces/{_SMOKE_NAMESPACE}/pods?labelSelector={selector}"

        def pod_running() -> bool:
            try:
                pods = self._api_get(pods_path)["items"]
            except OSError:
                return False
            return any(
                p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
                for p in pods
            )

        self._await(pod_running, deadline, "smoke Deployment pod Running with an IP", suspects)
        # Foreground deletion: the Deployment disappears only after its ReplicaSet and pod, so
        # once it is gone no test can ever see the smoke pod (and garbage collection is proven
        # working on the way).
        smoke = f"{deployments}/{_SMOKE_NAME}"
        self._api("DELETE", smoke, {"propagationPolicy": "Foreground"})

        def smoke_gone() -> bool:
            try:
                self._api_get(smoke)
                return False  # still there: its dependents are being removed
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    return False
            except OSError:
                return False
            return not self._api_get(pods_path)["items"]

        self._await(smoke_gone, deadline, "smoke Deployment deleted", suspects)

    @staticmethod
    def _log(message: str) -> None:
        print(f"localcluster: {message}", file=sys.stderr, flush=True)


def _smoke_deployment() -> dict[str, Any]:
    labels = {"app": _SMOKE_NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": _SMOKE_NAME, "namespace": _SMOKE_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "pause", "image": _SMOKE_IMAGE}],
                    # kwok plays the kubelet, so nothing is ever pulled or run.
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }
