"""Which releases split their pods into tracks right now: what the pod admission webhook reads.

Pure in-memory state, fed from three sources:

- the watch on FilterReleases (`update_from_body` on every event, `forget` on deletion);
- one list of all FilterReleases at start-up (`load`), after which the webhook may answer: until
  then it cannot know whether a new pod must be labelled, so it waits (admission.py);
- the reconciler (`set`), synchronously, *before* it labels pods or narrows a WasmPlugin to the
  stable track: the watch only shows the split once the status write has landed, and a pod
  created in between must already be labelled.

The reconciler is ahead of the watch, and the watch may still deliver events older than what
the reconciler acted on (its own earlier status writes, a spec change it already read). So until
the watch shows the reconciler's value, both count: a pod is labelled if either the watch or the
reconciler says its release is split and selects it. A track label too many is harmless (the
stable plugin selects the pod, or selects it anyway when not narrowed); one too few is a pod
that runs without its filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from filterrelease.core.tracks import SplitRelease

Key = tuple[str, str]  # (namespace, name)


def canary_from_body(body: Mapping[str, Any]) -> SplitRelease | None:
    """The selector of a FilterRelease that may split its pods (it has a canary strategy)."""
    spec = body.get("spec")
    strategy = spec.get("strategy") if isinstance(spec, Mapping) else None
    if not isinstance(strategy, Mapping) or not strategy.get("canary"):
        return None
    return SplitRelease(name=str(body["metadata"]["name"]), match_labels=_match_labels(spec))


def _match_labels(spec: Any) -> dict[str, str]:
    selector = spec.get("selector") if isinstance(spec, Mapping) else None
    raw = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}


def split_from_body(body: Mapping[str, Any]) -> SplitRelease | None:
    """The split of one FilterRelease body, None when status.split is not true.

    A selector that cannot be read is taken as matching every pod of the namespace: a track label
    on a pod no plugin selects changes nothing, an unlabelled pod a narrowed plugin misses does.
    """
    status = body.get("status")
    if not isinstance(status, Mapping) or status.get("split") is not True:
        return None
    return SplitRelease(
        name=str(body["metadata"]["name"]), match_labels=_match_labels(body.get("spec"))
    )


class SplitRegistry:
    def __init__(self) -> None:
        # What the watch (or the start-up list) last showed, split releases only.
        self._watched: dict[Key, SplitRelease] = {}
        # What the reconciler said, until the watch shows the same.
        self._pending: dict[Key, SplitRelease | None] = {}
        # Releases whose state came from the watch or the reconciler: the start-up list, which
        # may be older than both, does not overwrite them.
        self._touched: set[Key] = set()
        self._loaded = asyncio.Event()
        # Releases with a canary strategy, split or not (admission.confirmed_splits).
        self._canaries: dict[Key, SplitRelease] = {}

    # -- writers ---------------------------------------------------------------------------

    def update_from_body(self, body: Mapping[str, Any]) -> None:
        """A FilterRelease as the watch (or a fresh read) shows it."""
        meta = body["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        self._touch(key)
        seen = split_from_body(body)
        self._put(key, seen)
        self._put_canary(key, canary_from_body(body))
        if key in self._pending and self._pending[key] == seen:
            del self._pending[key]  # the watch has caught up with the reconciler

    def set(self, namespace: str, name: str, split: SplitRelease | None) -> None:
        """The reconciler's word, before it acts on it: counts until the watch shows it."""
        key = (namespace, name)
        self._touch(key)
        self._pending[key] = split

    def on_split(
        self, namespace: str, name: str, match_labels: dict[str, str], split: bool
    ) -> None:
        """set() in the shape of the reconciler's SplitListener (reconcile.py)."""
        value = SplitRelease(name=name, match_labels=match_labels) if split else None
        self.set(namespace, name, value)

    def forget(self, namespace: str, name: str) -> None:
        """The release is gone (its WasmPlugins go with it)."""
        key = (namespace, name)
        self._touch(key)  # a start-up list still in flight must not bring it back
        self._pending.pop(key, None)
        self._watched.pop(key, None)
        self._canaries.pop(key, None)

    def load(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """The initial list of every FilterRelease; from now on the registry is complete."""
        for body in bodies:
            meta = body["metadata"]
            key = (str(meta["namespace"]), str(meta["name"]))
            if key not in self._touched:
                self._put(key, split_from_body(body))
                self._put_canary(key, canary_from_body(body))
        self._touched.clear()
        self._loaded.set()

    # -- readers ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    async def wait_loaded(self, seconds: float) -> bool:
        """Whether the initial list is in, waiting for it at most `seconds`."""
        try:
            await asyncio.wait_for(self._loaded.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def in_namespace(self, namespace: str) -> tuple[SplitRelease, ...]:
        """The split releases of one namespace, sorted (a stable order for tests and logs).

        A release may appear twice, with the selector the watch shows and the one the
        reconciler acted on, while the two differ."""
        found = [s for (ns, _), s in self._watched.items() if ns == namespace]
        for (ns, _), s in self._pending.items():
            if ns == namespace and s is not None and s not in found:
                found.append(s)
        return tuple(sorted(found, key=lambda s: (s.name, sorted(s.match_labels.items()))))

    def unsplit_canaries(self, namespace: str) -> tuple[SplitRelease, ...]:
        """Releases of one namespace that can split but that neither the watch nor the
        reconciler shows split: the ones a fresh read must decide for (admission.py)."""
        split = {s.name for s in self.in_namespace(namespace)}
        return tuple(
            sorted(
                (c for (ns, name), c in self._canaries.items()
                 if ns == namespace and name not in split),
                key=lambda c: c.name,
            )
        )  # fmt: skip

    # -- internals -------------------------------------------------------------------------

    def _touch(self, key: Key) -> None:
        if not self.loaded:
            self._touched.add(key)

    def _put(self, key: Key, split: SplitRelease | None) -> None:
        if split is None:
            self._watched.pop(key, None)
        else:
            self._watched[key] = split

    def _put_canary(self, key: Key, canary: SplitRelease | None) -> None:
        if canary is None:
            self._canaries.pop(key, None)
        else:
            self._canaries[key] = canary
