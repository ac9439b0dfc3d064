"""The FilterRelease spec as typed models, parsed once from the object body.

The CRD's schema and CEL rules reject most bad input at the API server; these models are the
operator's own line of defence for what gets past them (a CRD older or newer than the operator, a
hand-edited object) and for the rules only the operator can check. Unknown fields are an error, so
nothing in a spec is ever silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from filterrelease.core.analysis_spec import AnalysisSpec, Metric, step_analysis_problem
from filterrelease.core.duration import parse_duration
from filterrelease.core.hooks import Webhooks
from filterrelease.core.tracks import TRACK_PREFIX, is_reserved


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class Phase(StrEnum):
    UNSPECIFIED = "UNSPECIFIED_PHASE"
    AUTHN = "AUTHN"
    AUTHZ = "AUTHZ"
    STATS = "STATS"


class FailStrategy(StrEnum):
    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class PluginType(StrEnum):
    HTTP = "HTTP"
    NETWORK = "NETWORK"


class Selector(_Model):
    match_labels: dict[str, str] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_reserved_label(self) -> Selector:
        if any(is_reserved(k) for k in self.match_labels):
            raise ValueError(
                f"matchLabels must not use {TRACK_PREFIX}* labels: the operator sets them to "
                "split pods between the stable and the canary version"
            )
        return self


class TargetRef(_Model):
    group: str = ""
    kind: str
    name: str


class Port(_Model):
    number: int = Field(ge=1, le=65535)


class TrafficMatch(_Model):
    mode: Literal["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"] | None = None
    ports: tuple[Port, ...] = ()


class Module(_Model):
    url: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[a-f0-9]{64}$")
    image_pull_policy: Literal["IfNotPresent", "Always"] | None = None
    image_pull_secret: str | None = None
    plugin_name: str | None = None

    @property
    def is_oci(self) -> bool:
        return self.url.startswith("oci://")

    @model_validator(mode="after")
    def _url_rules(self) -> Module:
        if not self.url.startswith(("oci://", "https://", "http://")):
            raise ValueError("module.url must start with oci://, https:// or http://")
        if not self.is_oci and (self.image_pull_secret or self.image_pull_policy):
            raise ValueError("imagePullSecret and imagePullPolicy only apply to oci:// modules")
        if self.sha256 and "@sha256:" in self.url and not self.url.endswith(self.sha256):
            raise ValueError("module.sha256 must equal the digest pinned in module.url")
        return self


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: Literal["INLINE", "HOST"] | None = None


class VmConfig(_Model):
    env: tuple[EnvVar, ...] = ()


_DURATION = r"^([0-9]+(ms|s|m|h))+$"


class Pause(_Model):
    duration: str | None = Field(default=None, pattern=_DURATION)

    @property
    def seconds(self) -> float | None:
        return parse_duration(self.duration).total_seconds() if self.duration else None


# The analysis' models live with its evaluator (core/analysis.py).
Analysis = AnalysisSpec


class Step(_Model):
    set_weight: Annotated[int, Field(ge=1, le=100)] | None = None
    pause: Pause | None = None
    analysis: Analysis | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        if sum(x is not None for x in (self.set_weight, self.pause, self.analysis)) != 1:
            raise ValueError("each canary step must have exactly one of setWeight, pause, analysis")
        return self


class MetricsOutage(_Model):
    """What to do while the analysis cannot measure (Prometheus unreachable, a query erroring):
    hold the step (neither promote nor roll back), and optionally roll back past a duration."""

    action: Literal["Hold", "Rollback"] = "Hold"
    after: str = Field(default="10m", pattern=_DURATION)

    @property
    def after_seconds(self) -> float:
        return parse_duration(self.after).total_seconds()


class Waves(_Model):
    """Roll a selector that covers several workloads out one workload at a time: the pods are
    grouped by the value of a label (e.g. `app`), and the steps run on each group in turn (in
    the order of the values), the groups done staying on the new version."""

    by_label: str = Field(min_length=1, max_length=316)


class Canary(_Model):
    steps: tuple[Step, ...] = Field(min_length=1)
    waves: Waves | None = None
    analysis: Analysis | None = None
    # Wasm fast-fail (failed module fetches, VM failures, a broken filter's log lines on the
    # canary pods) runs for the whole rollout unless turned off: it is what catches the failures
    # a WasmPlugin change causes that are not in request metrics yet.
    wasm_fast_fail: bool = True
    metrics_outage: MetricsOutage = MetricsOutage()
    webhooks: Webhooks = ()


class Strategy(_Model):
    canary: Canary | None = None


class WhenUnreachable(StrEnum):
    """What a release does when a selected proxy's admin cannot be read (no pods/portforward
    permission, a proxy without an admin port)."""

    HOLD = "Hold"  # not Ready, a canary step does not pass: only proof counts
    TRUST_WRITE = "TrustWrite"  # counts the written WasmPlugins as released (Istio's own view)


class ProxyConfirmation(_Model):
    """How the release confirms that the selected proxies run a version (core/confirmation.py)."""

    # Past this, the release says which proxies have not converged (ProxiesNotConverged): a
    # direct release is Degraded, a canary holds (its progress deadline rolls it back).
    timeout_seconds: int = Field(default=120, ge=5, le=3600)
    # None: Hold for a release with a canary strategy, TrustWrite for one without.
    when_unreachable: WhenUnreachable | None = None

    def when_unreachable_for(self, canary: bool) -> WhenUnreachable:
        if self.when_unreachable is not None:
            return self.when_unreachable
        return WhenUnreachable.HOLD if canary else WhenUnreachable.TRUST_WRITE


class FilterReleaseSpec(_Model):
    selector: Selector | None = None
    target_refs: tuple[TargetRef, ...] | None = None
    phase: Phase = Phase.UNSPECIFIED
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)
    fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE
    type: PluginType = PluginType.HTTP
    match: tuple[TrafficMatch, ...] = ()
    module: Module
    plugin_config: dict[str, Any] | None = None
    vm_config: VmConfig | None = None
    progress_deadline_seconds: int = Field(default=600, ge=10, le=86400)
    proxy_confirmation: ProxyConfirmation = ProxyConfirmation()
    strategy: Strategy | None = None
    # How many good versions status.history keeps whole, for undo.
    revision_history_limit: int = Field(default=5, ge=1, le=10)

    @model_validator(mode="after")
    def _one_target(self) -> FilterReleaseSpec:
        if (self.selector is None) == (self.target_refs is None):
            raise ValueError("exactly one of selector or targetRefs must be set")
        if self.canary is not None and self.selector is None:
            raise ValueError(
                "a canary strategy needs spec.selector: the canary moves pods between versions "
                "by label, which targetRefs cannot express"
            )
        return self

    @property
    def canary(self) -> Canary | None:
        return self.strategy.canary if self.strategy else None


class SpecError(BaseModel):
    """Why a spec cannot be released, in sentences a person can act on."""

    model_config = ConfigDict(frozen=True)
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


def _location(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{to_camel(str(part))}"
    return path


def parse_spec(raw: object) -> FilterReleaseSpec | SpecError:
    """Parse a FilterRelease's spec, or say everything that is wrong with it."""
    try:
        spec = FilterReleaseSpec.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            loc = tuple(
                p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function"))
            )
            msg = str(e["msg"]).removeprefix("Value error, ")
            problems.append(f"{_location(loc)}: {msg}")
        return SpecError(problems=tuple(problems))
    canary = spec.canary
    if canary is not None:
        for i, step in enumerate(canary.steps):
            # With templates, the check waits for their metrics (expand_templates).
            analysis = step.analysis
            if (
                analysis
                and not analysis.templates
                and (problem := step_analysis_problem(analysis.metrics))
            ):
                return SpecError(problems=(f"spec.strategy.canary.steps[{i}].analysis: {problem}",))
    return spec


def referenced_templates(spec: FilterReleaseSpec) -> tuple[str, ...]:
    """The AnalysisTemplates a spec's canary analyses name, in order, once each."""
    canary = spec.canary
    if canary is None:
        return ()
    analyses = [s.analysis for s in canary.steps] + [canary.analysis]
    names = [t.name for a in analyses if a is not None for t in a.templates]
    return tuple(dict.fromkeys(names))


# A template's metrics, or why it cannot be used (not found, unreadable).
TemplateMetrics = tuple[Metric, ...] | str


def expand_templates(
    spec: FilterReleaseSpec, templates: Mapping[str, TemplateMetrics]
) -> FilterReleaseSpec | SpecError:
    """The spec with every analysis' templates replaced by their metrics (template metrics
    first, in the order named, then the inline ones), so the rest of the operator sees inline
    metrics only. A template that is missing or unreadable, or a metric name used twice, makes
    the spec unusable as a whole: no analysis runs with part of its metrics."""
    canary = spec.canary
    if canary is None:
        return spec
    problems: list[str] = []

    def expand(where: str, analysis: Analysis | None) -> Analysis | None:
        if analysis is None or not analysis.templates:
            return analysis
        metrics: list[Metric] = []
        for ref in analysis.templates:
            found = templates.get(ref.name, f"AnalysisTemplate {ref.name!r} was not looked up")
            if isinstance(found, str):
                problems.append(f"{where}.templates: {found}")
                continue
            metrics.extend(found)
        metrics.extend(analysis.metrics)
        names = [m.name for m in metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(
                f"{where}: metric name(s) {', '.join(twice)} used more than once "
                "across its templates and inline metrics"
            )
            return analysis
        return Analysis(metrics=tuple(metrics))

    steps = []
    for i, step in enumerate(canary.steps):
        where = f"spec.strategy.canary.steps[{i}].analysis"
        expanded = expand(where, step.analysis)
        if expanded is not None and (problem := step_analysis_problem(expanded.metrics)):
            problems.append(f"{where}: {problem}")
        steps.append(step.model_copy(update={"analysis": expanded}))
    background = expand("spec.strategy.canary.analysis", canary.analysis)
    if problems:
        return SpecError(problems=tuple(problems))
    new_canary = canary.model_copy(update={"steps": tuple(steps), "analysis": background})
    strategy = Strategy(canary=new_canary)
    return spec.model_copy(update={"strategy": strategy})
