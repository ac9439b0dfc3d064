"""The split registry the pod admission webhook reads: watch, start-up list and reconciler."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from filterrelease.core.tracks import SplitRelease, admission_labels, track_label
from filterrelease.reconcile import SplitListener
from filterrelease.splits import SplitRegistry, split_from_body

FRONTEND = {"app": "frontend"}


def body(
    name: str = "headers",
    namespace: str = "shop",
    *,
    split: object = True,
    match_labels: object = FRONTEND,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": match_labels}},
    }
    if split is not None:
        doc["status"] = {"split": split, "phase": "Progressing"}
    return doc


def headers(labels: dict[str, str] = FRONTEND) -> SplitRelease:
    return SplitRelease(name="headers", match_labels=labels)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (body(), headers()),
        (body(split=False), None),
        (body(split=None), None),
        (body(split="true"), None),  # only a real boolean counts
        ({"metadata": {"name": "headers", "namespace": "shop"}, "status": None}, None),
        # An unreadable selector matches every pod: a label too many is harmless, one too few is
        # a pod without its filter.
        (body(match_labels=None), headers({})),
        (body(match_labels=["app"]), headers({})),
        (
            {"metadata": {"name": "headers", "namespace": "shop"}, "status": {"split": True}},
            headers({}),
        ),
    ],
    ids=[
        "split",
        "split-false",
        "no-status-split",
        "split-string",
        "status-null",
        "selector-missing",
        "selector-list",
        "no-spec",
    ],
)
def test_split_from_body(doc: dict[str, Any], expected: SplitRelease | None) -> None:
    assert split_from_body(doc) == expected


def test_watch_events_add_update_and_remove_splits() -> None:
    reg = SplitRegistry()
    reg.update_from_body(body())
    reg.update_from_body(body("limits", split=False))
    reg.update_from_body(body("other-ns", namespace="cart"))
    assert reg.in_namespace("shop") == (headers(),)
    assert [s.name for s in reg.in_namespace("cart")] == ["other-ns"]
    assert reg.in_namespace("nowhere") == ()

    reg.update_from_body(body(match_labels={"app": "checkout"}))
    assert reg.in_namespace("shop") == (headers({"app": "checkout"}),)
    reg.update_from_body(body(split=False))
    assert reg.in_namespace("shop") == ()
    reg.update_from_body(body())
    reg.forget("shop", "headers")
    assert reg.in_namespace("shop") == ()


def test_in_namespace_is_sorted_by_name() -> None:
    reg = SplitRegistry()
    for name in ("zeta", "alpha", "mid"):
        reg.update_from_body(body(name))
    assert [s.name for s in reg.in_namespace("shop")] == ["alpha", "mid", "zeta"]


def test_the_reconcilers_word_wins_until_the_watch_shows_it() -> None:
    reg = SplitRegistry()
    reg.update_from_body(body(split=False))
    reg.set("shop", "headers", headers())  # before the stable plugin is narrowed
    assert reg.in_namespace("shop") == (headers(),)
    # Events that predate the status write (an earlier write of ours, a label edit) still say
    # "not split": they must not take the split away while the plugin is narrowed.
    reg.update_from_body(body(split=False))
    reg.update_from_body(body(split=None))
    assert reg.in_namespace("shop") == (headers(),)
    # The status write arrives: from now on the watch leads again.
    reg.update_from_body(body())
    reg.update_from_body(body(split=False))
    assert reg.in_namespace("shop") == ()


def test_ending_a_split_counts_once_the_watch_shows_it() -> None:
    reg = SplitRegistry()
    reg.update_from_body(body())
    reg.set("shop", "headers", None)  # the stable plugin is wide again
    # The watch still says split: new pods still get a label, which nothing needs any more
    # and which harms nothing.
    assert reg.in_namespace("shop") == (headers(),)
    reg.update_from_body(body(split=False))
    assert reg.in_namespace("shop") == ()
    reg.update_from_body(body())  # a later split seen by the watch counts again
    assert reg.in_namespace("shop") == (headers(),)


def test_the_reconcilers_split_listener() -> None:
    reg = SplitRegistry()
    listener: SplitListener = reg.on_split  # what handlers.py hands the Reconciler (typed)
    listener("shop", "headers", dict(FRONTEND), True)
    reg.update_from_body(body(split=None))  # the status write has not arrived
    assert reg.in_namespace("shop") == (headers(),)
    reg.update_from_body(body())
    listener("shop", "headers", dict(FRONTEND), False)
    reg.update_from_body(body(split=None))
    assert reg.in_namespace("shop") == ()


def test_while_watch_and_reconciler_differ_both_selectors_count() -> None:
    # The selector changed during a split: the reconciler acted on one, the watch shows the
    # other. Pods either selects are labelled, so none is left out whichever the plugins use.
    reg = SplitRegistry()
    reg.set("shop", "headers", headers())
    reg.update_from_body(body(match_labels={"app": "checkout"}))
    both = reg.in_namespace("shop")
    assert both == (headers({"app": "checkout"}), headers())
    key = track_label("headers")
    assert admission_labels({"app": "frontend"}, both) == {key: "stable"}
    assert admission_labels({"app": "checkout"}, both) == {key: "stable"}
    # The reconciler's next word replaces its last one; the watch showing it ends the overlap.
    reg.set("shop", "headers", headers({"app": "checkout"}))
    assert reg.in_namespace("shop") == (headers({"app": "checkout"}),)
    reg.update_from_body(body(match_labels={"app": "checkout"}))
    reg.update_from_body(body(split=False))
    assert reg.in_namespace("shop") == ()


def test_forget_drops_the_reconcilers_word_too() -> None:
    reg = SplitRegistry()
    reg.set("shop", "headers", headers())
    reg.update_from_body(body(split=False))
    reg.forget("shop", "headers")
    assert reg.in_namespace("shop") == ()
    reg.update_from_body(body(split=False))  # recreated under the same name, not split
    assert reg.in_namespace("shop") == ()


def test_load_marks_the_registry_complete() -> None:
    reg = SplitRegistry()
    assert not reg.loaded
    reg.load([body(), body("limits", split=False)])
    assert reg.loaded
    assert reg.in_namespace("shop") == (headers(),)


def test_the_start_up_list_never_overrides_newer_news() -> None:
    reg = SplitRegistry()
    # While the list is in flight: the watch ended a split, the reconciler started one, and a
    # third release was deleted. The list, read earlier, says otherwise for all three.
    reg.update_from_body(body("ended", split=False))
    reg.set("shop", "started", SplitRelease(name="started", match_labels={}))
    reg.forget("shop", "deleted")
    reg.load([body("ended"), body("started", split=False), body("deleted"), body("listed")])
    assert [s.name for s in reg.in_namespace("shop")] == ["listed", "started"]
    # After the load the watch alone decides (nothing is remembered as "touched").
    reg.update_from_body(body("ended"))
    assert [s.name for s in reg.in_namespace("shop")] == ["ended", "listed", "started"]


def test_wait_loaded_is_bounded() -> None:
    async def scenario() -> tuple[bool, bool]:
        reg = SplitRegistry()
        early = await reg.wait_loaded(0.01)
        asyncio.get_running_loop().call_soon(reg.load, [])
        return early, await reg.wait_loaded(5)

    assert asyncio.run(scenario()) == (False, True)


def test_admission_labels_from_the_registry() -> None:
    reg = SplitRegistry()
    reg.update_from_body(body())
    reg.update_from_body(body("all-pods", match_labels={}))
    key = track_label("headers")
    pod = {"app": "frontend", "pod-template-hash": "abc"}
    assert admission_labels(pod, reg.in_namespace("shop")) == {
        key: "stable",
        track_label("all-pods"): "stable",
    }
    assert admission_labels({"app": "cart"}, reg.in_namespace("shop")) == {
        track_label("all-pods"): "stable"
    }
    assert admission_labels(pod, reg.in_namespace("cart")) == {}
