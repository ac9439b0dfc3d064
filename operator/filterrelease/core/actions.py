"""What the core asks the shell to do. Plain data; the shell executes them in order."""

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


class EmitEvent(_Action):
    """A Kubernetes Event on the FilterRelease: every action taken, every problem seen."""

    kind: Literal["EmitEvent"] = "EmitEvent"
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = ApplyWasmPlugin | EmitEvent
