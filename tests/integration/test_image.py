"""The operator from its container image, run the way a pod runs it, against the local cluster.

The image is the one `make image` built (found by $FILTERRELEASE_IMAGE, which the Makefile sets;
this test never builds it). It runs as localcluster.container runs images: a throwaway buildah
container, chrooted into with util-linux's unshare and setpriv, in new mount, PID, UTS and IPC
namespaces and the host's network, because the API server listens on loopback. That is a
chroot, not `buildah run`: buildah run cannot make the root filesystem read-only, and here the
operator has a PID namespace of its own, as in a pod (SIGTERM reaches kopf's handler; the Envoys
of pre-flight dry runs die with the namespace, also when the test run is SIGKILLed).

What a pod gets is taken from deploy/ as `kubectl kustomize` renders it, never copied here:
the container's env (fieldRef resolved), command/args, user (the image's, or runAsUser),
readOnlyRootFilesystem, emptyDir volumes as tmpfs; plus what the kubelet adds: the
ServiceAccount's token, the cluster CA and the namespace at
/var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST/PORT, HOSTNAME (and HOME,
from the image's /etc/passwd, as runc sets it).
Only what a local cluster cannot provide is overridden (see `LOCAL_OVERRIDES`).

Pass: a FilterRelease goes Ready/Healthy through that process, its module dry-run in the
image's own Envoy, and nothing is left behind: no process, no mount, no buildah container.

The cluster is this module's own: the session's clusters have the tests' operator subprocess
running, which would hold the leader Lease and do the work instead.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.install import OPERATOR_NAMESPACE, OPERATOR_SERVICEACCOUNT, install_filterrelease
from localcluster import LocalCluster
from localcluster.container import (
    Bind,
    ContainerError,
    ContainerProcess,
    ContainerSpec,
    ImageConfig,
    buildah,
    remove_leftovers,
)
from localcluster.errors import KubectlError
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.network import LOOPBACK, free_ports
from tests.integration.conftest import REPO_ROOT
from tests.support.kubectl import apply_json
from tests.support.releases import condition, example, wait_ready
from tests.support.wasm import Published

pytestmark = pytest.mark.integration

IMAGE_ENV = "FILTERRELEASE_IMAGE"
DEFAULT_IMAGE = "localhost/filterrelease:dev"  # the Makefile's default
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_NAME = "filterrelease-operator-image-test"
# Then this test process's pid: a later run removes what a killed one left (remove_leftovers).
CONTAINER_PREFIX = "frel-image-test-"
TIMEOUT = 90.0


@pytest.fixture(scope="module")
def image() -> ImageConfig:
    name = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
    try:
        remove_leftovers(CONTAINER_PREFIX)
        return ImageConfig.inspect(name)
    except ContainerError as err:
        pytest.fail(
            f"{err}\nBuild it first: `make image` (or run the tests with `make integration`);"
            f" ${IMAGE_ENV} names the image ({DEFAULT_IMAGE} by default).",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("image"), nodes=1) as local_cluster:
        # install_istio_crds' `kubectl wait` fails at once on a CRD that has no conditions yet,
        # which a fast start hits; applying is idempotent, so apply until it has passed.
        local_cluster.wait_for(
            lambda: istio_crds_installed(local_cluster),
            timeout=60,
            what="Istio's CRDs established",
        )
        install_filterrelease(local_cluster)
        yield local_cluster


def istio_crds_installed(cluster: LocalCluster) -> bool:
    try:
        install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
    except KubectlError:
        return False
    return True


# -- the pod, from deploy/ ---------------------------------------------------------------------


def operator_pod(cluster: LocalCluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod spec and its operator container, as deploy/ renders."""
    return deployment_pod(cluster, REPO_ROOT / "deploy", "filterrelease-operator", "operator")


def deployment_pod(
    cluster: LocalCluster, kustomization: Path, name: str, container_name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Deployment's pod spec and one of its containers, as a kustomization renders."""
    out = cluster.kubectl("kustomize", str(kustomization)).stdout
    [deployment] = [
        doc
        for doc in yaml.safe_load_all(out)
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == name
    ]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    [container] = (
        [c for c in containers if c["name"] == container_name]
        if len(containers) > 1
        else containers
    )
    return pod, container


def field_value(path: str, pod: dict[str, Any]) -> str:
    """A downward-API fieldRef, as the kubelet resolves it for this pod."""
    values: dict[str, str] = {
        "metadata.name": POD_NAME,
        "metadata.namespace": OPERATOR_NAMESPACE,
        "spec.serviceAccountName": str(pod.get("serviceAccountName", "default")),
        # Host network: the pod's IP is the host's, here loopback.
        "status.podIP": LOOPBACK,
        "status.hostIP": LOOPBACK,
    }
    if path not in values:
        raise NotImplementedError(f"fieldRef {path} of deploy/ is not resolved by this test")
    return values[path]


def container_env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    if container.get("envFrom"):
        raise NotImplementedError("envFrom in deploy/ is not resolved by this test")
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = field_value(item["valueFrom"]["fieldRef"]["fieldPath"], pod)
        else:
            raise NotImplementedError(f"env {item['name']} of deploy/: {item} not resolved here")
    return env


def emptydir_mounts(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    paths = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise NotImplementedError(f"volume {volume} of deploy/ is not mounted by this test")
        paths.append(mount["mountPath"])
    return paths


def run_as(pod: dict[str, Any], container: dict[str, Any], image: ImageConfig) -> tuple[int, int]:
    """The user the kubelet starts the container as: runAsUser/runAsGroup, else the image's."""
    image_uid, _, image_gid = image.user.partition(":")
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser", int(image_uid)))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", int(image_gid or 0)))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        assert uid != 0, "runAsNonRoot, and the image would run as root"
    return int(uid), int(gid)


def command(container: dict[str, Any], image: ImageConfig) -> list[str]:
    """The runtime's rule: command replaces ENTRYPOINT, args replace CMD."""
    entrypoint = container.get("command", list(image.entrypoint))
    args = container.get("args", [] if "command" in container else list(image.cmd))
    return [*entrypoint, *args]


# -- what a local cluster cannot provide -------------------------------------------------------


def local_overrides(health: int, metrics: int, webhook: int) -> dict[str, str]:
    return {
        # The API server calls the webhook through a Service in a real cluster; here its
        # Endpoints would have to be 127.0.0.1, which Endpoints/EndpointSlices refuse, so it
        # calls the URL instead (as devcluster/operator_process.py configures).
        "FILTERRELEASE_WEBHOOK_SERVICE": "",
        "FILTERRELEASE_WEBHOOK_HOST": LOOPBACK,
        # Host network: the pod's own IP and ports are the host's, shared with every other
        # process on this machine, so the fixed ports 9443/9090/8080 move to free ones on
        # loopback.
        "FILTERRELEASE_WEBHOOK_ADDRESS": LOOPBACK,
        "FILTERRELEASE_WEBHOOK_PORT": str(webhook),
        "FILTERRELEASE_METRICS_ADDRESS": LOOPBACK,
        "FILTERRELEASE_METRICS_PORT": str(metrics),
        "FILTERRELEASE_LIVENESS_ENDPOINT": f"http://{LOOPBACK}:{health}/healthz",
    }


def serviceaccount_volume(
    cluster: LocalCluster, into: Path, account: str = OPERATOR_SERVICEACCOUNT
) -> Path:
    """What the kubelet projects into every pod of the ServiceAccount."""
    token = cluster.kubectl(
        "create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=1h"
    ).stdout.strip()
    into.mkdir(mode=0o755)
    into.chmod(0o755)  # a mount's root keeps its mode: 65532 must be able to look inside
    (into / "token").write_text(token)
    (into / "ca.crt").write_bytes(cluster.ca_file.read_bytes())
    (into / "namespace").write_text(OPERATOR_NAMESPACE)
    for name in ("token", "ca.crt", "namespace"):
        (into / name).chmod(0o644)
    return into


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # loopback only
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def probe_ok(probe: dict[str, Any], ports: dict[int, int], named: dict[str, int]) -> bool:
    """A kubelet probe of deploy/, on the ports the container's ones moved to."""

    def port(value: int | str) -> int:
        return ports[named[value]] if isinstance(value, str) else ports[value]

    if "httpGet" in probe:
        get = probe["httpGet"]
        status = http_status(f"http://{LOOPBACK}:{port(get['port'])}{get.get('path', '/')}")
        return status is not None and 200 <= status < 400
    if "tcpSocket" in probe:
        try:
            socket.create_connection((LOOPBACK, port(probe["tcpSocket"]["port"])), 2).close()
        except OSError:
            return False
        return True
    raise NotImplementedError(f"probe {probe} of deploy/ is not run by this test")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no / in /proc/{pid}/mountinfo")


# -- the test ----------------------------------------------------------------------------------


def test_the_operator_image_runs_as_a_pod_and_releases_a_filter(
    image: ImageConfig,
    cluster: LocalCluster,
    filter_modules: dict[str, bytes],
    tmp_path: Path,
) -> None:
    assert image.user == "65532:65532", image.user
    pod, container = operator_pod(cluster)
    uid, gid = run_as(pod, container, image)
    security = container.get("securityContext", {})

    health, metrics, webhook = free_ports(3)
    # The container's ports, by number and name, and where each one listens here.
    ports = {8080: health, 9090: metrics, 9443: webhook}
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert set(named.values()) <= set(ports), f"a port of deploy/ this test does not move: {named}"

    apiserver = urllib.parse.urlsplit(cluster.server)
    # The API server's certificate names 127.0.0.1 (localcluster/cluster.py), so the in-cluster
    # client verifies it against ca.crt as it would verify kubernetes.default.svc.
    assert apiserver.hostname == LOOPBACK
    env = {
        **image.env,
        **container_env(pod, container),
        **local_overrides(health, metrics, webhook),
        # What the kubelet and the runtime add to every container.
        "HOSTNAME": POD_NAME,
        "KUBERNETES_SERVICE_HOST": LOOPBACK,
        "KUBERNETES_SERVICE_PORT": str(apiserver.port),
    }
    spec = ContainerSpec(
        image=os.environ.get(IMAGE_ENV, DEFAULT_IMAGE),
        argv=command(container, image),
        env=env,
        uid=uid,
        gid=gid,
        workdir=container.get("workingDir", image.workdir),
        hostname=POD_NAME,
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        tmpfs=emptydir_mounts(pod, container),
        binds=[
            Bind(serviceaccount_volume(cluster, tmp_path / "serviceaccount"), SERVICEACCOUNT_DIR)
        ],
    )
    assert spec.read_only_root
    assert "/tmp" in spec.tmpfs

    published = Published(cluster.registry.host, filter_modules)
    operator = ContainerProcess(
        spec, tmp_path / "operator.log", name=f"{CONTAINER_PREFIX}{os.getpid()}"
    )
    try:
        with operator:
            try:
                run_and_release(cluster, operator, container, ports, named, published, uid, gid)
            except BaseException:
                log = operator.log_tail(100)
                print(f"\n--- operator in the image ({operator.log_path}) ---\n{log}")
                raise
            rootfs, pid = operator.rootfs, operator.pid
    finally:
        leftovers = buildah("containers", "--format", "{{.ContainerName}}").stdout.split()
    assert operator.name not in leftovers
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not any(
        str(rootfs) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def run_and_release(
    cluster: LocalCluster,
    operator: ContainerProcess,
    container: dict[str, Any],
    ports: dict[int, int],
    named: dict[str, int],
    published: Published,
    uid: int,
    gid: int,
) -> None:
    # Started as the kubelet judges it: live, then ready.
    for kind in ("livenessProbe", "readinessProbe"):
        probe: dict[str, Any] | None = container.get(kind)
        if probe is not None:

            def passes(probe: dict[str, Any] = probe) -> bool:
                return check_alive(operator) and probe_ok(probe, ports, named)

            cluster.wait_for(passes, timeout=TIMEOUT, what=f"the operator's {kind} of deploy/")

    # It is the image's process, as a pod runs it.
    pid = operator.pid
    assert pid is not None
    status = proc_status(pid)
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(gid)] * 4
    assert status["Groups"] == ""
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == 0
    assert os.readlink(f"/proc/{pid}/root") == str(operator.rootfs)
    assert "ro" in root_mount_options(pid)
    assert "KUBECONFIG" not in Path(f"/proc/{pid}/environ").read_bytes().decode()

    namespace = "image"
    cluster.kubectl("create", "namespace", namespace)
    assert apply_json(cluster, example(namespace, registry=published.registry)).returncode == 0
    body = wait_ready(cluster, namespace, "security-headers")
    state = body["status"]
    assert state["phase"] == "Healthy"
    assert state["applied"]["url"] == published.pinned("v1.1.0")
    assert condition(body, "ModuleVerified")["status"] == "True"  # type: ignore[index]
    # The Lease names this "pod": the leader is the process in the image, by deploy/'s fieldRef.
    holder = cluster.kubectl(
        "get", "lease", "-n", OPERATOR_NAMESPACE, "-o", "jsonpath={.items[*].spec.holderIdentity}"
    ).stdout.split()
    assert holder == [POD_NAME]
    # Pre-flight loaded the module in the image's own Envoy, under the read-only root.
    assert state["module"]["dryRun"] is True, json.dumps(state["module"])
    assert check_alive(operator)


def check_alive(operator: ContainerProcess) -> bool:
    if not operator.alive():
        raise AssertionError(f"{operator.describe_exit()}:\n{operator.log_tail()}")
    return True


# -- the dashboard, from deploy/dashboard ------------------------------------------------------


def test_the_dashboard_runs_from_the_image_read_only_as_deploy_dashboard_says(
    image: ImageConfig, cluster: LocalCluster, tmp_path: Path
) -> None:
    """The in-cluster dashboard: the image's kubectl-filterrelease, deploy/dashboard's command,
    user and read-only root, its own ServiceAccount (read-only RBAC): it lists the cluster's
    releases and refuses every request."""
    kustomization = REPO_ROOT / "deploy" / "dashboard"
    rendered = cluster.kubectl("kustomize", str(kustomization)).stdout
    rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "Deployment"]
    for doc in rbac:
        assert apply_json(cluster, doc).returncode == 0, doc
    pod, container = deployment_pod(cluster, kustomization, "filterrelease-dashboard", "dashboard")
    uid, gid = run_as(pod, container, image)
    [port] = free_ports(1)
    # Host network: the container's port moves to a free one on this machine.
    [http] = [p["containerPort"] for p in container["ports"]]
    argv = command(container, image)
    argv[argv.index("--port") + 1] = str(port)
    namespace = "dashboard-image"
    cluster.kubectl("create", "namespace", namespace)
    release = example(namespace, registry="registry.invalid")
    assert apply_json(cluster, release).returncode == 0

    apiserver = urllib.parse.urlsplit(cluster.server)
    spec = ContainerSpec(
        image=os.environ.get(IMAGE_ENV, DEFAULT_IMAGE),
        argv=argv,
        env={
            **image.env,
            **container_env(pod, container),
            "HOSTNAME": "filterrelease-dashboard-image-test",
            "KUBERNETES_SERVICE_HOST": LOOPBACK,
            "KUBERNETES_SERVICE_PORT": str(apiserver.port),
        },
        uid=uid,
        gid=gid,
        workdir=container.get("workingDir", image.workdir),
        hostname="filterrelease-dashboard-image-test",
        read_only_root=bool(container.get("securityContext", {}).get("readOnlyRootFilesystem")),
        tmpfs=emptydir_mounts(pod, container),
        binds=[
            Bind(
                serviceaccount_volume(cluster, tmp_path / "sa", pod["serviceAccountName"]),
                SERVICEACCOUNT_DIR,
            )
        ],
    )
    assert spec.read_only_root
    dashboard = ContainerProcess(
        spec, tmp_path / "dashboard.log", name=f"{CONTAINER_PREFIX}dash-{os.getpid()}"
    )
    base = f"http://{LOOPBACK}:{port}"
    with dashboard:
        try:
            for kind in ("readinessProbe", "livenessProbe"):
                probe: dict[str, Any] = container[kind]

                def passes(probe: dict[str, Any] = probe) -> bool:
                    return check_alive(dashboard) and probe_ok(probe, {http: port}, {"http": http})

                cluster.wait_for(
                    passes, timeout=TIMEOUT, what=f"the dashboard's {kind} of deploy/dashboard"
                )

            def listed() -> bool:
                with urllib.request.urlopen(f"{base}/api/releases", timeout=5) as resp:
                    rows = json.load(resp)["rows"]
                return any(
                    (r["namespace"], r["name"]) == (namespace, "security-headers") for r in rows
                )

            cluster.wait_for(listed, timeout=TIMEOUT, what="the release listed by the dashboard")
            page = urllib.request.urlopen(f"{base}/", timeout=5).read().decode()  # loopback
            assert "<html" in page.lower()
            ask = urllib.request.Request(
                f"{base}/api/releases/{namespace}/security-headers/request",
                data=json.dumps({"request": "abort"}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(ask, timeout=5)  # loopback
            assert refused.value.code == 403
            annotations = cluster.kubectl(
                "get", "frel", "security-headers", "-n", namespace,
                "-o", "jsonpath={.metadata.annotations}",
            ).stdout  # fmt: skip
            assert "filterrelease.dev/request" not in annotations
            # Its ServiceAccount could not have written it either.
            can = cluster.kubectl(
                "auth", "can-i", "patch", "filterreleases.filterrelease.dev", "-n", namespace,
                f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{pod['serviceAccountName']}",
                check=False,
            )  # fmt: skip
            assert can.stdout.strip() == "no"
        except BaseException:
            print(f"\n--- dashboard in the image ---\n{dashboard.log_tail(60)}")
            raise
