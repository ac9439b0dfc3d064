"""The mesh agent on the real local cluster: WasmPlugins created with kubectl reach real Envoy
sidecars of the selected pods, with istio-agent's fetch failure handling.

Pinned to one Istio version (the default): the agent's selection is the same for both and two
clusters would double the run time; the naming difference is unit-tested.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localcluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION
from localcluster.oci_publish import ACCEPTED_LAYOUTS, REJECTED_LAYOUTS, publish
from meshagent import MeshAgent, kube, layout
from meshagent.fetch import AgentLog, FetchError, ModuleCache, convert
from meshagent.istiod import RemoteWasm
from meshagent.metrics import PodMetrics
from tests.support.wasm import Published, with_custom_section

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("istio_cluster", [DEFAULT_ISTIO_VERSION], indirect=True),
]

APP_PORT = 8080


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(
    request: pytest.FixtureRequest,
    istio_cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MeshAgent]:
    mesh = MeshAgent(
        tmp_path_factory.mktemp("meshagent"),
        istio_cluster.admin_kubeconfig,
        istio_version=DEFAULT_ISTIO_VERSION,
    )
    with mesh:
        yield mesh
        if request.session.testsfailed:
            print(f"\n--- mesh agent log ({mesh.log.path}) ---\n{_tail(mesh.log.path, 40)}")
            for pod_dir in sorted(mesh.workdir.glob("*/*/")):
                if pod_dir.name == "modules" or pod_dir.parent.name == "modules":
                    continue
                for name in (layout.AGENT_LOG, layout.ENVOY_LOG):
                    print(f"--- {pod_dir / name} ---\n{_tail(pod_dir / name, 15)}")
    left = processes_mentioning(str(mesh.workdir))
    assert not left, f"processes left running after MeshAgent.stop(): {left}"


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


_counter = iter(range(1_000_000))


@pytest.fixture
def mesh_ns(istio_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace labelled for sidecar injection; deleted (with its pods) after."""
    name = f"mesh{next(_counter)}"
    istio_cluster.kubectl("create", "namespace", name)
    istio_cluster.kubectl("label", "namespace", name, "istio-injection=enabled")
    yield name
    istio_cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def panicky_url(istio_cluster: LocalCluster, filter_modules: dict[str, bytes]) -> str:
    registry = istio_cluster.registry.host
    publish(registry, "filters/panicky", "v1", filter_modules["panicky"], "oci-wasm")
    return f"oci://{registry}/filters/panicky:v1"


# -- helpers -----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `predicate()`; the seconds it took. TimeoutError naming `what`."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def apply(cluster: LocalCluster, *manifests: dict[str, Any]) -> None:
    """kubectl apply; retried while a fresh namespace has no default ServiceAccount yet."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
    deadline = time.monotonic() + 20
    while True:
        result = cluster.kubectl("apply", "-f", "-", input=body, check=False)
        if result.returncode == 0:
            return
        if "serviceaccount" not in result.stderr or time.monotonic() > deadline:
            raise AssertionError(f"kubectl apply failed: {result.stderr}")
        time.sleep(0.1)


def pod(namespace: str, name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.local/app:1",
                    "ports": [{"containerPort": APP_PORT}],
                }
            ]
        },
    }


def wasmplugin(
    namespace: str, name: str, app: str, url: str, config: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "url": url,
            "pluginConfig": config,
            **spec,
        },
    }


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None


def get(port: int, path: str = "/") -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return Reply(resp.status, resp.getheaders())
    finally:
        conn.close()


def sidecar_ports(
    agent: MeshAgent, namespace: str, pods: list[str], timeout: float = 30
) -> dict[str, int]:
    ports: dict[str, int] = {}

    def all_serve() -> bool:
        for name in pods:
            port = layout.sidecar_port(agent.workdir, namespace, name)
            if port is not None:
                ports[name] = port
        return len(ports) == len(pods)

    wait_until(all_serve, timeout, f"sidecars of {pods} in {namespace}")
    return ports


def serves_version(port: int, version: str | None) -> bool:
    try:
        return get(port).one("x-filter-version") == version
    except OSError:
        return False


def metrics_text(agent: MeshAgent) -> str:
    port = layout.agent_metrics_port(agent.workdir)
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


def metric(agent: MeshAgent, name: str, **labels: str) -> float:
    """The sum of the agent's /metrics samples of `name` with `labels` (0 when absent)."""
    total = 0.0
    for line in metrics_text(agent).splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def access_entries(agent: MeshAgent, namespace: str, name: str) -> list[dict[str, Any]]:
    path = layout.pod_dir(agent.workdir, namespace, name) / layout.ACCESS_LOG
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


# -- tests -------------------------------------------------------------------------------------


def test_plugin_reaches_the_selected_pods_only(
    istio_cluster: LocalCluster, agent: MeshAgent, mesh_ns: str, published: Published
) -> None:
    apply(
        istio_cluster, pod(mesh_ns, "a-1", "a"), pod(mesh_ns, "a-2", "a"), pod(mesh_ns, "b-1", "b")
    )
    ports = sidecar_ports(agent, mesh_ns, ["a-1", "a-2", "b-1"])
    for port in ports.values():  # before any plugin: the app's own answer
        reply = get(port)
        assert (reply.status, reply.one("server"), reply.one("x-filter-version")) == (
            200,
            "app",
            None,
        )

    config = {"version": "a-1.1", "frame_options": "DENY"}
    apply(istio_cluster, wasmplugin(mesh_ns, "headers", "a", published.url("v1.1.0"), config))
    t0 = time.monotonic()
    wait_until(
        lambda: all(serves_version(ports[n], "a-1.1") for n in ("a-1", "a-2")), 20, "a-* filtered"
    )
    print(f"\nWasmPlugin created -> 2 pods serving it: {time.monotonic() - t0:.2f}s")

    for name in ("a-1", "a-2"):
        reply = get(ports[name])
        assert reply.status == 200
        assert reply.all("x-filter-version") == ["a-1.1"]
        assert reply.one("x-frame-options") == "DENY"
        assert reply.one("server") is None  # removed by the filter
    reply = get(ports["b-1"])
    assert (reply.status, reply.one("server"), reply.one("x-filter-version")) == (200, "app", None)

    # The access log has the filter's marks; the agent counted one successful fetch per pod.
    wait_until(
        lambda: any(
            e["x_filter_version"] == "a-1.1" for e in access_entries(agent, mesh_ns, "a-1")
        ),
        20,
        "the access log line",
    )
    entry = next(e for e in access_entries(agent, mesh_ns, "a-1") if e["x_filter_version"])
    assert entry["x_envoy_wasm_filter"] == "active"
    assert entry["response_code"] == 200
    assert entry["upstream_host"].startswith("127.0.0.1:")
    for name in ("a-1", "a-2"):
        labels = {"namespace": mesh_ns, "pod": name}
        assert metric(agent, "istio_agent_wasm_remote_fetch_count", result="success", **labels) == 1
        assert (
            metric(agent, "istio_agent_wasm_config_conversion_count", result="success", **labels)
            >= 1
        )
    assert metric(agent, "istio_agent_wasm_remote_fetch_count", pod="b-1") == 0

    # The endpoint is valid Prometheus text (Envoy's passthrough stats included).
    families = {f.name for f in text_string_to_metric_families(metrics_text(agent))}
    assert "istio_agent_wasm_remote_fetch_count" in families
    assert "envoy_wasm_envoy_wasm_runtime_v8_active" in families

    # A deleted plugin leaves the chain.
    istio_cluster.kubectl("delete", "wasmplugin", "headers", "-n", mesh_ns)
    wait_until(lambda: serves_version(ports["a-1"], None), 20, "a-1 without the filter")
    assert get(ports["a-1"]).one("server") == "app"

    # A deleted pod's sidecar stops.
    pid = agent.sidecars()[(mesh_ns, "b-1")].pid
    istio_cluster.kubectl("delete", "pod", "b-1", "-n", mesh_ns, "--wait=false")
    wait_until(
        lambda: (
            layout.sidecar_port(agent.workdir, mesh_ns, "b-1") is None
            and not Path(f"/proc/{pid}").exists()
        ),
        20,
        "b-1's Envoy to stop",
    )


def test_relabelled_pod_switches_filters_without_a_gap(
    istio_cluster: LocalCluster, agent: MeshAgent, mesh_ns: str, published: Published
) -> None:
    url = published.url("v1.1.0")
    apply(
        istio_cluster,
        wasmplugin(mesh_ns, "for-a", "a", url, {"version": "va"}),
        wasmplugin(mesh_ns, "for-b", "b", url, {"version": "vb"}),
        pod(mesh_ns, "mover", "a"),
    )
    port = sidecar_ports(agent, mesh_ns, ["mover"])["mover"]
    wait_until(lambda: serves_version(port, "va"), 20, "mover serving va")

    seen: list[tuple[int, tuple[str, ...]]] = []
    errors: list[str] = []
    stop = threading.Event()

    def sample() -> None:  # one keep-alive client, reconnecting when the server closes
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/move")
                resp = conn.getresponse()
                resp.read()
                versions = tuple(v for k, v in resp.getheaders() if k.lower() == "x-filter-version")
                seen.append((resp.status, versions))
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                conn.close()
        conn.close()

    sampler = threading.Thread(target=sample, name="sampler")
    sampler.start()
    try:
        wait_until(lambda: len(seen) > 20, 10, "samples before the move")
        istio_cluster.kubectl("label", "pod", "mover", "-n", mesh_ns, "app=b", "--overwrite")
        wait_until(lambda: bool(seen) and seen[-1][1] == ("vb",), 20, "mover serving vb")
        count = len(seen)
        wait_until(lambda: len(seen) > count + 20, 10, "samples after the move")
    finally:
        stop.set()
        sampler.join(15)

    assert not errors, errors[:5]
    bad = [s for s in seen if s[0] != 200 or s[1] not in (("va",), ("vb",))]
    assert not bad, f"{len(bad)} of {len(seen)} responses had no or both versions: {bad[:5]}"
    versions = [s[1][0] for s in seen]
    switch = versions.index("vb")
    assert "va" not in versions[switch:], "a single client went back to the old filter"
    print(f"\n{len(seen)} responses: {switch} with va, then {len(seen) - switch} with vb")
    pod_json = layout.pod_dir(agent.workdir, mesh_ns, "mover") / layout.POD_JSON
    assert json.loads(pod_json.read_text())["metadata"]["labels"] == {"app": "b"}


def test_unfetchable_module_fails_closed_or_open(
    istio_cluster: LocalCluster, agent: MeshAgent, mesh_ns: str, published: Published
) -> None:
    missing = published.url("no-such-tag")
    apply(
        istio_cluster,
        pod(mesh_ns, "closed-1", "closed"),
        pod(mesh_ns, "open-1", "open"),
        wasmplugin(
            mesh_ns, "closed", "closed", missing, {"version": "x"}, failStrategy="FAIL_CLOSE"
        ),
        wasmplugin(mesh_ns, "open", "open", missing, {"version": "x"}, failStrategy="FAIL_OPEN"),
    )
    ports = sidecar_ports(agent, mesh_ns, ["closed-1", "open-1"])

    # FAIL_CLOSE: istio-agent puts a deny-all RBAC filter in the plugin's place.
    wait_until(lambda: get(ports["closed-1"]).status == 403, 20, "403 from closed-1")
    assert [get(ports["closed-1"]).status for _ in range(10)] == [403] * 10
    labels = {"namespace": mesh_ns, "pod": "closed-1"}
    assert (
        metric(agent, "istio_agent_wasm_remote_fetch_count", result="manifest_failure", **labels)
        >= 1
    )
    assert metric(agent, "istio_agent_wasm_remote_fetch_count", result="success", **labels) == 0
    assert (
        metric(agent, "istio_agent_wasm_config_conversion_count", result="fetch_failure", **labels)
        >= 1
    )
    agent_log = (layout.pod_dir(agent.workdir, mesh_ns, "closed-1") / layout.AGENT_LOG).read_text()
    assert "error in converting the wasm config to local: cannot fetch Wasm module " in agent_log
    assert "applying deny RBAC filter" in agent_log

    def denied() -> list[dict[str, Any]]:
        return [e for e in access_entries(agent, mesh_ns, "closed-1") if e["response_code"] == 403]

    wait_until(lambda: len(denied()) >= 10, 20, "403s in the access log")
    assert all(e["upstream_host"] is None for e in denied())
    assert all(e["response_code_details"].startswith("rbac_access_denied") for e in denied())

    # FAIL_OPEN: an allow-all RBAC filter; requests reach the app unfiltered.
    open_log = layout.pod_dir(agent.workdir, mesh_ns, "open-1") / layout.AGENT_LOG
    wait_until(lambda: "applying allow RBAC filter" in open_log.read_text(), 20, "allow RBAC")
    for _ in range(10):
        reply = get(ports["open-1"])
        assert (reply.status, reply.one("server"), reply.one("x-filter-version")) == (
            200,
            "app",
            None,
        )
    open_labels = {"namespace": mesh_ns, "pod": "open-1"}
    assert (
        metric(
            agent, "istio_agent_wasm_remote_fetch_count", result="manifest_failure", **open_labels
        )
        >= 1
    )


def test_panicking_module_gives_503(
    istio_cluster: LocalCluster, agent: MeshAgent, mesh_ns: str, panicky_url: str
) -> None:
    apply(
        istio_cluster,
        pod(mesh_ns, "p-1", "p"),
        wasmplugin(mesh_ns, "panicky", "p", panicky_url, {"panic_every": 1, "version": "boom"}),
    )
    port = sidecar_ports(agent, mesh_ns, ["p-1"])["p-1"]
    wait_until(lambda: get(port).status == 503, 20, "503 from p-1")
    assert [get(port).status for _ in range(10)] == [503] * 10
    wait_until(
        lambda: any(
            e["response_code_details"] == "wasm_fail_stream"
            for e in access_entries(agent, mesh_ns, "p-1")
        ),
        20,
        "wasm_fail_stream in the access log",
    )
    envoy_log = (layout.pod_dir(agent.workdir, mesh_ns, "p-1") / layout.ENVOY_LOG).read_text()
    assert "panicked" in envoy_log or "panic" in envoy_log


def test_every_plugin_change_reaches_every_selected_sidecar(
    istio_cluster: LocalCluster, agent: MeshAgent, mesh_ns: str, published: Published
) -> None:
    """Successive changes of a WasmPlugin's pluginConfig each reach every selected sidecar, in
    place (the same Envoy process). How fast is measured by bench/mesh_scale.py, not here."""
    names = ["l-1", "l-2", "l-3"]
    url = published.url("v1.1.0")
    apply(istio_cluster, *(pod(mesh_ns, n, "l") for n in names))
    ports = sidecar_ports(agent, mesh_ns, names)
    api = kube.api_client(istio_cluster.admin_kubeconfig)
    custom = kubernetes.client.CustomObjectsApi(api)
    apply(istio_cluster, wasmplugin(mesh_ns, "latency", "l", url, {"version": "r0"}))
    pids: dict[str, int | None] = {}
    try:
        for round_ in range(4):
            version = f"r{round_}"
            if round_:
                custom.patch_namespaced_custom_object(
                    "extensions.istio.io",
                    "v1alpha1",
                    mesh_ns,
                    "wasmplugins",
                    "latency",
                    {"spec": {"pluginConfig": {"version": version}}},
                    _content_type="application/merge-patch+json",
                )
            pending = set(names)

            def all_updated(version: str = version, pending: set[str] = pending) -> bool:
                for name in list(pending):
                    if serves_version(ports[name], version):
                        pending.discard(name)
                return not pending

            wait_until(all_updated, 20, f"all pods serving {version}")
            now = {n: agent.sidecars()[(mesh_ns, n)].pid for n in names}
            assert not pids or now == pids  # swapped in place: no Envoy restarted
            pids = now
    finally:
        api.close()


def test_pull_secret_reaches_the_fetch(
    istio_cluster: LocalCluster, agent: MeshAgent, mesh_ns: str, published: Published
) -> None:
    """A module in the registry that needs credentials: without the Secret istiod sends an
    empty secret and istio-agent fails closed; once the Secret exists, the filter loads."""
    reg = istio_cluster.auth_registry
    user, password = istio_cluster.registry_credentials
    wasm = published.modules["security-headers"]
    publish(reg.host, "private/headers", "v1", wasm, "oci-compat", auth=(user, password))
    plugin = wasmplugin(
        mesh_ns,
        "private",
        "s",
        f"oci://{reg.host}/private/headers:v1",
        {"version": "private"},
        imagePullSecret="creds",
    )
    apply(istio_cluster, pod(mesh_ns, "s-1", "s"), plugin)
    port = sidecar_ports(agent, mesh_ns, ["s-1"])["s-1"]
    wait_until(lambda: get(port).status == 403, 20, "403 without the pull secret")
    log = layout.pod_dir(agent.workdir, mesh_ns, "s-1") / layout.AGENT_LOG
    assert "missing image pulling secret" in log.read_text()

    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {reg.host: {"auth": auth}}}).encode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": mesh_ns},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }
    apply(istio_cluster, secret)
    # Secrets are not watched: the next resync (or any change to the plugin) picks it up, as
    # istiod pushes on a change of a referenced Secret.
    plugin["metadata"]["annotations"] = {"touched": "1"}
    apply(istio_cluster, plugin)
    wait_until(lambda: serves_version(port, "private"), 20, "the filter with credentials")
    labels = {"namespace": mesh_ns, "pod": "s-1"}
    assert metric(agent, "istio_agent_wasm_remote_fetch_count", result="success", **labels) == 1


class _Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path.split("?", 1)[0])
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_fetch_rules(istio_cluster: LocalCluster, published: Published, tmp_path: Path) -> None:
    """istio-agent's fetch on the real registry, without Envoy: layouts, checksums, pull
    policy, and the result each failure is counted under."""
    registry = istio_cluster.registry.host
    wasm = published.modules["security-headers"]
    pod_metrics = PodMetrics()
    cache = ModuleCache(tmp_path / "modules", pod_metrics, AgentLog(tmp_path / "agent.log"))
    version = iter(range(1_000_000))

    def fetch(url: str, checksum: str = "", policy: str = "UNSPECIFIED_POLICY") -> bytes:
        path = cache.get(
            url,
            checksum=checksum,
            resource_name="r",
            resource_version=str(next(version)),
            pull_secret=None,
            pull_policy=policy,
        )
        return path.read_bytes()

    def failure(url: str, checksum: str = "") -> str | None:
        with pytest.raises(FetchError) as caught:
            fetch(url, checksum)
        return caught.value.result

    digests = {}
    for layout_name in ACCEPTED_LAYOUTS + REJECTED_LAYOUTS:
        digests[layout_name] = publish(registry, f"fetch/{layout_name}", "v1", wasm, layout_name)
    for layout_name in ACCEPTED_LAYOUTS:
        url = f"oci://{registry}/fetch/{layout_name}:v1"
        assert fetch(url) == wasm, layout_name
        # sha256 is the MANIFEST digest for oci, whatever the layout.
        assert fetch(url, digests[layout_name].removeprefix("sha256:")) == wasm
        assert failure(url, hashlib.sha256(wasm).hexdigest()) == "checksum_mismatched"
        assert fetch(f"oci://{registry}/fetch/{layout_name}@{digests[layout_name]}") == wasm
    for layout_name in REJECTED_LAYOUTS:
        assert failure(f"oci://{registry}/fetch/{layout_name}:v1") == "download_failure"
    assert failure(f"oci://{registry}/fetch/oci-wasm:missing") == "manifest_failure"
    publish(registry, "fetch/not-wasm", "v1", b"just text, not a module\n", "oci-wasm")
    assert failure(f"oci://{registry}/fetch/not-wasm:v1") == "fetch_failure"
    assert failure(f"oci://{istio_cluster.auth_registry.host}/x/y:v1") == "manifest_failure"

    # Pull policy on a moved tag: IfNotPresent keeps what it has, Always pulls again.
    other = with_custom_section(wasm, "v", b"2")  # another valid module
    publish(registry, "fetch/moving", "v1", wasm, "oci-wasm")
    assert fetch(f"oci://{registry}/fetch/moving:v1") == wasm
    publish(registry, "fetch/moving", "v1", other, "oci-wasm")
    successes = pod_metrics.get("istio_agent_wasm_remote_fetch_count", result="success")
    assert fetch(f"oci://{registry}/fetch/moving:v1", policy="IfNotPresent") == wasm
    assert fetch(f"oci://{registry}/fetch/moving:v1") == wasm  # unspecified: IfNotPresent
    assert pod_metrics.get("istio_agent_wasm_remote_fetch_count", result="success") == successes
    assert fetch(f"oci://{registry}/fetch/moving:v1", policy="Always") == other

    # http(s): sha256 is the binary's.
    _Files.files = {"/plugin.wasm": wasm}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert fetch(f"{base}/plugin.wasm", hashlib.sha256(wasm).hexdigest()) == wasm
        assert failure(f"{base}/plugin.wasm?x", "0" * 64) == "checksum_mismatched"
        assert failure(f"{base}/missing.wasm") == "download_failure"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

    # A named Secret istiod could not read: the conversion fails before any fetch.
    resource = RemoteWasm(
        resource_name="r",
        config_name="ns.p",
        root_id="",
        configuration=None,
        url=f"oci://{registry}/fetch/oci-wasm:v1",
        sha256="",
        pull_secret=b"",
        pull_policy="UNSPECIFIED_POLICY",
        resource_version="1",
        failure_policy="FAIL_OPEN",
    )
    assert convert(resource, cache)["@type"].endswith("rbac.v3.RBAC")
    text = (tmp_path / "agent.log").read_text()
    assert (
        "cannot fetch Wasm module ns.p: missing image pulling secret. applying allow RBAC filter"
        in text
    )
