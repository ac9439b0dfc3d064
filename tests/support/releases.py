"""FilterReleases on a local cluster for the operator's integration tests: the examples of
deploy/examples made into manifests, the release and its WasmPlugin read back, its conditions,
and waiting for it to be Ready or for its Events."""

from __future__ import annotations

import json
from typing import Any

import yaml

from localcluster import LocalCluster
from tests.support.kubectl import get_json
from tests.support.wasm import Published
from tests.unit.conftest import ROOT

TIMEOUT = 30.0


def example(
    namespace: str, name: str = "security-headers.yaml", registry: str = "registry.local"
) -> dict[str, Any]:
    """An example from deploy/examples, in `namespace`, pulling from `registry`."""
    text = (ROOT / "deploy" / "examples" / name).read_text()
    doc: dict[str, Any] = yaml.safe_load(
        text.replace("oci://registry.local/", f"oci://{registry}/")
    )
    doc["metadata"]["namespace"] = namespace
    return doc


def release(cluster: LocalCluster, namespace: str, name: str) -> Any:
    return get_json(cluster, "filterrelease", name, "-n", namespace)


def plugin(cluster: LocalCluster, namespace: str, name: str) -> Any:
    return get_json(cluster, "wasmplugin", name, "-n", namespace)


def condition(body: Any, type_: str) -> dict[str, Any] | None:
    for c in (body or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return None


def wait_ready(cluster: LocalCluster, namespace: str, name: str, generation: int = 1) -> Any:
    def ready() -> bool:
        body = release(cluster, namespace, name)
        c = condition(body, "Ready")
        return bool(
            c and c["status"] == "True" and body["status"].get("observedGeneration") == generation
        )

    try:
        cluster.wait_for(ready, timeout=TIMEOUT, what=f"FilterRelease {namespace}/{name} Ready")
    except TimeoutError as err:
        status = (release(cluster, namespace, name) or {}).get("status", {})
        raise TimeoutError(f"{err}; status: {json.dumps(status)[:2000]}") from None
    return release(cluster, namespace, name)


def events(cluster: LocalCluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    found = get_json(
        cluster, "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    return [(e["type"], e["reason"], e["message"]) for e in found["items"]]


def wait_events(
    cluster: LocalCluster, namespace: str, name: str, *reasons: str
) -> list[tuple[str, str, str]]:
    """The object's Events (type, reason, message) once there is one of every reason given.
    The operator writes a decision's status before it posts the decision's Events (an operator
    killed in between loses an Event, never a step), so a test that has seen the status can be
    ahead of the Events by an API call: it waits for them as for any other observable state."""
    found: list[tuple[str, str, str]] = []

    def all_there() -> bool:
        found[:] = events(cluster, namespace, name)
        return set(reasons) <= {e[1] for e in found}

    cluster.wait_for(all_there, timeout=TIMEOUT, what=f"Events {reasons} of {namespace}/{name}")
    return found


NAME = "security-headers"


def release_with(namespace: str, published: Published, url: str, **module: Any) -> dict[str, Any]:
    body = example(namespace, registry=published.registry)
    body["spec"]["module"] = {"url": url, **module}
    return body
