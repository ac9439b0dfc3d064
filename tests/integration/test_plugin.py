"""`kubectl filterrelease`, the installed console script, against the real local API server with
the real operator: what a person sees and what a CI pipeline gets back, as the admin and as a
ServiceAccount that may only read."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import LocalCluster
from tests.support.kubectl import apply_json
from tests.support.polling import poll
from tests.support.releases import NAME, TIMEOUT, example, release, release_with
from tests.support.wasm import Published

pytestmark = pytest.mark.integration

# The console script the project installs, from this venv (not whatever else is on PATH).
BIN = Path(sys.executable).parent
PLUGIN = shutil.which("kubectl-filterrelease", path=str(BIN))
STEPS = [{"setWeight": 50}, {"pause": {}}]


def plugin(
    cluster: LocalCluster,
    *args: str,
    kubeconfig: Path | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    assert PLUGIN is not None, f"kubectl-filterrelease is not installed in {BIN}"
    return subprocess.run(
        [PLUGIN, *args],
        env=cluster.kubectl_env(kubeconfig),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def rollout(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    return dict((release(cluster, namespace, NAME) or {}).get("status", {}).get("rollout") or {})


def annotation(cluster: LocalCluster, namespace: str) -> str | None:
    meta = (release(cluster, namespace, NAME) or {}).get("metadata", {})
    return (meta.get("annotations") or {}).get("filterrelease.dev/request")


@pytest.fixture(scope="module")
def canary(
    istio_cluster: LocalCluster, operator: object, published: Published
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A namespace with v1.1.0 released and v1.2.0 as a canary held at its pause step (no pod
    is selected, so the rollout only waits for a person); the namespace and the manifest."""
    namespace = "plugin-canary"
    istio_cluster.kubectl("create", "namespace", namespace)
    manifest = example(namespace, registry=published.registry)
    manifest["spec"]["strategy"] = {"canary": {"steps": STEPS}}
    assert apply_json(istio_cluster, manifest).returncode == 0
    # `status` waits for the first release: Healthy, exit 0.
    ok(plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "60s"))
    manifest["spec"]["module"]["url"] = published.url("v1.2.0")
    manifest["spec"]["pluginConfig"]["version"] = "v1.2.0"
    assert apply_json(istio_cluster, manifest).returncode == 0
    poll(lambda: rollout(istio_cluster, namespace).get("paused") == "PauseStep",
         timeout=TIMEOUT, what="the canary at its pause step",
         on_timeout=lambda: json.dumps(release(istio_cluster, namespace, NAME))[:2000])  # fmt: skip
    yield namespace, manifest
    istio_cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_status_exits_0_once_healthy_and_get_lists_and_shows_it(
    istio_cluster: LocalCluster, operator: object, namespace: str, published: Published
) -> None:
    manifest = example(namespace, registry=published.registry)
    assert apply_json(istio_cluster, manifest).returncode == 0
    waited = ok(plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "60s"))
    assert waited.splitlines()[-1].split(" ", 1)[1].startswith(f"{NAME}: Healthy"), waited

    listed = ok(plugin(istio_cluster, "get", "-A")).splitlines()
    assert listed[0].split() == [
        "NAMESPACE", "NAME", "PHASE", "STABLE", "CANARY", "STEP", "WEIGHT", "PROXIES", "AGE",
        "MESSAGE",
    ]  # fmt: skip
    row = next(line.split() for line in listed if line.startswith(namespace + " "))
    assert row[:5] == [namespace, NAME, "Healthy", "v1.1.0", "-"]

    tree = ok(plugin(istio_cluster, "get", NAME, "-n", namespace)).splitlines()
    assert "Phase:        Healthy" in tree
    assert "Strategy:     Direct" in tree
    assert "Stable:       v1.1.0" in tree
    assert tree[tree.index("WasmPlugins:") + 1].split() == [NAME, "stable", "v1.1.0"]
    assert "Events:" in tree

    as_json = json.loads(ok(plugin(istio_cluster, "get", NAME, "-n", namespace, "-o", "json")))
    assert as_json["status"]["phase"] == "Healthy"
    listed_json = json.loads(ok(plugin(istio_cluster, "get", "-n", namespace, "-o", "json")))
    assert [i["metadata"]["name"] for i in listed_json["items"]] == [NAME]
    as_yaml = yaml.safe_load(ok(plugin(istio_cluster, "get", NAME, "-n", namespace, "-o", "yaml")))
    assert as_yaml["metadata"]["uid"] == as_json["metadata"]["uid"]


def test_status_exits_1_when_degraded(
    istio_cluster: LocalCluster, operator: object, namespace: str, published: Published
) -> None:
    body = release_with(namespace, published, published.url("v9.9.9"))
    assert apply_json(istio_cluster, body).returncode == 0
    result = plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "60s")
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stdout.splitlines()[-1]
    assert f"{NAME}: Degraded" in last
    assert "does not exist" in last


def test_the_canary_tree_and_a_timed_out_wait_on_its_pause(
    istio_cluster: LocalCluster, canary: tuple[str, dict[str, Any]]
) -> None:
    namespace, _ = canary
    tree = ok(plugin(istio_cluster, "get", NAME, "-n", namespace)).splitlines()
    assert "Phase:        Paused" in tree
    assert "Strategy:     Canary (2 steps)" in tree
    assert "Canary:       v1.2.0" in tree
    steps = tree[tree.index("Steps:") + 1 :][:2]
    assert steps == ["  [x] 1. setWeight 50%", "  [>] 2. pause (until promoted)"]
    row = next(
        line.split() for line in ok(plugin(istio_cluster, "get", "-n", namespace)).splitlines()
        if line.startswith(NAME)
    )  # fmt: skip
    assert row[:5] == [NAME, "Paused", "v1.1.0", "v1.2.0", "2/2"]

    result = plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "2s")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "waiting for a person to promote or resume it" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        f"timed out after 2s: {NAME} is not Healthy yet (paused: it waits for a person)"
    )


class Lines:
    """A running process's stdout, line by line, read by a thread (a pipe read never blocks the
    test past its deadline)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def until(self, wanted: str, what: str, after: int = -1) -> int:
        """The index of the first line after `after` that contains `wanted`, once printed."""

        def found() -> int | None:
            while not self._queue.empty():
                self.seen.append(self._queue.get())
            return next(
                (i for i, line in enumerate(self.seen) if i > after and wanted in line), None
            )

        return poll(found, timeout=TIMEOUT, what=what,
                    on_timeout=lambda: "\n".join(self.seen[-40:]))  # fmt: skip


def test_pause_and_resume_are_consumed_and_get_watch_shows_them(
    istio_cluster: LocalCluster, canary: tuple[str, dict[str, Any]]
) -> None:
    namespace, _ = canary
    assert PLUGIN is not None
    watcher = subprocess.Popen(
        [PLUGIN, "get", NAME, "-n", namespace, "-w"],
        env=istio_cluster.kubectl_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(watcher)
        first = lines.until("PauseStep (waits for a person", "the watch's first tree")

        said = ok(plugin(istio_cluster, "pause", NAME, "-n", namespace))
        assert said == f"filterrelease '{NAME}' pause requested\n"
        poll(lambda: rollout(istio_cluster, namespace).get("paused") == "Manual",
             timeout=TIMEOUT, what="paused by request")  # fmt: skip
        poll(lambda: annotation(istio_cluster, namespace) is None, timeout=TIMEOUT,
             what="the pause request consumed")  # fmt: skip
        manual = lines.until("Manual (waits for a person", "the manual pause", after=first)

        said = ok(plugin(istio_cluster, "resume", NAME, "-n", namespace))
        assert said == f"filterrelease '{NAME}' resume requested\n"
        # Resumed, the rollout is back at its pause step, which waits for a promote.
        poll(lambda: rollout(istio_cluster, namespace).get("paused") == "PauseStep"
             and annotation(istio_cluster, namespace) is None,
             timeout=TIMEOUT, what="resumed and the request consumed")  # fmt: skip
        lines.until("PauseStep (waits for a person", "the pause step again", after=manual)
        # Not a terminal: each new state follows a blank line, no screen clearing.
        assert "" in lines.seen
        assert not any("\x1b[" in line for line in lines.seen)
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            code = watcher.wait(timeout=30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    assert code == 0


def test_a_reader_without_patch_rights_is_refused_clearly(
    istio_cluster: LocalCluster, canary: tuple[str, dict[str, Any]]
) -> None:
    namespace, _ = canary
    role = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "release-reader", "namespace": namespace},
                "rules": [
                    {
                        "apiGroups": ["filterrelease.dev"],
                        "resources": ["filterreleases"],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "release-reader", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "release-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        ],
    }
    reader = istio_cluster.serviceaccount_kubeconfig(namespace, "reader")
    istio_cluster.kubectl("apply", "-f", "-", input=json.dumps(role))

    # Reading works (the WasmPlugins it may not read are shown by name only).
    tree = ok(plugin(istio_cluster, "get", NAME, kubeconfig=reader)).splitlines()
    assert "Phase:        Paused" in tree
    assert tree[tree.index("WasmPlugins:") + 1].split() == [NAME, "-", "?"]

    refused = plugin(istio_cluster, "promote", NAME, kubeconfig=reader)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith(
        "error: forbidden: you may not patch filterreleases.filterrelease.dev in namespace "
        f'"{namespace}" (RBAC).'
    ), refused.stderr
    assert "system:serviceaccount" in refused.stderr  # the server's own words follow
    token = reader.read_text().split("token: ")[-1].split()[0]
    assert token not in refused.stdout + refused.stderr
    assert annotation(istio_cluster, namespace) is None  # nothing was written

    gone = plugin(istio_cluster, "status", "no-such-release", "-n", namespace)
    assert gone.returncode == 3, gone.stdout + gone.stderr  # not Degraded: nothing to wait for
    assert "'no-such-release' not found" in gone.stderr

    missing = plugin(istio_cluster, "abort", "no-such-release", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        f"error: filterreleases.filterrelease.dev 'no-such-release' not found in namespace "
        f'"{namespace}".'
    ), missing.stderr


def test_lint_server_side_and_offline(
    istio_cluster: LocalCluster, operator: object, namespace: str, published: Published
) -> None:
    good = example(namespace, registry=published.registry)
    # Out of the schema's bounds.
    bad = example(namespace, registry=published.registry)
    bad["metadata"]["name"] = "bad"
    bad["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 150}]}}
    # A field the schema does not have (server-side apply refuses it before anything else).
    stray = example(namespace, registry=published.registry)
    stray["metadata"]["name"] = "stray"
    stray["spec"]["replicas"] = 3
    # Within the schema, refused by a CEL rule (the API server runs those on a valid schema).
    both_targets = example(namespace, registry=published.registry)
    both_targets["metadata"]["name"] = "both-targets"
    both_targets["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                           "name": "gw"}]  # fmt: skip

    checked = ok(plugin(istio_cluster, "lint", "-", input=yaml.safe_dump(good)))
    assert checked == (
        f"document 1 (FilterRelease {namespace}/{NAME}): valid "
        "(server-side dry run and the operator's rules)\n"
    )
    assert release(istio_cluster, namespace, NAME) is None  # a dry run stores nothing

    four = yaml.safe_dump_all([good, bad, stray, both_targets])
    server = plugin(istio_cluster, "lint", "-", input=four)
    assert server.returncode == 1, server.stdout + server.stderr
    out = server.stdout.splitlines()
    assert out[0].endswith("valid (server-side dry run and the operator's rules)")
    assert out[1].startswith(f"document 2 (FilterRelease {namespace}/bad): ")
    assert out[1].endswith("(server-side dry run and the operator's rules)")
    assert out[2:] == [
        "  spec.strategy.canary.steps[0].setWeight: Invalid value: 150: "
        "spec.strategy.canary.steps[0].setWeight in body should be less than or equal to 100",
        f"document 3 (FilterRelease {namespace}/stray): 1 problem "
        "(server-side dry run and the operator's rules)",
        "  spec.replicas: field not declared in schema",
        f"document 4 (FilterRelease {namespace}/both-targets): 1 problem "
        "(server-side dry run and the operator's rules)",
        "  spec: Invalid value: exactly one of spec.selector or spec.targetRefs must be set: "
        "selector picks workload pods by label, targetRefs picks gateways or services",
    ]

    path = istio_cluster.workdir / "plugin-lint.yaml"
    path.write_text(four)
    offline = plugin(istio_cluster, "lint", "--offline", str(path))
    assert offline.returncode == 1
    how = "(offline: CRD schema, operator's rules)"
    assert offline.stdout.splitlines() == [
        f"document 1 (FilterRelease {namespace}/{NAME}): valid {how}",
        f"document 2 (FilterRelease {namespace}/bad): 1 problem {how}",
        "  spec.strategy.canary.steps[0].setWeight: 150 is greater than the maximum of 100",
        f"document 3 (FilterRelease {namespace}/stray): 1 problem {how}",
        "  spec: Additional properties are not allowed ('replicas' was unexpected)",
        f"document 4 (FilterRelease {namespace}/both-targets): 1 problem {how}",
        "  spec: exactly one of selector or targetRefs must be set",
    ]


def test_kubectl_finds_the_plugin_on_its_path(
    istio_cluster: LocalCluster, canary: tuple[str, dict[str, Any]]
) -> None:
    namespace, _ = canary
    kubectl = istio_cluster.bin_dir / "kubectl"
    assert kubectl.exists(), kubectl
    env = istio_cluster.kubectl_env()
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    found = subprocess.run(
        [str(kubectl), "plugin", "list"], env=env, capture_output=True, text=True, check=False
    )
    assert str(BIN / "kubectl-filterrelease") in found.stdout, found.stdout + found.stderr
    result = subprocess.run(
        [str(kubectl), "filterrelease", "get", "-A"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert any(
        line.split()[:3] == [namespace, NAME, "Paused"] for line in result.stdout.splitlines()
    ), result.stdout


def test_promote_ends_the_pause_and_status_exits_0(
    istio_cluster: LocalCluster, canary: tuple[str, dict[str, Any]]
) -> None:
    namespace, _ = canary
    said = ok(plugin(istio_cluster, "promote", NAME, "-n", namespace))
    assert said == f"filterrelease '{NAME}' promote requested\n"
    waited = ok(plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "60s"))
    assert f"{NAME}: Healthy" in waited.splitlines()[-1], waited
    tree = ok(plugin(istio_cluster, "get", NAME, "-n", namespace)).splitlines()
    assert "Stable:       v1.2.0" in tree
    history = tree[tree.index(next(line for line in tree if line.startswith("History"))) + 1 :]
    assert history[1].split()[1:3] == ["v1.2.0", "Promoted"], history


def test_undo_goes_back_to_v1_at_once_and_status_reports_the_drift(
    istio_cluster: LocalCluster, canary: tuple[str, dict[str, Any]]
) -> None:
    namespace, manifest = canary
    # After the promotion above; if run alone, promote first.
    current = (release(istio_cluster, namespace, NAME) or {}).get("status", {})
    if (current.get("stable") or {}).get("pluginConfig", {}).get("version") != "v1.2.0":
        ok(plugin(istio_cluster, "promote", NAME, "-n", namespace, "--full"))
        ok(plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "60s"))
    said = ok(plugin(istio_cluster, "undo", NAME, "-n", namespace, "--to-revision", "1"))
    assert said == f"filterrelease '{NAME}' undo:1 requested\n"
    # Undone is Degraded (the spec asks for v1.2.0): `status` says so and exits 1.
    waited = plugin(istio_cluster, "status", NAME, "-n", namespace, "--timeout", "60s")
    assert waited.returncode == 1, waited
    assert "undone to revision 1" in waited.stdout, waited.stdout
    plugin_spec = istio_cluster.kubectl("get", "wasmplugin", NAME, "-n", namespace, "-o",
                                        "jsonpath={.spec.pluginConfig.version}").stdout  # fmt: skip
    assert plugin_spec == "v1.1.0"
    tree = ok(plugin(istio_cluster, "get", NAME, "-n", namespace))
    assert "Undone" in tree, tree
    # A new spec ends the undo: with no pod selected, the canary goes straight to its pause.
    manifest["spec"]["pluginConfig"]["version"] = "v1.2.1"
    assert apply_json(istio_cluster, manifest).returncode == 0
    poll(lambda: rollout(istio_cluster, namespace).get("paused") == "PauseStep", timeout=TIMEOUT,
         what="a new canary from the undone version")  # fmt: skip
    after = (release(istio_cluster, namespace, NAME) or {})["status"]
    assert "undone" not in after
    assert after["stable"]["pluginConfig"]["version"] == "v1.1.0"
