"""Whether the selected proxies confirm the layout the release is in. Pure.

Once the WasmPlugins and the pods' track labels are where a decision wants them (the layout is
converged), each proxy of a selected pod should run the version of the plugin that selects it:
a pod on the canary track the canary, every other one the stable version (core/proxies.py reads
what it runs). A release is Ready, a canary step starts (its analysis window opens) and a
promotion ends only once every one of them does.

The shell asks only the pods proxy_needs() names, and skips a pod whose proxy already confirmed
the same version (it remembers that): a resync of a confirmed release reads no proxy.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from filterrelease.core.decision import with_condition
from filterrelease.core.observation import Context, Observation
from filterrelease.core.proxies import (
    MAX_LAGGING_SHOWN,
    Expected,
    PodCheck,
    ProxyReading,
    Verdict,
    check_pod,
    expected,
)
from filterrelease.core.render import canary_plugin_name, stable_plugin_name
from filterrelease.core.spec import FilterReleaseSpec, ProxyConfirmation, WhenUnreachable
from filterrelease.core.status import (
    ConditionStatus,
    ConditionType,
    FilterReleaseStatus,
    LaggingProxy,
    ModuleVersion,
    ProxiesStatus,
)
from filterrelease.core.timestamps import seconds_since, timestamp
from filterrelease.core.tracks import CANARY, STABLE


class ProxyCheck(BaseModel):
    """How the proxies stand for one decision."""

    model_config = ConfigDict(frozen=True)
    # Nothing holds the release: every proxy confirmed, there is none to ask, or the ones
    # that cannot be read are trusted (whenUnreachable: TrustWrite).
    confirmed: bool = True
    # A proxy runs istio-agent's fallback or a version that is neither: the module did not
    # load there. On a canary pod the canary rolls back at once; elsewhere the release is
    # Degraded (a direct release) or holds (a canary whose stable pods fail).
    failed: str | None = None
    canary_failed: str | None = None
    timed_out: str | None = None  # past spec.proxyConfirmation.timeoutSeconds: who lags
    unreachable: str | None = None  # some proxies could not be read, and why
    waiting: str | None = None  # who is not there yet (while within the timeout)
    status: ProxiesStatus | None = None


def settings(obs: Observation) -> ProxyConfirmation:
    spec = obs.spec
    return spec.proxy_confirmation if isinstance(spec, FilterReleaseSpec) else ProxyConfirmation()


def _versions(ctx: Context) -> dict[str, ModuleVersion]:
    found = {ctx.desired.config_hash: ctx.desired}
    if ctx.stable is not None:
        found[ctx.stable.config_hash] = ctx.stable
    return found


def layout_key(stable: str, canary: str = "", on_canary: int = 0) -> str:
    """Names a layout by its plugins' contents and the pods on the canary one."""
    return f"{stable[:12]}/{canary[:12]}/{on_canary}"


def target_key(ctx: Context) -> str:
    """Names the live layout the proxies should run: the content on each plugin, and how many
    pods are on the canary one. A new key starts a new wait. Once the layout converged it is
    the target's."""
    layout = ctx.layout
    stable = layout.stable.content if layout.stable else ""
    canary = layout.canary.content if layout.canary else ""
    on_canary = sum(1 for v in layout.pods.values() if v == CANARY) if layout.canary else 0
    return layout_key(stable, canary, on_canary)


def proxy_needs(obs: Observation, ctx: Context | None) -> dict[str, Expected]:
    """Each selected proxy → what it should run now: the version of the live plugin that
    selects its pod (as istiod computes it from the live WasmPlugins and track labels). A pod
    no plugin or two select, or whose plugin carries a version not in play, is left out."""
    if ctx is None or not obs.sidecars:
        return {}
    versions = _versions(ctx)
    layout = ctx.layout
    stable_name, canary_name = stable_plugin_name(obs.release), canary_plugin_name(obs.release)
    wants: dict[str, Expected] = {}
    for pod in sorted(obs.sidecars):
        track = layout.pods.get(pod)
        plugins = [
            (name, role, state)
            for name, role, state in (
                (stable_name, STABLE, layout.stable),
                (canary_name, CANARY, layout.canary),
            )
            if state is not None
            and (track == CANARY if role == CANARY else not state.narrowed or track == STABLE)
        ]
        if len(plugins) != 1:
            continue
        name, role, state = plugins[0]
        version = versions.get(state.content)
        if version is None:
            continue
        other = canary_name if name == stable_name else stable_name
        wants[pod] = expected(name, other, role, version)
    return wants


def layout_held(check: ProxyCheck) -> bool:
    """Whether the next layout change waits: some proxy still runs what it ran before the last
    one (a change seen out of order by the control plane could leave it with no filter or
    two). Proxies that failed or cannot be read do not hold it, nor does a wait past the
    timeout."""
    status = check.status
    return status is not None and status.pending > 0 and not check.timed_out


def check_proxies(obs: Observation, ctx: Context | None) -> ProxyCheck:
    wants = proxy_needs(obs, ctx)
    if ctx is None or not wants:
        return ProxyCheck()
    known = {w.checksum or "": w for w in wants.values()}
    checks: dict[str, tuple[Expected, PodCheck]] = {}
    for pod, want in wants.items():
        reading = obs.proxies.get(pod) or ProxyReading(error="not read yet")
        checks[pod] = (want, check_pod(want, reading, known))
    return _judged(obs, ctx, checks)


def _judged(
    obs: Observation, ctx: Context, checks: dict[str, tuple[Expected, PodCheck]]
) -> ProxyCheck:
    conf = settings(obs)
    by: dict[Verdict, list[str]] = {v: [] for v in Verdict}
    for pod, (_, check) in checks.items():
        by[check.verdict].append(pod)
    lagging = tuple(
        LaggingProxy(pod=pod, wants=want.version, runs=check.runs)
        for pod, (want, check) in checks.items()
        if check.verdict is not Verdict.CONFIRMED
    )
    confirmed = by[Verdict.CONFIRMED]
    key = target_key(ctx)
    before = obs.status.proxies
    same_wait = before is not None and before.target == key
    waiting_since = (
        before.waiting_since if same_wait and before and before.waiting_since else None
    ) or timestamp(obs.now)
    all_confirmed = len(confirmed) == len(checks)
    confirmed_at = None
    if all_confirmed:
        confirmed_at = (before.confirmed_at if same_wait and before else None) or timestamp(obs.now)
    on_canary = sum(1 for p in confirmed if checks[p][0].track == CANARY)
    status = ProxiesStatus(
        ready=f"{len(confirmed)}/{len(checks)}",
        total=len(checks),
        confirmed=len(confirmed),
        stable=len(confirmed) - on_canary,
        canary=on_canary,
        pending=len(by[Verdict.PENDING]),
        fallback=len(by[Verdict.FALLBACK]),
        unknown=len(by[Verdict.UNKNOWN]),
        unreachable=len(by[Verdict.UNREACHABLE]),
        lagging=lagging[:MAX_LAGGING_SHOWN],
        target=key,
        waiting_since=waiting_since,
        confirmed_at=confirmed_at,
    )
    if all_confirmed:
        return ProxyCheck(status=status)
    failed = by[Verdict.FALLBACK] + by[Verdict.UNKNOWN]
    if failed:
        on_canary_track = [p for p in failed if checks[p][0].track == CANARY]
        return ProxyCheck(
            confirmed=False,
            failed=_who(failed, checks),
            canary_failed=_who(on_canary_track, checks) if on_canary_track else None,
            status=status,
        )
    unreachable = by[Verdict.UNREACHABLE]
    trusted = conf.when_unreachable_for(ctx.canary is not None) is WhenUnreachable.TRUST_WRITE
    if unreachable and not by[Verdict.PENDING] and trusted:
        return ProxyCheck(unreachable=_who(unreachable, checks), status=status)
    waited = seconds_since(waiting_since, obs.now)
    who = _who(by[Verdict.PENDING] + unreachable, checks)
    if waited > conf.timeout_seconds:
        timed_out = f"not converged after {conf.timeout_seconds}s: {who}"
        return ProxyCheck(confirmed=False, timed_out=timed_out, status=status)
    return ProxyCheck(
        confirmed=False,
        waiting=who,
        unreachable=_who(unreachable, checks) if unreachable else None,
        status=status,
    )


def _who(pods: list[str], checks: dict[str, tuple[Expected, PodCheck]]) -> str:
    shown = [f"{p} runs {checks[p][1].runs} (wants {checks[p][0].version})" for p in pods[:3]]
    more = f" and {len(pods) - 3} more" if len(pods) > 3 else ""
    return f"{len(pods)} of {len(checks)} proxies: " + "; ".join(shown) + more


def next_look(check: ProxyCheck) -> float | None:
    """When to read the proxies again: soon while they converge, seldom once timed out."""
    if check.confirmed:  # trusted unreachable proxies are read again at the next resync
        return None
    return 5.0 if check.timed_out or check.failed else 0.5


def with_proxies(
    status: FilterReleaseStatus, obs: Observation, check: ProxyCheck
) -> FilterReleaseStatus:
    """status.proxies and the ProxiesConfirmed condition, when there were proxies to check."""
    if check.status is None:
        return status
    flag: ConditionStatus
    if check.confirmed and not check.unreachable:
        flag, reason, message = (
            "True",
            "Confirmed",
            f"{check.status.ready} proxies run their version",
        )
    elif check.confirmed:
        flag, reason = "Unknown", "ConfirmationUnavailable"
        message = (
            f"trusting the written WasmPlugins (whenUnreachable: TrustWrite): {check.unreachable}"
        )
    elif check.failed:
        flag, reason, message = "False", "ProxyFallback", f"module not loaded: {check.failed}"
    elif check.timed_out:
        flag, reason, message = "False", "ProxiesNotConverged", check.timed_out
    else:
        flag, reason = "False", "ProxiesConverging"
        message = f"waiting for {check.waiting}"
        if check.unreachable:
            flag, reason = "Unknown", "ConfirmationUnavailable"
            message = f"cannot read {check.unreachable} (whenUnreachable: Hold)"
    status = with_condition(
        status, obs, ConditionType.PROXIES_CONFIRMED, flag, reason=reason, message=message
    )
    return status.model_copy(update={"proxies": check.status})
