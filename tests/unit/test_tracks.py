"""Which track labels no release owns (core/tracks.orphaned_tracks), and the release locks."""

from __future__ import annotations

import asyncio

from filterrelease.core.tracks import orphaned_tracks, track_label
from filterrelease.release_locks import ReleaseLocks

LONG = "a-release-name-that-is-longer-than-a-label-name-may-be-" + "x" * 30


def test_a_key_is_orphaned_only_where_no_release_of_its_name_exists_in_the_pods_namespace() -> None:
    pods = [
        ("shop", {"app": "web", track_label("headers"): "canary"}),
        ("shop", {"app": "web", track_label("limits"): "stable"}),
        ("blog", {"app": "web", track_label("headers"): "stable"}),  # another namespace's
        ("shop", {"app": "web", track_label(LONG): "stable"}),  # a hashed key
        ("shop", {"app": "web", "filterrelease.dev/managed": "x"}),  # not a track label
    ]
    releases = [("shop", "limits"), ("blog", "other"), ("shop", LONG)]
    assert orphaned_tracks(pods, releases) == {
        ("shop", track_label("headers")),
        ("blog", track_label("headers")),
    }
    assert orphaned_tracks(pods, [*releases, ("shop", "headers"), ("blog", "headers")]) == set()
    assert orphaned_tracks([], releases) == set()


def test_release_locks_serialise_one_release_and_are_dropped_when_idle() -> None:
    locks = ReleaseLocks()
    order: list[str] = []

    async def work(tag: str, namespace: str, name: str) -> None:
        async with locks.of(namespace, name):
            order.append(f"{tag}+")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            order.append(f"{tag}-")

    async def main() -> int:
        # The deletion's clean-up holds the key, as a sweep does with the key alone.
        async with locks.hold("shop", track_label("headers")):
            task = asyncio.gather(work("a", "shop", "headers"), work("b", "shop", "other"))
            for _ in range(5):
                await asyncio.sleep(0)
            assert order == ["b+", "b-"]  # another release is not held up
            held = len(locks)  # b is done and dropped; a waits on the held one
        await task
        return held

    assert asyncio.run(main()) == 1
    assert order == ["b+", "b-", "a+", "a-"]
    assert len(locks) == 0
