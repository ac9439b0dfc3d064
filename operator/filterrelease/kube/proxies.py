"""Reads what each selected proxy runs from its Envoy admin, through the API server.

As `istioctl proxy-config ecds` does: a port-forward (pods/portforward, the only permission
this needs) to the istio-proxy container's admin port 15000, one GET of the config dump's ECDS
part, parsed by core/proxies.py. Never around the API server: the operator needs no network
path to the pods.

Cost is bounded: at most `concurrency` port-forwards at once, each with a deadline; a proxy that
confirmed a version is remembered by (pod uid, plugin, version) and not asked again for it, so a
resync of a confirmed release reads no proxy. A pod asked for another version is read again;
past REMEMBERED_PROXIES the least recently used entries (pods long gone) are dropped.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from filterrelease.core.proxies import (
    ADMIN_PORT,
    ECDS_DUMP_PATH,
    Expected,
    ProxyReading,
    Verdict,
    check_pod,
    parse_ecds_dump,
)

log = logging.getLogger(__name__)

_MAX_DUMP_BYTES = 8 << 20  # a sidecar's ECDS dump is a few KiB per filter
# Confirmed proxies remembered (a few hundred bytes each): enough for every pod of a large
# cluster's selected workloads; beyond it the least recently confirmed is read again once.
REMEMBERED_PROXIES = 50_000


class ProxyAdmin:
    def __init__(
        self, api_client: client.ApiClient, *, concurrency: int = 8, timeout: float = 3.0
    ) -> None:
        self._configuration = api_client.configuration
        self._timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        # Its own threads: reads of slow proxies never hold up the API calls of reconciles,
        # which share the event loop's default executor.
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="proxy-admin")
        # (namespace, pod uid) → (plugin, config hash, the reading that confirmed it), least
        # recently used first: bounded, so pods that are gone age out.
        self._confirmed: OrderedDict[tuple[str, str], tuple[str, str, ProxyReading]] = OrderedDict()
        self.reads = 0  # port-forwards opened, for the benchmark and tests

    async def read(
        self, namespace: str, wants: Mapping[str, tuple[str, Expected]]
    ) -> dict[str, ProxyReading]:
        """pod → (uid, what it should run) in; pod → what it runs out."""
        out: dict[str, ProxyReading] = {}
        ask: list[tuple[str, str, Expected]] = []
        for pod, (uid, want) in wants.items():
            known = self._confirmed.get((namespace, uid))
            if known is not None and known[:2] == (want.plugin, want.config_hash):
                self._confirmed.move_to_end((namespace, uid))
                out[pod] = known[2]
            else:
                ask.append((pod, uid, want))
        readings = await asyncio.gather(*(self._read_one(namespace, pod) for pod, _, _ in ask))
        for (pod, uid, want), reading in zip(ask, readings, strict=True):
            out[pod] = reading
            if check_pod(want, reading).verdict is Verdict.CONFIRMED:
                self._confirmed[(namespace, uid)] = (want.plugin, want.config_hash, reading)
                self._confirmed.move_to_end((namespace, uid))
                while len(self._confirmed) > REMEMBERED_PROXIES:
                    self._confirmed.popitem(last=False)
        return out

    async def _read_one(self, namespace: str, pod: str) -> ProxyReading:
        async with self._slots:
            self.reads += 1
            loop = asyncio.get_running_loop()
            try:
                raw = await asyncio.wait_for(
                    loop.run_in_executor(self._threads, self._get, namespace, pod),
                    self._timeout + 1,
                )
            except TimeoutError:
                late = f"admin did not answer within {self._timeout:g}s"
                return ProxyReading(error=late, busy=True)
            except (ApiException, OSError, http.client.HTTPException) as exc:
                return ProxyReading(error=_why(exc))
        status, body = raw
        if status == 404:  # Envoy: "ecds_filters not found in config dump": no ECDS filter
            return ProxyReading(filters={})
        if status != 200:
            return ProxyReading(error=f"admin answered HTTP {status}")
        try:
            dump: Any = json.loads(body)
        except ValueError:
            return ProxyReading(error="admin answered something that is not JSON")
        if not isinstance(dump, dict):
            return ProxyReading(error="admin answered an unexpected config dump")
        return ProxyReading(filters=parse_ecds_dump(dump, namespace))

    def _get(self, namespace: str, pod: str) -> tuple[int, bytes]:
        # The client's portforward() swaps the ApiClient's request method while it connects:
        # each call gets its own ApiClient, so concurrent calls cannot see each other's.
        with client.ApiClient(configuration=self._configuration) as api:
            core = client.CoreV1Api(api)
            forward = portforward(
                core.connect_get_namespaced_pod_portforward,
                pod,
                namespace,
                ports=str(ADMIN_PORT),
                _request_timeout=self._timeout,
            )
            sock = forward.socket(ADMIN_PORT)
            try:
                sock.settimeout(self._timeout)
                conn = http.client.HTTPConnection("localhost", ADMIN_PORT, timeout=self._timeout)
                conn.sock = sock  # the port-forward's end of the stream
                conn.request("GET", ECDS_DUMP_PATH, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                # Read by the response's own framing: over a port-forward the end of the
                # stream is not seen when the admin closes its side.
                body = resp.read(_MAX_DUMP_BYTES)
                return resp.status, body
            finally:
                sock.close()
                forward.close()


def _why(exc: Exception) -> str:
    """A short reason, without anything from the request (no credentials)."""
    if isinstance(exc, ApiException):
        reason = str(exc.reason or "").strip()
        if "403" in reason:
            return "port-forward refused (403): the operator may not create pods/portforward"
        if "404" in reason:
            return "pod not found"
        return f"port-forward failed: {reason[:200]}"
    return f"admin not readable: {type(exc).__name__}: {str(exc)[:200]}"
