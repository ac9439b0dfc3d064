"""FilterRelease (+ rollout state) → Istio WasmPlugin manifests. Pure: same input, same output.

Rendering rules that come from Istio's behaviour:
- priority is always explicit: Istio sorts an unset priority after an explicit 0 and breaks ties
  by creation time, so an implicit one would make the order depend on history;
- no metadata is copied from the FilterRelease: a copied Argo CD tracking label or annotation would
  make Argo CD treat the WasmPlugin as its own and prune it;
- the WasmPlugin is owned by the FilterRelease (controller reference), so deleting the release
  garbage-collects its plugins and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from filterrelease.core.layout import PluginState
from filterrelease.core.module import VerifiedModule
from filterrelease.core.spec import FilterReleaseSpec
from filterrelease.core.status import ModuleVersion
from filterrelease.core.tracks import CANARY, STABLE, track_label

GROUP = "filterrelease.dev"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "FilterRelease"
WASMPLUGIN_API_VERSION = "extensions.istio.io/v1alpha1"
MANAGED_BY = "filterrelease"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RELEASE = f"{GROUP}/release"
LABEL_ROLE = f"{GROUP}/role"
ANNOTATION_VERSION = f"{GROUP}/version"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"


class ReleaseRef(BaseModel):
    """The identity of a FilterRelease object, as much as rendering needs."""

    model_config = ConfigDict(frozen=True)
    namespace: str
    name: str
    uid: str
    generation: int


def version_label(url: str, sha256: str | None) -> str:
    """A short label for people: the tag, else the first 12 digits of the digest."""
    ref = url.split("://", 1)[-1]
    if "@sha256:" in ref:
        return "sha256:" + ref.rsplit("@sha256:", 1)[1][:12]
    last = ref.rsplit("/", 1)[-1]
    if url.startswith("oci://"):
        if ":" in last:
            return last.rsplit(":", 1)[1]
        return "sha256:" + sha256[:12] if sha256 else "latest"
    return "sha256:" + sha256[:12] if sha256 else last


def _drop_empty(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None and v not in ([], {})}


def _json(model: BaseModel) -> Any:
    # mode="json" turns tuples into lists: the rendered spec is compared with what the API server
    # returns, and a tuple never equals a list.
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def render_spec(spec: FilterReleaseSpec, verified: VerifiedModule | None = None) -> dict[str, Any]:
    """The WasmPlugin spec for one version of the filter.

    With a verified module the URL is pinned to the digest pre-flight resolved and sha256 is set,
    so every proxy fetches exactly the bytes that were checked. Without one (a spec rendered for
    inspection, e.g. a server-side dry run of an example) the module is rendered as written.
    """
    module = spec.module
    rendered = _drop_empty(
        {
            "selector": _json(spec.selector) if spec.selector else None,
            "targetRefs": [_json(r) for r in spec.target_refs or ()],
            "url": verified.url if verified else module.url,
            "sha256": verified.sha256 if verified else module.sha256,
            "imagePullPolicy": module.image_pull_policy,
            "imagePullSecret": module.image_pull_secret,
            "pluginName": module.plugin_name,
            "phase": spec.phase.value,
            "priority": spec.priority,
            "failStrategy": spec.fail_strategy.value,
            "type": spec.type.value,
            "match": [_json(m) for m in spec.match],
            "pluginConfig": spec.plugin_config,
            "vmConfig": _json(spec.vm_config) if spec.vm_config and spec.vm_config.env else None,
        }
    )
    # An empty pluginConfig object is meaningful to some plugins; keep it when the user wrote it.
    if spec.plugin_config == {}:
        rendered["pluginConfig"] = {}
    return rendered


def config_hash(wasmplugin_spec: dict[str, Any]) -> str:
    canonical = json.dumps(wasmplugin_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def module_version(
    spec: FilterReleaseSpec, generation: int, verified: VerifiedModule | None = None
) -> ModuleVersion:
    rendered = render_spec(spec, verified)
    sha256 = verified.sha256 if verified else spec.module.sha256
    return ModuleVersion(
        version=version_label(spec.module.url, sha256),
        url=rendered["url"],
        source_url=spec.module.url,
        sha256=sha256,
        plugin_config=spec.plugin_config,
        config_hash=config_hash(rendered),
        generation=generation,
        content=rendered,
    )


def stable_plugin_name(release: ReleaseRef) -> str:
    return release.name


def canary_plugin_name(release: ReleaseRef) -> str:
    # A WasmPlugin name is a DNS subdomain (253 characters): keep room for the suffix.
    if len(release.name) > 246:
        short = hashlib.sha256(release.name.encode()).hexdigest()[:8]
        return f"{release.name[:237]}-{short}-canary"
    return f"{release.name}-canary"


def render_wasmplugin(
    release: ReleaseRef, spec: FilterReleaseSpec, verified: VerifiedModule | None = None
) -> dict[str, Any]:
    """The complete WasmPlugin manifest that carries the release to every selected proxy."""
    return render_plugin(release, module_version(spec, release.generation, verified), STABLE)


def render_plugin(
    release: ReleaseRef, version: ModuleVersion, role: str, *, narrowed: bool = False
) -> dict[str, Any]:
    """The WasmPlugin of one track. The stable plugin selects the whole workload, or (narrowed,
    while a canary runs) only its pods on the stable track; the canary plugin only the pods on
    the canary track. Both keep the release's phase and priority: they never select the same
    pod, so they never compete for a position in a filter chain."""
    if version.content is None:
        raise ValueError(f"version {version.version} has no content to render")
    content = version.content
    if role == CANARY or narrowed:
        selector = content.get("selector", {}).get("matchLabels", {})
        content = {
            **content,
            "selector": {"matchLabels": {**selector, track_label(release.name): role}},
        }
    return {
        "apiVersion": WASMPLUGIN_API_VERSION,
        "kind": "WasmPlugin",
        "metadata": {
            "name": canary_plugin_name(release) if role == CANARY else stable_plugin_name(release),
            "namespace": release.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_RELEASE: release.name,
                LABEL_ROLE: role,
            },
            "annotations": {
                ANNOTATION_VERSION: version.version,
                ANNOTATION_CONFIG_HASH: version.config_hash,
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": release.name,
                    "uid": release.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": content,
    }


def live_plugin_state(release: ReleaseRef, live: dict[str, Any] | None) -> PluginState | None:
    """A live plugin as the layout planner sees it: the hash of what it actually carries (so a
    hand edit shows as a content change and is written back) and whether it is narrowed."""
    if live is None:
        return None
    spec = dict(live.get("spec") or {})
    key = track_label(release.name)
    labels = dict((spec.get("selector") or {}).get("matchLabels") or {})
    narrowed = key in labels
    if narrowed:
        labels.pop(key)
        spec["selector"] = {**spec["selector"], "matchLabels": labels}
    content = config_hash(spec)
    annotations = live.get("metadata", {}).get("annotations") or {}
    if annotations.get(ANNOTATION_CONFIG_HASH) != content:
        # Metadata that does not match the content (edited by hand): write it again.
        content = f"drifted:{content}"
    return PluginState(content=content, narrowed=narrowed)


def needs_write(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Whether the live WasmPlugin differs from the desired one in anything we own.

    Only our own fields are compared: other controllers may add labels or annotations, and the
    API server adds defaults and metadata; none of that should make us write.
    """
    if live is None:
        return True
    if live.get("spec") != desired["spec"]:
        return True
    live_meta = live.get("metadata", {})
    for field in ("labels", "annotations"):
        mine = desired["metadata"][field]
        theirs = live_meta.get(field) or {}
        if any(theirs.get(k) != v for k, v in mine.items()):
            return True
    owners = live_meta.get("ownerReferences") or []
    want = desired["metadata"]["ownerReferences"][0]
    return not any(o.get("uid") == want["uid"] and o.get("controller") for o in owners)
