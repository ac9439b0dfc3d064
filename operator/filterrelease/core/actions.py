"""What the core asks the shell to do. Plain data; the shell executes them in order and stops at
the first one that fails: each action is safe on its own (core/layout.py), so a prefix is too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True)


class ApplyWasmPlugin(_Action):
    """Create or update (never delete and recreate) one WasmPlugin to exactly this manifest."""

    kind: Literal["ApplyWasmPlugin"] = "ApplyWasmPlugin"
    manifest: dict[str, Any]
    created: bool

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


class DeleteWasmPlugin(_Action):
    """Delete the canary WasmPlugin, once no pod is on the canary track. The uid is a
    precondition: a plugin recreated under the same name by someone else is left alone."""

    kind: Literal["DeleteWasmPlugin"] = "DeleteWasmPlugin"
    name: str
    uid: str | None = None


class LabelPod(_Action):
    """Put one pod on a track (value None: remove the track label)."""

    kind: Literal["LabelPod"] = "LabelPod"
    pod: str
    key: str
    value: str | None


class MarkSplit(_Action):
    """Tell the pod admission webhook that the release's pods are (no longer) split, before
    anything relies on it. status.split is recorded by the decision's status write, which
    follows every action; narrowing waits for a reconcile that observed it."""

    kind: Literal["MarkSplit"] = "MarkSplit"
    split: bool


class ConsumeRequest(_Action):
    """Remove the manual request annotation the decision acted on."""

    kind: Literal["ConsumeRequest"] = "ConsumeRequest"
    request: str


class EmitEvent(_Action):
    """A Kubernetes Event on the FilterRelease (and to the event webhooks): every action taken,
    every problem seen."""

    kind: Literal["EmitEvent"] = "EmitEvent"
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = ApplyWasmPlugin | DeleteWasmPlugin | LabelPod | MarkSplit | ConsumeRequest | EmitEvent
# Actions that change what the proxies run, in the order the layout planner gave them.
LayoutAction = ApplyWasmPlugin | DeleteWasmPlugin | LabelPod | MarkSplit
