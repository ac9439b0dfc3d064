"""Module pre-flight: before a version reaches any WasmPlugin, prove Istio can fetch and load it.

Resolve the reference to a manifest digest and pin it; check the image layout against Istio's
rules; fetch the module and check it is a proxy-wasm binary; honour the pull secret. The rules are
pure (core.module); this shell does the fetching. Verified digests are kept in memory, so a
resync, or a second release of the same module, does not download it again; the resolution of a
tag is kept in the release's status, so resyncs do not even ask the registry what it points at.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from filterrelease.core.module import (
    ModuleFailure,
    ModuleProblem,
    Reason,
    VerifiedModule,
    check_digest,
    check_wasm,
    choose_layer,
    dry_run_key,
    extract_plugin,
    parse_oci,
    reusable_resolution,
    sha256_hex,
)
from filterrelease.core.spec import Module
from filterrelease.kube.api import KubeError
from filterrelease.ports import DryRun, SecretReader
from filterrelease.providers.registry import (
    MAX_MODULE_BYTES,
    Credentials,
    RegistryClient,
    credentials_for,
)
from filterrelease.telemetry import Metrics

DOCKERCONFIGJSON = ".dockerconfigjson"


# Modules kept in memory after verification (about 2 MB each), for dry runs with a new config.
MODULE_CACHE_SIZE = 32
# Dry runs at once: each is CPU-bound (a V8 compile, or a plugin's proxy_on_configure). They
# get threads of their own, so that however many wait, the kube calls and registry fetches of
# reconciles that need no dry run (asyncio's default threads) are never queued behind them.
DRY_RUN_THREADS = 2


class Preflight:
    def __init__(
        self,
        kube: SecretReader,
        registry: RegistryClient,
        metrics: Metrics,
        dry_run: DryRun | None = None,
    ) -> None:
        self._kube = kube
        self._registry = registry
        self._metrics = metrics
        self._dry_run = dry_run
        self._dry_run_threads = ThreadPoolExecutor(DRY_RUN_THREADS, thread_name_prefix="dry-run")
        # manifest digest (oci) or module sha256 (http) -> (layout, abi) of a verified module
        self._verified: dict[str, tuple[str, str]] = {}
        # (manifest digest, (registry, repository, (namespace, pull secret) or None for
        # anonymous)) that a registry served the manifest to: a pinned module is only taken as
        # fetchable by a release whose own credentials (or none) were seen to work for it,
        # from that same repository.
        self._pulled: set[tuple[str, tuple[str, str, tuple[str, str] | None]]] = set()
        self._modules: OrderedDict[str, bytes] = OrderedDict()
        # (sha256, pluginConfig as passed) -> the dry run's verdict (None: it ran fine)
        self._dry_runs: dict[tuple[str, str], ModuleProblem | None] = {}
        # The dry runs under way: a release asking for the same one waits for it (a restart
        # reconciles every release at once, and many share a module and config).
        self._running: dict[tuple[str, str], asyncio.Task[ModuleProblem | None]] = {}

    async def verify(
        self,
        namespace: str,
        module: Module,
        plugin_config: dict[str, Any] | None,
        generation: int,
        previous: VerifiedModule | None,
    ) -> VerifiedModule | ModuleFailure:
        """Verify the module of one release; transient registry trouble is a failure too,
        with reason RegistryUnavailable, which the state machine treats as 'hold and retry'."""
        reuse = reusable_resolution(module, generation, previous)
        try:
            if module.is_oci:
                verified = await self._verify_oci(namespace, module, generation, reuse)
            else:
                verified = await self._verify_http(module, generation, reuse)
            if self._dry_run is not None:
                key = await self._dry_run_check(
                    namespace, module, verified, plugin_config, previous
                )
                verified = verified.model_copy(update={"dry_run": True, "dry_run_config": key})
        except ModuleProblem as problem:
            self._metrics.preflights.labels(problem.reason.value).inc()
            return ModuleFailure(reason=problem.reason, message=problem.message)
        self._metrics.preflights.labels("Verified").inc()
        return verified

    async def _verify_oci(
        self, namespace: str, module: Module, generation: int, reuse: VerifiedModule | None
    ) -> VerifiedModule:
        ref = parse_oci(module.url)
        if reuse is not None:
            ref = ref.model_copy(update={"digest": "sha256:" + reuse.sha256})
        # Who pulls: anonymous pulls work for every namespace, a pull secret only for the
        # releases that name it. A module verified with one namespace's secret says nothing
        # about whether another release's proxies (another secret, or none) may pull it.
        # The same module may sit in a public registry and in a private one: what was pulled
        # from one says nothing about the other either.
        secret = (namespace, module.image_pull_secret) if module.image_pull_secret else None
        access = (ref.registry, ref.repository, secret)
        if (
            ref.digest
            and ref.digest.removeprefix("sha256:") in self._verified
            and (ref.digest.removeprefix("sha256:"), access) in self._pulled
        ):
            digest = ref.digest  # pinned and verified before: nothing to ask the registry
        else:
            creds = await self._credentials(namespace, module, ref.registry)
            self._metrics.module_fetches.labels("manifest").inc()
            body, media_type, digest = await asyncio.to_thread(self._registry.manifest, ref, creds)
            check_digest(module.sha256, digest.removeprefix("sha256:"), "image's manifest digest")
            if digest.removeprefix("sha256:") not in self._verified:
                manifest: dict[str, Any] = json.loads(body)
                choice = choose_layer(manifest, media_type)
                self._metrics.module_fetches.labels("blob").inc()
                blob = await asyncio.to_thread(self._registry.blob, ref, choice.digest, creds)
                data = _bounded(extract_plugin(blob, choice))
                abi = check_wasm(data)
                self._verified[digest.removeprefix("sha256:")] = (choice.layout, abi)
                self._remember(digest.removeprefix("sha256:"), data)
        self._pulled.add((digest.removeprefix("sha256:"), access))
        layout, abi = self._verified[digest.removeprefix("sha256:")]
        return VerifiedModule(
            source_url=module.url,
            url=ref.pinned(digest),
            sha256=digest.removeprefix("sha256:"),
            layout=layout,
            abi=abi,
            pull_secret=module.image_pull_secret,
            generation=reuse.generation if reuse else generation,
        )

    async def _verify_http(
        self, module: Module, generation: int, reuse: VerifiedModule | None
    ) -> VerifiedModule:
        if reuse is not None and reuse.sha256 in self._verified:
            return reuse
        self._metrics.module_fetches.labels("download").inc()
        data = _bounded(await asyncio.to_thread(self._registry.download, module.url))
        sha = sha256_hex(data)
        check_digest(module.sha256, sha, "module's sha256")
        abi = check_wasm(data)
        self._verified[sha] = ("http", abi)
        self._remember(sha, data)
        # Rendering this sha256 makes Istio refuse the URL if its content ever changes.
        return VerifiedModule(
            source_url=module.url,
            url=module.url,
            sha256=sha,
            layout="http",
            abi=abi,
            generation=generation,
        )

    def _remember(self, sha256: str, data: bytes) -> None:
        self._modules[sha256] = data
        self._modules.move_to_end(sha256)
        while len(self._modules) > MODULE_CACHE_SIZE:
            evicted, _ = self._modules.popitem(last=False)
            self._verified.pop(evicted, None)  # verified again, with its bytes, when needed
            self._pulled = {p for p in self._pulled if p[0] != evicted}

    async def _dry_run_check(
        self,
        namespace: str,
        module: Module,
        verified: VerifiedModule,
        plugin_config: dict[str, Any] | None,
        previous: VerifiedModule | None = None,
    ) -> str:
        """Raise the dry run's problem, if any; the key of the config it passed with."""
        # Istio hands pluginConfig to the plugin as JSON text; no config is an empty string.
        configuration = "" if plugin_config is None else json.dumps(plugin_config)
        key = (verified.sha256, configuration)
        config_key = dry_run_key(configuration)
        if (
            key not in self._dry_runs
            and previous is not None
            and previous.dry_run
            and previous.sha256 == verified.sha256
            and previous.dry_run_config == config_key
        ):
            # The status says this module already ran with this config (before a restart).
            self._dry_runs[key] = None
        if key not in self._dry_runs:
            running = self._running.get(key)
            if running is None:
                running = asyncio.ensure_future(
                    self._run_dry_run(namespace, module, verified, configuration)
                )
                self._running[key] = running
                running.add_done_callback(lambda _: self._running.pop(key, None))
            self._dry_runs[key] = await asyncio.shield(running)
        verdict = self._dry_runs[key]
        if verdict is not None:
            raise verdict
        return config_key

    async def _run_dry_run(
        self, namespace: str, module: Module, verified: VerifiedModule, configuration: str
    ) -> ModuleProblem | None:
        assert self._dry_run is not None
        data = self._modules.get(verified.sha256)
        if data is None:  # evicted: fetch and verify it again, keeping its bytes
            self._verified.pop(verified.sha256, None)
            pinned = module.model_copy(update={"url": verified.url})
            if module.is_oci:
                await self._verify_oci(namespace, pinned, verified.generation or 0, None)
            else:
                await self._verify_http(module, verified.generation or 0, None)
            data = self._modules[verified.sha256]
        self._metrics.dry_runs.inc()
        check = self._dry_run.check
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._dry_run_threads, check, data, module.plugin_name, configuration
            )
        except ModuleProblem as problem:
            return problem
        return None

    def close(self) -> None:
        """Stop the dry run's Envoys (a pool keeps some running between checks)."""
        self._dry_run_threads.shutdown(wait=False, cancel_futures=True)
        if self._dry_run is not None:
            self._dry_run.close()

    async def _credentials(
        self, namespace: str, module: Module, registry: str
    ) -> Credentials | None:
        name = module.image_pull_secret
        if not name:
            return None
        try:
            data = await self._kube.get_secret_data(namespace, name, DOCKERCONFIGJSON)
        except KubeError as err:
            if err.retriable:
                raise ModuleProblem(Reason.REGISTRY_UNAVAILABLE, str(err)) from err
            raise ModuleProblem(
                Reason.UNAUTHORIZED, f"cannot read Secret {namespace}/{name}: {err.message}"
            ) from err
        if data is None:
            raise ModuleProblem(
                Reason.UNAUTHORIZED,
                f"Secret {namespace}/{name} (spec.module.imagePullSecret) does not exist or has "
                f"no {DOCKERCONFIGJSON} key",
            )
        creds = credentials_for(data, registry)
        if creds is None:
            raise ModuleProblem(
                Reason.UNAUTHORIZED,
                f"Secret {namespace}/{name} has no credentials for registry {registry}",
            )
        return creds


def _bounded(module: bytes) -> bytes:
    if len(module) > MAX_MODULE_BYTES:
        raise ModuleProblem(
            Reason.INVALID_MODULE, f"the module is larger than {MAX_MODULE_BYTES} bytes"
        )
    return module
