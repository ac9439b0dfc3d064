"""`kubectl filterrelease`'s flags, the request each command writes, refusals in words, and the
commands that need no cluster (lint --offline, version) run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from filterrelease.plugin.cli import build_parser, request_value, run
from filterrelease.plugin.refusals import refusal
from tests.unit.conftest import ROOT, load_example


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["promote", "x"], "promote"),
        (["promote", "x", "--full"], "promote-full"),
        (["abort", "x"], "abort"),
        (["pause", "x"], "pause"),
        (["resume", "x"], "resume"),
        (["retry", "x"], "retry"),
        (["undo", "x"], "undo"),
        (["undo", "x", "--to-revision", "3"], "undo:3"),
    ],
)
def test_each_request_command_writes_its_annotation_value(argv: list[str], value: str) -> None:
    assert request_value(build_parser().parse_args(argv)) == value


def test_cluster_flags_go_before_or_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(["get", "-n", "shop", "--context", "c", "--kubeconfig", "k"])
    assert (after.namespace, after.context, after.kubeconfig) == ("shop", "c", "k")
    before = parser.parse_args(["-n", "shop", "get", "x", "-o", "yaml"])
    assert (before.namespace, before.name, before.output) == ("shop", "x", "yaml")
    neither = parser.parse_args(["get", "-A", "-w"])
    assert (neither.namespace, neither.all_namespaces, neither.watch) == (None, True, True)
    status = parser.parse_args(["status", "x"])
    assert status.timeout == "10m"
    board = parser.parse_args(["dashboard"])
    assert (board.address, board.port, board.read_only, board.no_browser) == (
        "127.0.0.1", 3100, False, False,
    )  # fmt: skip


def test_a_refusal_names_the_verb_the_resource_and_the_namespace() -> None:
    server = 'filterreleases.filterrelease.dev "x" is forbidden: User "bob" cannot patch ...'
    text = refusal(403, server, verb="patch", namespace="shop", name="x")
    assert text.splitlines() == [
        "error: forbidden: you may not patch filterreleases.filterrelease.dev in namespace "
        '"shop" (RBAC). Ask for a Role with the "patch" verb on "filterreleases" in API group '
        '"filterrelease.dev" there.',
        f"  server: {server}",
    ]
    missing = refusal(404, 'filterreleases "x" not found', verb="patch", namespace="shop", name="x")
    assert missing.splitlines()[0] == (
        "error: filterreleases.filterrelease.dev 'x' not found in namespace \"shop\"."
    )
    assert refusal(0, "connection refused", verb="get", namespace=None, name="") == (
        "error: cannot reach the cluster: connection refused"
    )


def write(tmp_path: Path, *docs: object) -> str:
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_lint_offline_passes_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, load_example("security-headers.yaml"), {"kind": "ConfigMap"})
    assert run(["lint", "--offline", path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "document 2 (ConfigMap ?): skipped (only FilterReleases are linted)",
        "document 1 (FilterRelease shop/security-headers): valid "
        "(offline: CRD schema, operator's rules)",
    ]


def test_lint_offline_fails_a_bad_file_with_each_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = load_example("security-headers.yaml")
    bad = load_example("security-headers.yaml")
    bad["metadata"]["name"] = "bad"
    bad["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    bad["spec"]["strategy"] = {"canary": {"steps": []}}
    assert run(["lint", "--offline", write(tmp_path, good, bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "document 1 (FilterRelease shop/security-headers): valid "
        "(offline: CRD schema, operator's rules)"
    )
    assert out[1] == (
        "document 2 (FilterRelease shop/bad): 2 problems (offline: CRD schema, operator's rules)"
    )
    # The schema's words only: the operator's model is asked once the schema is satisfied.
    assert out[2:] == [
        "  spec.failStrategy: 'FAIL_SOMETIMES' is not one of "
        "['FAIL_CLOSE', 'FAIL_OPEN', 'FAIL_RELOAD']",
        "  spec.strategy.canary.steps: [] should be non-empty",
    ]


def test_lint_without_a_cluster_checks_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert run(["lint", write(tmp_path, load_example("security-headers.yaml"))]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("note: no cluster (")
    assert captured.err.rstrip().endswith("): checking offline")
    assert "valid (offline: CRD schema, operator's rules)" in captured.out


def test_lint_refuses_what_is_not_yaml_or_has_no_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [")
    assert run(["lint", "--offline", str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    assert run(["lint", "--offline", write(tmp_path, {"kind": "ConfigMap"})]) == 1
    assert "no FilterRelease in it" in capsys.readouterr().err
    assert run(["lint", "--offline", str(tmp_path / "missing.yaml")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["version"]) == 0
    assert capsys.readouterr().out.startswith("kubectl-filterrelease ")


def test_the_console_script_is_declared() -> None:
    project = (ROOT / "pyproject.toml").read_text()
    assert 'kubectl-filterrelease = "filterrelease.plugin.cli:main"' in project
