"""A bounded load generator that sends requests through a workload's sidecars like a Service.

    gen = LoadGenerator(
        workdir_endpoints(agent_workdir, "shop", pods=["web-1", "web-2"]),
        rate=20, count=200,
    )
    result = gen.run()            # blocks; or gen.start() ... gen.wait()
    result.responses[("shop", "web-1")][200]

Requests go round-robin over the workload's pods (each pod's sidecar listens on
127.0.0.1:<port>, the port read from `<workdir>/<namespace>/<pod>/port`), paced at `rate`
requests per second for the whole workload, and stop by themselves after `count` requests or
`duration` seconds, whichever comes first; both are capped (MAX_COUNT, MAX_DURATION_S). The set
of pods is looked up again every `refresh_interval` seconds, so pods that come or go during a
run gain or lose traffic as they would behind a Service. Only loopback is ever dialled.

Stdlib only: worker threads with keep-alive http.client connections (one per worker and pod).

As a process of its own (a client outside the mesh, not sharing the GIL with the agent), with
the result as JSON (LoadResult.summary()) in --out when it ends, also on SIGTERM/SIGINT:

    PYTHONPATH=testbed python -m meshtraffic.loadgen --workdir AGENT_DIR --namespace shop \
        --selector app=web --rate 100 --duration 30 --out result.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.processes import StartStop
from meshtraffic.podfiles import POD_JSON, PORT_FILE, read_port, walk_pod_dirs

LOOPBACK = "127.0.0.1"
MAX_COUNT = 100_000
MAX_DURATION_S = 600.0
MAX_RATE = 2_000.0
MAX_CONCURRENCY = 64


@dataclass(frozen=True, order=True)
class Endpoint:
    """One pod's sidecar listener."""

    namespace: str
    pod: str
    port: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.pod)


@dataclass(frozen=True)
class Response:
    """What one request got back, as handed to the per-response callback."""

    endpoint: Endpoint
    seq: int
    status: int
    headers: dict[str, str]
    body: bytes
    latency_s: float


@dataclass
class LoadResult:
    """Counts of one run, per pod (namespace, pod)."""

    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    # (namespace, pod) -> response code -> count
    responses: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    # (namespace, pod) -> error type (e.g. "ConnectionRefusedError") -> count
    errors: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    # Requests that found no pod to go to (the workload had no endpoint at that moment).
    no_endpoint: int = 0
    started_at: float = 0.0  # wall clock (time.time()) of the first request
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_responses(self) -> int:
        return sum(sum(codes.values()) for codes in self.responses.values())

    @property
    def total_errors(self) -> int:
        return sum(sum(errs.values()) for errs in self.errors.values())

    def by_code(self) -> dict[int, int]:
        """Response code -> count over all pods."""
        out: dict[int, int] = {}
        for codes in self.responses.values():
            for code, n in codes.items():
                out[code] = out.get(code, 0) + n
        return out

    def latency_ms(self, quantile: float) -> float | None:
        """A latency quantile (nearest rank) in milliseconds; None without latencies."""
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        rank = min(len(ordered), max(1, math.ceil(quantile * len(ordered))))
        return ordered[rank - 1] * 1000

    def summary(self) -> dict[str, Any]:
        """The run in plain JSON types (what the CLI writes)."""
        errors: dict[str, int] = {}
        for errs in self.errors.values():
            for kind, n in errs.items():
                errors[kind] = errors.get(kind, 0) + n
        return {
            "sent": self.total_sent,
            "responses": self.total_responses,
            "by_code": {str(code): n for code, n in sorted(self.by_code().items())},
            "errors": errors,
            "no_endpoint": self.no_endpoint,
            "started_at": self.started_at,
            "elapsed_s": self.elapsed_s,
            "pods": len(self.sent),
            "latency_ms": {
                name: self.latency_ms(q)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
        }


EndpointSource = Callable[[], list[Endpoint]]


def workdir_endpoints(
    workdir: Path,
    namespace: str,
    *,
    pods: Iterable[str] | None = None,
    selector: Mapping[str, str] | None = None,
    list_pods: Callable[[str, Mapping[str, str]], Iterable[str]] | None = None,
) -> EndpointSource:
    """Endpoints of a workload from the agent's pod directories.

    Which pods belong to it: `pods` by name; or `selector` (matchLabels) resolved by
    `list_pods(namespace, selector)` (e.g. `kubectl get pods -l ... --field-selector
    status.phase=Running`); or, without list_pods, `selector` matched against the labels in
    each pod directory's pod.json. A pod without a `port` file (sidecar not up) is left out.
    """
    fixed = None if pods is None else list(pods)
    if fixed is None and selector is None:
        raise ValueError("give pods or a selector")

    def names() -> list[str]:
        if fixed is not None:
            return fixed
        assert selector is not None
        if list_pods is not None:
            return list(list_pods(namespace, selector))
        return [
            d.name
            for d in walk_pod_dirs(workdir, marker=PORT_FILE)
            if d.namespace == namespace and _labels_match(d.file(POD_JSON), selector)
        ]

    def source() -> list[Endpoint]:
        out = []
        for name in names():
            port = read_port(Path(workdir) / namespace / name / PORT_FILE)
            if port is not None:
                out.append(Endpoint(namespace, name, port))
        return sorted(out)

    return source


def static_endpoints(endpoints: Iterable[Endpoint]) -> EndpointSource:
    fixed = sorted(endpoints)
    return lambda: list(fixed)


def _labels_match(pod_json: Path, selector: Mapping[str, str]) -> bool:
    try:
        labels = json.loads(pod_json.read_text()).get("metadata", {}).get("labels") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return all(labels.get(k) == v for k, v in selector.items())


class LoadGenerator(StartStop):
    """Paced, bounded HTTP load over a workload's endpoints; see the module docstring.

    `on_response` is called from worker threads for every response (not for connection
    errors), after it is counted; it must be quick and thread-safe. An exception it raises is
    counted in `errors` as "callback:<type>". `body`, if any, goes with every request (with
    its Content-Length), e.g. for POST load of a given request size.
    """

    def __init__(
        self,
        endpoints: EndpointSource,
        *,
        rate: float,
        count: int | None = None,
        duration: float | None = None,
        path: str = "/",
        method: str = "GET",
        body: bytes = b"",
        host: str | None = None,
        headers: Mapping[str, str] | None = None,
        concurrency: int = 4,
        timeout: float = 5.0,
        refresh_interval: float = 1.0,
        on_response: Callable[[Response], Any] | None = None,
        keep_latencies: bool = True,
    ) -> None:
        if count is None and duration is None:
            raise ValueError("give count or duration (or both): the load must stop by itself")
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE:g}] requests per second")
        if count is not None and not 0 <= count <= MAX_COUNT:
            raise ValueError(f"count must be in [0, {MAX_COUNT}]")
        if duration is not None and not 0 <= duration <= MAX_DURATION_S:
            raise ValueError(f"duration must be in [0, {MAX_DURATION_S:g}] seconds")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in [1, {MAX_CONCURRENCY}]")
        self._endpoints = endpoints
        self.rate = rate
        self.count = count
        self.duration = duration if duration is not None else MAX_DURATION_S
        self.path = path
        self.method = method
        self.body = body
        self.host = host
        self.headers = dict(headers or {})
        self.concurrency = concurrency
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self.on_response = on_response
        self.keep_latencies = keep_latencies
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._queue: queue.Queue[tuple[int, Endpoint] | None] = queue.Queue(maxsize=concurrency * 2)
        self._threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None
        self._done = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> LoadResult:
        """Send the load and return the counts when it has stopped by itself."""
        self.start()
        return self.wait()

    def start(self) -> None:
        if self._scheduler is not None:
            raise RuntimeError("a LoadGenerator can be started only once")
        for i in range(self.concurrency):
            t = threading.Thread(target=self._worker, name=f"loadgen-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._scheduler = threading.Thread(target=self._schedule, name="loadgen", daemon=True)
        self._scheduler.start()

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Wait until the run is over (all answers in); the result so far on timeout."""
        limit = self.duration + self.timeout + 10 if timeout is None else timeout
        self._done.wait(limit)
        return self.result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def stop(self) -> None:
        """Stop early (or confirm the end); waits for in-flight requests. Idempotent."""
        self._cancel.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=self.timeout + 5)
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    # -- internals -------------------------------------------------------------------------

    def _schedule(self) -> None:
        interval = 1.0 / self.rate
        t0 = time.monotonic()
        end = t0 + self.duration
        self.result.started_at = time.time()
        endpoints: list[Endpoint] = []
        next_refresh = t0
        rr = 0
        seq = 0
        try:
            while not self._cancel.is_set():
                if self.count is not None and seq >= self.count:
                    break
                due = t0 + seq * interval
                now = time.monotonic()
                if due >= end or now >= end:
                    break
                if due > now and self._cancel.wait(due - now):
                    break
                if time.monotonic() >= next_refresh:
                    try:
                        endpoints = self._endpoints()
                    except Exception as exc:  # keep the previous set; report once per refresh
                        print(f"meshtraffic: endpoint lookup failed: {exc!r}", flush=True)
                    next_refresh = time.monotonic() + self.refresh_interval
                seq += 1
                if not endpoints:
                    with self._lock:
                        self.result.no_endpoint += 1
                    continue
                endpoint = endpoints[rr % len(endpoints)]
                rr += 1
                with self._lock:
                    self.result.sent[endpoint.key] = self.result.sent.get(endpoint.key, 0) + 1
                # Blocks while every worker is busy: the achieved rate then falls below `rate`.
                while not self._cancel.is_set():
                    try:
                        self._queue.put((seq, endpoint), timeout=0.2)
                        break
                    except queue.Full:
                        continue
        finally:
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join(timeout=self.timeout + 5)
            self.result.elapsed_s = time.monotonic() - t0
            self._done.set()

    def _worker(self) -> None:
        connections: dict[Endpoint, http.client.HTTPConnection] = {}
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                seq, endpoint = item
                self._one(connections, seq, endpoint)
        finally:
            for conn in connections.values():
                conn.close()

    def _one(
        self, connections: dict[Endpoint, http.client.HTTPConnection], seq: int, ep: Endpoint
    ) -> None:
        conn = connections.get(ep)
        if conn is None:
            conn = connections[ep] = http.client.HTTPConnection(
                LOOPBACK, ep.port, timeout=self.timeout
            )
        headers = {"x-loadgen-seq": str(seq), **self.headers}
        if self.host:
            headers["Host"] = self.host
        t = time.monotonic()
        try:
            # http.client adds Content-Length for a body (and none for an empty GET).
            conn.request(self.method, self.path, body=self.body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except Exception as exc:
            conn.close()
            connections.pop(ep, None)
            self._count_error(ep, type(exc).__name__)
            return
        latency = time.monotonic() - t
        if resp.will_close:
            conn.close()
            connections.pop(ep, None)
        with self._lock:
            codes = self.result.responses.setdefault(ep.key, {})
            codes[resp.status] = codes.get(resp.status, 0) + 1
            if self.keep_latencies:
                self.result.latencies_s.append(latency)
        if self.on_response is not None:
            headers_in = {k.lower(): v for k, v in resp.getheaders()}
            try:
                self.on_response(Response(ep, seq, resp.status, headers_in, body, latency))
            except Exception as exc:
                self._count_error(ep, f"callback:{type(exc).__name__}")

    def _count_error(self, ep: Endpoint, kind: str) -> None:
        with self._lock:
            errs = self.result.errors.setdefault(ep.key, {})
            errs[kind] = errs.get(kind, 0) + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshtraffic.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, required=True, help="the mesh agent's workdir")
    parser.add_argument("--namespace", required=True)
    parser.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pod label to match in pod.json (repeatable)",
    )
    parser.add_argument("--pod", action="append", default=[], help="a pod by name (repeatable)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--count", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--path", default="/")
    parser.add_argument("--out", type=Path, help="where to write the JSON result (else stdout)")
    args = parser.parse_args(argv)
    selector = dict(item.split("=", 1) for item in args.selector)
    endpoints = workdir_endpoints(
        args.workdir, args.namespace, pods=args.pod or None, selector=selector or None
    )
    gen = LoadGenerator(
        endpoints,
        rate=args.rate,
        count=args.count,
        duration=args.duration,
        path=args.path,
        concurrency=args.concurrency,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    gen.start()
    while not gen.done:
        if stop.wait(0.2):
            gen.stop()  # the result so far, counted up to the requests in flight
            break
    text = json.dumps(gen.wait().summary(), indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(args.out)  # a reader never sees half a result
    return 0


if __name__ == "__main__":
    sys.exit(main())
