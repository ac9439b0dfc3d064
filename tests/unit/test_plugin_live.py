"""`get -w`: which watch events change what is on the screen."""

from __future__ import annotations

from typing import Any

from filterrelease.plugin.live import fold, key_of


def obj(name: str, version: str, namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": version}}


def test_the_watchs_opening_list_of_what_was_shown_changes_nothing() -> None:
    known = {key_of(obj("a", "1")): obj("a", "1")}
    assert fold(known, "ADDED", obj("a", "1")) is False
    assert fold(known, "ADDED", obj("b", "2")) is True
    assert sorted(known) == [("shop", "a"), ("shop", "b")]


def test_a_new_version_replaces_the_old_one() -> None:
    known = {key_of(obj("a", "1")): obj("a", "1")}
    assert fold(known, "MODIFIED", obj("a", "5")) is True
    assert known[("shop", "a")]["metadata"]["resourceVersion"] == "5"


def test_a_deletion_removes_a_known_release_only_once() -> None:
    known = {key_of(obj("a", "1")): obj("a", "1")}
    assert fold(known, "DELETED", obj("a", "2")) is True
    assert known == {}
    assert fold(known, "DELETED", obj("a", "2")) is False


def test_namespaces_keep_releases_of_one_name_apart() -> None:
    known: dict[tuple[str, str], dict[str, Any]] = {}
    assert fold(known, "ADDED", obj("a", "1", "n1"))
    assert fold(known, "ADDED", obj("a", "1", "n2"))
    assert len(known) == 2
