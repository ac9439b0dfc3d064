"""deploy/argocd/health.lua, run in a real Lua interpreter as Argo CD runs it (obj in, hs out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "health.lua"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        return value

    lua.globals().obj = table(obj)
    hs = lua.execute(SCRIPT.read_text())
    return str(hs["status"]), str(hs["message"] or "")


def release(generation: int, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"metadata": {"generation": 1}}, "Progressing"),
        (release(2, observedGeneration=1, phase="Healthy"), "Progressing"),
        (release(2, observedGeneration=2, phase="Healthy", message="ok"), "Healthy"),
        (release(3, observedGeneration=3, phase="Progressing"), "Progressing"),
        (release(3, observedGeneration=3, phase="Paused"), "Suspended"),
        (release(3, observedGeneration=3, phase="Degraded", message="rolled back"), "Degraded"),
        (release(1, observedGeneration=1, phase="Pending"), "Progressing"),
    ],
)
def test_phases_map_to_argo_cd_health(obj: dict[str, Any], expected: str) -> None:
    assert health(obj)[0] == expected


def test_the_release_message_is_shown() -> None:
    status, message = health(release(1, observedGeneration=1, phase="Degraded", message="why"))
    assert (status, message) == ("Degraded", "why")
