"""What the shell observed about one release, and the context derived from it once. Pure.

derive() works out, from one observation, everything both needs() and decide() build on: the
desired and last good versions, the rollout (started here if the version is new), the observed
layout, the target layout, and whether the layout has reached it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from filterrelease.core import canary as steps
from filterrelease.core.analysis import MetricResult
from filterrelease.core.hooks import GateResult, HookType
from filterrelease.core.layout import Layout, Target, plan
from filterrelease.core.module import ModuleFailure, VerifiedModule
from filterrelease.core.proxies import ProxyReading
from filterrelease.core.render import (
    ReleaseRef,
    canary_plugin_name,
    config_hash,
    live_plugin_state,
    module_version,
    stable_plugin_name,
)
from filterrelease.core.spec import Canary, FilterReleaseSpec, SpecError
from filterrelease.core.status import (
    FilterReleaseStatus,
    ModuleVersion,
    RolloutStatus,
    UndoStatus,
)
from filterrelease.core.tracks import CANARY, track_label
from filterrelease.core.undo import active_undo


class Observation(BaseModel):
    """Everything decide() may look at, gathered by the shell in one pass."""

    model_config = ConfigDict(frozen=True)
    release: ReleaseRef
    spec: FilterReleaseSpec | SpecError
    status: FilterReleaseStatus
    # Live WasmPlugins in the release's namespace whose name the release renders, by name.
    live_plugins: dict[str, dict[str, Any]]
    # The module pre-flight's verdict; None only when the spec is invalid (nothing to check).
    module: VerifiedModule | ModuleFailure | None = None
    now: datetime
    # Live pods the workload selector matches (terminating ones left out), name → labels.
    pods: dict[str, dict[str, str]] = {}
    # The selected pods that have a proxy (an istio-proxy container, Running), name → uid.
    sidecars: dict[str, str] = {}
    # What the proxies the shell read run (core/proxies.py), by pod; see proxy_needs().
    proxies: dict[str, ProxyReading] = {}
    # The manual request annotation's value, if one is pending.
    request: str | None = None
    # What the shell measured and asked for this decision (see needs()).
    step_results: tuple[MetricResult, ...] = ()
    background_results: tuple[MetricResult, ...] = ()
    gates: dict[HookType, GateResult] = {}


class Context(BaseModel):
    """What a decision on a releasable observation works from (see derive())."""

    model_config = ConfigDict(frozen=True)
    desired: ModuleVersion  # the version the spec asks for
    stable: ModuleVersion | None  # the last known good version, with its content
    # Set only while a canary rollout runs (a canary strategy, and a stable version other than
    # the desired one to canary against); otherwise one version goes everywhere.
    canary: Canary | None = None
    rollout: RolloutStatus | None = None
    started: bool = False  # the rollout starts with this decision
    layout: Layout  # what is live
    target: Target  # where the layout should go for the recorded rollout
    converged: bool  # the layout is the target: the layout planner has nothing to do
    # A person's undo in force: `desired` is the version it went back to, not the spec's.
    undone: UndoStatus | None = None

    @property
    def canary_pods(self) -> int:
        return sum(1 for v in self.layout.pods.values() if v == CANARY)


def derive(obs: Observation) -> Context | None:
    """The context of one observation; None when there is nothing to release (an invalid spec,
    or a module pre-flight did not verify)."""
    if isinstance(obs.spec, SpecError):
        return None
    undone = active_undo(obs.status, obs.release.generation)
    stable = last_good(obs)
    if undone is not None and stable is not None and stable.config_hash == undone.config_hash:
        # The spec's own version (and its module's pre-flight) does not matter until it changes.
        layout = observed_layout(obs)
        target = Target(stable=stable.config_hash)
        return Context(
            desired=stable,
            stable=stable,
            layout=layout,
            target=target,
            converged=not plan(layout, target),
            undone=undone,
        )
    if not isinstance(obs.module, VerifiedModule):
        return None
    desired = module_version(obs.spec, obs.release.generation, obs.module)
    layout = observed_layout(obs)
    canary = obs.spec.canary
    if canary is None or stable is None or stable.config_hash == desired.config_hash:
        # No canary strategy, the first release (nothing to canary against), or the stable
        # version asked for again (e.g. a Git revert during a rollout): one version everywhere.
        applied = obs.status.applied
        if applied is not None and applied.config_hash == desired.config_hash:
            # A stored version keeps the generation it came from while its content is unchanged.
            desired = desired.model_copy(update={"generation": applied.generation})
        target = Target(stable=desired.config_hash)
        return Context(
            desired=desired,
            stable=stable,
            layout=layout,
            target=target,
            converged=not plan(layout, target),
        )
    previous = obs.status.rollout
    rollout = current_rollout(obs, canary, desired)
    target = split_target(obs, rollout, stable, desired)
    return Context(
        desired=desired,
        stable=stable,
        canary=canary,
        rollout=rollout,
        started=previous is None or previous.revision != desired.config_hash,
        layout=layout,
        target=target,
        converged=not plan(layout, target),
    )


def observed_layout(obs: Observation) -> Layout:
    key = track_label(obs.release.name)
    return Layout(
        stable=live_plugin_state(
            obs.release, obs.live_plugins.get(stable_plugin_name(obs.release))
        ),
        canary=live_plugin_state(
            obs.release, obs.live_plugins.get(canary_plugin_name(obs.release))
        ),
        pods={name: labels.get(key) for name, labels in obs.pods.items()},
        split=bool(obs.status.split),
    )


def last_good(obs: Observation) -> ModuleVersion | None:
    """The last known good version, with the exact content to put back. A status written by an
    operator version that kept no content takes it from the live stable plugin, if that still
    carries the version the status names."""
    stable = obs.status.stable
    if stable is None or stable.content is not None:
        return stable
    live = obs.live_plugins.get(stable_plugin_name(obs.release))
    if live is None:
        return None
    content = dict(live.get("spec") or {})
    if config_hash(content) != stable.config_hash:
        return None
    return stable.model_copy(update={"content": content})


def current_rollout(obs: Observation, canary: Canary, desired: ModuleVersion) -> RolloutStatus:
    rollout = obs.status.rollout
    if rollout is None or rollout.revision != desired.config_hash:
        rollout = steps.start(desired.config_hash, obs.now)
    if canary.waves is not None and rollout.waves is None:
        # The waves are fixed when the rollout starts, from the pods selected then.
        rollout = rollout.model_copy(update={"waves": steps.wave_values(canary, obs.pods)})
    return rollout


def split_target(
    obs: Observation, rollout: RolloutStatus, stable: ModuleVersion, desired: ModuleVersion
) -> Target:
    """Where the layout goes for this rollout: back to stable, all on desired, or split."""
    if rollout.aborted:
        return Target(stable=stable.config_hash)
    if rollout.promoting:
        return Target(stable=desired.config_hash)
    canary = obs.spec.canary if isinstance(obs.spec, FilterReleaseSpec) else None
    waves = steps.wave_target(rollout, canary, obs.pods) if canary else None
    if waves is not None:
        order, count = waves
        return Target(
            stable=stable.config_hash,
            canary=desired.config_hash,
            canary_pods=count,
            canary_order=order,
        )
    count = steps.canary_pod_count(rollout.weight, len(obs.pods))
    return Target(stable=stable.config_hash, canary=desired.config_hash, canary_pods=count)
