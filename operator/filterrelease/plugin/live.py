"""`get -w`: the releases known so far, folded with each watch event. Pure."""

from __future__ import annotations

from typing import Any

Key = tuple[str, str]  # (namespace, name)


def key_of(release: dict[str, Any]) -> Key:
    meta = release["metadata"]
    return str(meta.get("namespace", "")), str(meta["name"])


def fold(known: dict[Key, dict[str, Any]], kind: str, obj: dict[str, Any]) -> bool:
    """Apply one watch event to `known`; whether anything a person would see changed. A watch
    opens by listing what exists (ADDED each): those already shown are no change."""
    key = key_of(obj)
    if kind == "DELETED":
        return known.pop(key, None) is not None
    old = known.get(key)
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if old is not None and (old.get("metadata") or {}).get("resourceVersion") == version:
        return False
    known[key] = obj
    return True
