"""`make demo`: the local cluster, the operator under its own RBAC, and the security-headers
example released, updated in place, guarded against a bad spec, and garbage-collected.

Run: uv run python -m localcluster.demo [--keep] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from localcluster.cluster import LocalCluster
from localcluster.install import (
    DEFAULT_ISTIO_VERSION,
    REPO,
    install_filterrelease,
    install_istio_crds,
)
from localcluster.oci_publish import publish
from localcluster.operator_process import OperatorProcess

NS = "shop"
EXAMPLE = REPO / "deploy" / "examples" / "security-headers.yaml"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(cluster: LocalCluster, *args: str) -> str:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    out = cluster.kubectl(*args, check=False)
    text = (out.stdout + out.stderr).rstrip()
    print("  " + text.replace("\n", "\n  "), flush=True)
    return text


def frontend() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "frontend", "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "frontend"}},
            "template": {
                "metadata": {"labels": {"app": "frontend"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/frontend:1"}]},
            },
        },
    }


def release_json(cluster: LocalCluster) -> Any:
    out = cluster.kubectl("get", "frel", "security-headers", "-n", NS, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_ready(cluster: LocalCluster, generation: int) -> None:
    def ready() -> bool:
        body = release_json(cluster)
        if not body or body.get("status", {}).get("observedGeneration") != generation:
            return False
        conds = {c["type"]: c["status"] for c in body["status"].get("conditions", [])}
        return conds.get("Ready") == "True"

    t0 = time.monotonic()
    cluster.wait_for(ready, timeout=60, what="the release to be Ready")
    print(f"  (Ready after {time.monotonic() - t0:.1f}s)")


def run(workdir: Path, keep: bool) -> None:
    say(f"Starting the local control plane in {workdir} (binaries built from Go modules)")
    shutil.rmtree(workdir, ignore_errors=True)
    with LocalCluster(workdir) as cluster:
        say(f"Installing Istio {DEFAULT_ISTIO_VERSION}'s CRDs, the FilterRelease CRD and RBAC")
        install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
        kubeconfig = install_filterrelease(cluster)
        say("Starting the operator as ServiceAccount filterrelease-system/filterrelease-operator")
        with OperatorProcess(kubeconfig, workdir / "logs" / "operator.log") as operator:
            print(f"  pid {operator.pid}, log {operator.log_path}")
            demo_steps(cluster)
            if keep:
                say("Cluster and operator keep running; Ctrl-C stops everything")
                print(f"  export KUBECONFIG={cluster.admin_kubeconfig}")
                print(f"  alias kubectl={cluster.bin_dir / 'kubectl'}")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        say("Stopping the operator and the cluster")
    print("Done: every process the demo started has been stopped.")


def build_filters() -> dict[str, bytes]:
    say("Building the Wasm filters from Go source (filters/build.sh, cached)")
    out = (
        subprocess.run(
            ["bash", str(REPO / "filters" / "build.sh")],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return {p.stem: p.read_bytes() for p in sorted(Path(out).glob("*.wasm"))}


def publish_versions(cluster: LocalCluster, modules: dict[str, bytes]) -> None:
    say(f"Publishing security-headers v1.1.0 and v1.2.0 to the registry {cluster.registry.host}")
    for tag, layout in (("v1.1.0", "oci-wasm"), ("v1.2.0", "docker")):
        digest = publish(
            cluster.registry.host, "filters/security-headers", tag, modules["security-headers"],
            layout,  # type: ignore[arg-type]
        )  # fmt: skip
        print(f"  filters/security-headers:{tag} ({layout} layout) -> {digest}")
    # What a plain `oras push` makes: Istio cannot load it, and pre-flight must say so.
    publish(cluster.registry.host, "filters/security-headers", "v1.3.0-oras",
            modules["security-headers"], "oras-single")  # fmt: skip
    print("  filters/security-headers:v1.3.0-oras (a one-layer `oras push`, which Istio rejects)")


def demo_steps(cluster: LocalCluster) -> None:
    publish_versions(cluster, build_filters())
    start_workload(cluster)
    v1 = release_v1(cluster)
    v2 = update_to_v2(cluster, v1)
    reject_oras_push(cluster, v2)
    refuse_bad_spec(cluster, v2)
    delete_release(cluster)


def start_workload(cluster: LocalCluster) -> None:
    say("A workload: namespace shop, Deployment frontend (3 pods on kwok nodes)")
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(frontend()))
    cluster.kubectl("rollout", "status", "deployment/frontend", "-n", NS, "--timeout=60s")
    show(cluster, "get", "pods", "-n", NS, "-o", "wide")


def release_v1(cluster: LocalCluster) -> dict[str, Any]:
    say(f"Release v1.1.0: {EXAMPLE.relative_to(REPO)}, registry.local -> {cluster.registry.host}")
    example = EXAMPLE.read_text().replace("registry.local", cluster.registry.host)
    print("  " + example.replace("\n", "\n  "))
    cluster.kubectl("apply", "-f", "-", input=example)
    wait_ready(cluster, generation=1)
    show(cluster, "get", "frel", "-n", NS)
    say("The WasmPlugin the operator rendered: owned, explicit priority, pinned to the digest")
    show(cluster, "get", "wasmplugin", "security-headers", "-n", NS, "-o", "yaml")
    say("The release's status: module verified, versions applied and last known good")
    body = release_json(cluster)
    print("  " + yaml.safe_dump(body["status"], sort_keys=False).replace("\n", "\n  "))
    manifest: dict[str, Any] = yaml.safe_load(example)
    return manifest


def plugin_field(cluster: LocalCluster, path: str) -> str:
    return cluster.kubectl(
        "get", "wasmplugin", "security-headers", "-n", NS, "-o", f"jsonpath={{{path}}}"
    ).stdout


def update_to_v2(cluster: LocalCluster, v1: dict[str, Any]) -> dict[str, Any]:
    say("Release v1.2.0 with a new frame_options: the WasmPlugin is updated in place")
    uid = plugin_field(cluster, ".metadata.uid")
    v2: dict[str, Any] = json.loads(json.dumps(v1))
    v2["spec"]["module"]["url"] = v1["spec"]["module"]["url"].replace("v1.1.0", "v1.2.0")
    v2["spec"]["pluginConfig"].update(frame_options="SAMEORIGIN", version="v1.2.0")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(v2))
    wait_ready(cluster, generation=2)
    show(cluster, "get", "frel", "-n", NS)
    after = plugin_field(cluster, ".metadata.uid")
    verdict = "same object" if uid == after else "RECREATED"
    print(f"  WasmPlugin uid before {uid}, after {after}: {verdict}")
    print(f"  url now {plugin_field(cluster, '.spec.url')}")
    return v2


def reject_oras_push(cluster: LocalCluster, v2: dict[str, Any]) -> None:
    say("v1.3.0 pushed with `oras push` (one raw layer): pre-flight rejects it before any proxy")
    oras = json.loads(json.dumps(v2))
    oras["spec"]["module"]["url"] = v2["spec"]["module"]["url"].replace("v1.2.0", "v1.3.0-oras")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(oras))

    def rejected() -> bool:
        status = (release_json(cluster) or {}).get("status", {})
        return bool(status.get("observedGeneration") == 3 and status.get("phase") == "Degraded")

    cluster.wait_for(rejected, timeout=60, what="pre-flight to reject v1.3.0")
    show(cluster, "get", "frel", "-n", NS)
    for c in release_json(cluster)["status"]["conditions"]:
        print(f"  {c['type']}={c['status']} ({c['reason']}): {c['message']}")
    print(f"  the WasmPlugin still carries {plugin_field(cluster, '.spec.url')}")
    say("Back to v1.2.0 (the spec as it was): Healthy again, nothing rewritten")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(v2))
    wait_ready(cluster, generation=4)


def refuse_bad_spec(cluster: LocalCluster, v2: dict[str, Any]) -> None:
    say("A bad spec (ftp:// module URL) is refused by the API server; nothing changes")
    bad = json.loads(json.dumps(v2))
    bad["spec"]["module"]["url"] = "ftp://files.local/security-headers.wasm"
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    print("  " + result.stderr.strip().replace("\n", "\n  "))
    print(f"  the WasmPlugin still carries {plugin_field(cluster, '.spec.url')}")
    say("Events the operator recorded")
    show(cluster, "get", "events", "-n", NS, "--field-selector",
         "involvedObject.kind=FilterRelease", "--sort-by=.lastTimestamp")  # fmt: skip


def delete_release(cluster: LocalCluster) -> None:
    say("Deleting the release: the garbage collector removes its WasmPlugin")
    cluster.kubectl("delete", "frel", "security-headers", "-n", NS)

    def gone() -> bool:
        got = cluster.kubectl("get", "wasmplugin", "security-headers", "-n", NS, check=False)
        return got.returncode != 0

    cluster.wait_for(gone, timeout=30, what="garbage collection of the WasmPlugin")
    show(cluster, "get", "wasmplugins", "-n", NS)
    say("Look for yourself (run the demo with --keep to keep the cluster):")
    print(f"  KUBECONFIG={cluster.admin_kubeconfig} {cluster.bin_dir / 'kubectl'} get frel -A")
    print("  kubectl explain filterrelease.spec.module")
    print("  kubectl describe frel -n shop security-headers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO / ".localcluster" / "demo")
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()
    try:
        run(args.workdir.resolve(), args.keep)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
