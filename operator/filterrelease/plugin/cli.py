"""`kubectl filterrelease`: the imperative shell. Parses flags, calls the cluster as the person
(their kubeconfig, their RBAC), prints what the pure modules render.

  kubectl filterrelease get [NAME] [-A] [-w] [-o json|yaml]
  kubectl filterrelease status NAME [--timeout 10m]     exit 0 Healthy, 1 Degraded, 2 timeout,
                                                        3 not found/refused/unreachable
  kubectl filterrelease promote|abort|pause|resume|retry|undo NAME
  kubectl filterrelease lint FILE|- [--offline]
  kubectl filterrelease dashboard [--port 3100] [--read-only] [--no-browser]
  kubectl filterrelease version
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from filterrelease.build import build_versions
from filterrelease.core.duration import parse_duration
from filterrelease.core.requests import Request
from filterrelease.kube.api import KubeError
from filterrelease.kube.session import Session
from filterrelease.plugin import lint, views
from filterrelease.plugin.crd import release_schema
from filterrelease.plugin.live import fold, key_of
from filterrelease.plugin.refusals import refusal
from filterrelease.plugin.wait import DEFAULT_TIMEOUT, ExitCode, State, assess

# Besides wait.ExitCode (0 Healthy, 1 Degraded, 2 timeout): the cluster could not be asked, or
# refused (RBAC, not found, unreachable).
EXIT_ERROR = 3
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: `get -w` redraws in a terminal
WATCH_SECONDS = 5  # a watch request's server-side timeout: how often `status` sees its deadline


# -- flags -------------------------------------------------------------------------------------


def _cluster_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """kubectl's own flags. Accepted before and after the subcommand; the subcommand's copies
    default to SUPPRESS so they do not overwrite what was given before it."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "-n",
        "--namespace",
        default=default(None),
        help="namespace (default: the kubeconfig context's)",
    )
    parser.add_argument("--context", default=default(None), help="kubeconfig context to use")
    parser.add_argument(
        "--kubeconfig",
        default=default(None),
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl filterrelease",
        description="Inspect and steer FilterRelease rollouts (filterrelease.dev/v1alpha1).",
    )
    _cluster_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _cluster_flags(p, top=False)
        return p

    get = command("get", "list releases, or show one as a tree")
    get.add_argument("name", nargs="?", metavar="NAME")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-w", "--watch", action="store_true", help="redraw as it changes (Ctrl-C)")
    get.add_argument("-o", "--output", choices=["json", "yaml"])

    status = command(
        "status",
        "wait until a release is Healthy (exit 0), Degraded (1) or timed out (2); 3: not found, "
        "refused or unreachable",
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        help=f"give up after this long, e.g. 90s, 15m (default {DEFAULT_TIMEOUT})",
    )

    promote = command("promote", "end the current pause or analysis step (--full: all steps)")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("--full", action="store_true", help="skip the remaining steps")
    for name, help_ in (
        ("abort", "roll the canary back now"),
        ("pause", "hold the rollout where it is"),
        ("resume", "end a manual pause, or one for an inconclusive analysis"),
        ("retry", "roll a rolled-back version out again"),
    ):
        command(name, help_).add_argument("name", metavar="NAME")
    undo = command("undo", "go back to the newest good version (or --to-revision N)")
    undo.add_argument("name", metavar="NAME")
    undo.add_argument("--to-revision", type=int, metavar="N", help="a revision of the history")

    check = command("lint", "validate FilterRelease manifests (server-side dry run or offline)")
    check.add_argument("file", metavar="FILE", help="a YAML file, or - for stdin")
    check.add_argument(
        "--offline",
        action="store_true",
        help="check against the CRD schema and the operator's rules only",
    )

    board = command("dashboard", "serve the web dashboard on this machine")
    board.add_argument("-A", "--all-namespaces", action="store_true")
    board.add_argument("--address", default="127.0.0.1")
    board.add_argument("--port", type=int, default=3100)
    board.add_argument("--read-only", action="store_true", help="no promote/abort/... buttons")
    board.add_argument("--no-browser", action="store_true", help="do not open a browser")

    sub.add_parser("version", help="print the plugin's version")
    return parser


# -- commands ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _dump(obj: Any, output: str) -> str:
    if output == "json":
        return json.dumps(obj, indent=2, sort_keys=True)
    return yaml.safe_dump(obj, sort_keys=False).rstrip()


def _as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}


def _tree(session: Session, release: dict[str, Any]) -> str:
    meta = release["metadata"]
    # Someone who may read FilterReleases but not WasmPlugins or Events still gets the tree:
    # without what they may not see.
    plugins: list[dict[str, Any]] | None
    try:
        plugins = [
            found
            for name in (release.get("status") or {}).get("wasmPlugins") or []
            if (found := session.wasm_plugin(meta["namespace"], name)) is not None
        ]
    except KubeError:
        plugins = None
    try:
        events = session.events(meta["namespace"], meta["name"])
    except KubeError:
        events = []
    return views.release_tree(release, _now(), plugins, events)


def cmd_get(session: Session, args: argparse.Namespace, namespace: str | None) -> int:
    if args.name and namespace is None:
        raise SystemExit("error: a NAME needs one namespace: drop -A, or give -n")
    if args.name:
        assert namespace is not None
        release = session.release(namespace, args.name)

        def render_one(known: dict[tuple[str, str], dict[str, Any]]) -> str | None:
            found = known.get((namespace, args.name))
            if found is None:
                return f"FilterRelease {namespace}/{args.name} was deleted"
            if args.output:
                return _dump(found, args.output)
            return _tree(session, found)

        known = {(namespace, args.name): release}
        print(render_one(known))
        if args.watch:
            _watch(session, namespace, known, render_one, only=args.name)
        return 0
    releases = session.releases(namespace)

    def render_all(known: dict[tuple[str, str], dict[str, Any]]) -> str:
        items = list(known.values())
        if args.output:
            return _dump(_as_list(items), args.output)
        return views.release_table(items, _now(), all_namespaces=namespace is None)

    known = {key_of(r): r for r in releases}
    print(render_all(known))
    if args.watch:
        _watch(session, namespace, known, render_all)
    return 0


def _watch(
    session: Session,
    namespace: str | None,
    known: dict[tuple[str, str], dict[str, Any]],
    render: Callable[[dict[tuple[str, str], dict[str, Any]]], str | None],
    only: str | None = None,
) -> None:
    """Redraw on every change until Ctrl-C: in place in a terminal; elsewhere (a pipe, a log)
    each new state after a blank line."""
    stop = threading.Event()
    redraw = sys.stdout.isatty()
    try:
        for kind, obj in session.watch_releases(namespace, stop):
            if only is not None and key_of(obj)[1] != only:
                continue
            if not fold(known, kind, obj):
                continue
            text = render(known)
            if text is None:
                continue
            print(CLEAR + text if redraw else "\n" + text, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()


def cmd_status(session: Session, args: argparse.Namespace, namespace: str) -> int:
    try:
        limit = parse_duration(args.timeout).total_seconds()
    except ValueError as err:
        raise SystemExit(f"error: --timeout: {err}") from None
    release = session.release(namespace, args.name)
    last = ""

    def report(release: dict[str, Any]) -> int | None:
        nonlocal last
        verdict = assess(release)
        if verdict.line != last:
            stamp = _now().strftime("%H:%M:%S")
            print(f"{stamp} {args.name}: {verdict.line}", flush=True)
            last = verdict.line
        return int(verdict.exit_code) if verdict.done else None

    done = report(release)
    if done is not None:
        return done
    stop = threading.Event()
    timer = threading.Timer(limit, stop.set)
    timer.daemon = True
    timer.start()
    try:
        for kind, obj in _events_of(session, namespace, args.name, stop, limit):
            if kind == "DELETED":
                print(f"error: FilterRelease {namespace}/{args.name} was deleted", file=sys.stderr)
                return EXIT_ERROR
            done = report(obj)
            if done is not None:
                return done
    finally:
        timer.cancel()
        stop.set()
    state = assess(session.release(namespace, args.name)).state
    waiting = " (paused: it waits for a person)" if state is State.PAUSED else ""
    print(f"timed out after {args.timeout}: {args.name} is not Healthy yet{waiting}")
    return int(ExitCode.TIMEOUT)


def _events_of(
    session: Session, namespace: str, name: str, stop: threading.Event, limit: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    seconds = max(1, min(WATCH_SECONDS, int(limit)))
    for kind, obj in session.watch_releases(namespace, stop, timeout=seconds):
        if stop.is_set():
            return
        if obj.get("metadata", {}).get("name") == name:
            yield kind, obj


def request_value(args: argparse.Namespace) -> str:
    """The filterrelease.dev/request annotation a request command writes."""
    if args.command == "promote":
        return str(Request.PROMOTE_FULL if args.full else Request.PROMOTE)
    if args.command == "undo":
        return "undo" if args.to_revision is None else f"undo:{args.to_revision}"
    return str(Request(args.command))


def cmd_request(session: Session, args: argparse.Namespace, namespace: str) -> int:
    value = request_value(args)
    session.request(namespace, args.name, value)
    print(f"filterrelease '{args.name}' {value} requested")
    return 0


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def cmd_lint(args: argparse.Namespace, namespace: str | None) -> int:
    try:
        docs = lint.documents(_read(args.file))
    except (OSError, lint.InputError) as err:
        print(f"error: {args.file}: {err}", file=sys.stderr)
        return 1
    releases = [(i, d) for i, d in enumerate(docs, 1) if lint.is_release(d)]
    for i, doc in enumerate(docs, 1):
        if not lint.is_release(doc):
            print(f"{lint.title(doc, i)}: skipped (only FilterReleases are linted)")
    if not releases:
        print(f"error: {args.file}: no FilterRelease in it", file=sys.stderr)
        return 1
    session = None if args.offline else _lint_session(args)
    failed = 0
    for i, given in releases:
        doc = given
        if namespace and not (doc.get("metadata") or {}).get("namespace"):
            doc = {**doc, "metadata": {**(doc.get("metadata") or {}), "namespace": namespace}}
        problems, how = _lint_one(session, doc)
        name = lint.title(doc, i)
        if problems:
            failed += 1
            print(f"{name}: {len(problems)} problem{'s' if len(problems) > 1 else ''} ({how})")
            print("\n".join(f"  {p}" for p in problems))
        else:
            print(f"{name}: valid ({how})")
    return 1 if failed else 0


def _lint_session(args: argparse.Namespace) -> Session | None:
    try:
        return Session.connect(args.kubeconfig, args.context)
    except KubeError as err:
        print(f"note: no cluster ({err.message}): checking offline", file=sys.stderr)
        return None


def _lint_one(session: Session | None, doc: dict[str, Any]) -> tuple[list[str], str]:
    if session is not None and (doc.get("metadata") or {}).get("name"):
        try:
            found = session.dry_run_problems(doc)
        except KubeError as err:
            why = refusal(
                err.status,
                err.message,
                verb="patch (dry run)",
                namespace=doc["metadata"].get("namespace") or session.namespace,
                name=doc["metadata"]["name"],
            )
            print(f"note: the server could not judge it, checking offline: {why}", file=sys.stderr)
        else:
            return found or lint.operator_problems(doc), (
                "server-side dry run and the operator's rules"
            )
    return lint.offline_problems(doc, release_schema()), "offline: CRD schema, operator's rules"


def cmd_dashboard(session: Session, args: argparse.Namespace, namespace: str | None) -> int:
    # Imported here: the dashboard (and aiohttp) costs nothing to the other commands, and a
    # build without it still has them.
    try:
        dashboard = importlib.import_module("filterrelease.dashboard")
        serve = dashboard.serve
    except (ImportError, AttributeError) as err:
        print(f"error: the dashboard is not available: {err}", file=sys.stderr)
        return EXIT_ERROR
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is stopped
        serve(
            session,
            namespace=namespace,
            address=args.address,
            port=args.port,
            read_only=args.read_only,
            open_browser=not args.no_browser,
        )
    return 0


def cmd_version() -> int:
    v = build_versions()
    print(f"kubectl-filterrelease {v.version} (Python {v.python})")
    return 0


# -- entry -------------------------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        return cmd_version()
    if args.command == "lint":
        return cmd_lint(args, args.namespace)
    # The verb a refusal names: what this command asked the API server for.
    verb = {"get": "get" if getattr(args, "name", None) else "list", "status": "get"}.get(
        args.command, "list" if args.command == "dashboard" else "patch"
    )
    session: Session | None = None
    namespace: str | None = args.namespace
    try:
        session = Session.connect(args.kubeconfig, args.context)
        if getattr(args, "all_namespaces", False):
            namespace = None
        elif namespace is None:
            namespace = session.namespace
        if args.command == "get":
            return cmd_get(session, args, namespace)
        if args.command == "dashboard":
            return cmd_dashboard(session, args, namespace)
        assert namespace is not None
        if args.command == "status":
            return cmd_status(session, args, namespace)
        return cmd_request(session, args, namespace)
    except KubeError as err:
        name = getattr(args, "name", None) or ""
        print(
            refusal(err.status, err.message, verb=verb, namespace=namespace, name=name),
            file=sys.stderr,
        )
        return EXIT_ERROR if args.command == "status" else 1
    finally:
        if session is not None:
            session.close()


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
