"""One exit-code table: in bundle/errors.py, in the README, and what every
command does on its error cases (walked here through click's CliRunner).

Each case runs twice: with ``--json`` (exactly one envelope on stdout, status
``error``, the error's type) and without (one line on stderr). A command added
without error cases here fails ``test_every_command_is_walked``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bundle import errors, profiles
from bundle.cli import main
from tests.conftest import EXAMPLES, REPO

HELLO = str(EXAMPLES / "hello" / "workflow.py")
UUID = "4b116d3c-1703-4f8f-9f6f-39921e5864df"

#: (argv, exit code, error type). Paths relative to the test's working directory.
CASES: list[tuple[list[str], int, str]] = [
    # click's own usage errors
    (["submit", "--frob"], 2, "UsageError"),
    (["submit"], 2, "UsageError"),
    (["status"], 2, "UsageError"),
    (["logs", "0123456789ab", "--name"], 2, "UsageError"),
    (["logs", "0123456789ab", "--tail=x"], 2, "UsageError"),
    (["list", "--limit", "many"], 2, "UsageError"),
    (["endpoints", "add", "onlyname"], 2, "UsageError"),
    (["submit", HELLO, "--mode", "banana"], 2, "UsageError"),
    # pack / inspect
    (["pack", "missing.py"], 3, "BundleError"),
    (["pack", HELLO, "--arg", "foo"], 2, "UsageError"),
    (["pack", HELLO, "--arg", "n=[1,"], 2, "UsageError"),
    (["pack", HELLO, "--arg", "m=1"], 2, "UsageError"),
    (["pack", HELLO, "--max-files", "1"], 3, "BundleError"),
    (["pack", HELLO, "--max-size", "lots"], 2, "UsageError"),
    (["inspect", "missing.tar.gz"], 3, "BundleError"),
    (["inspect", "garbage.tar.gz"], 3, "BundleError"),
    # submit: arguments and site parameters, before anything is sent
    (["submit", HELLO, "--arg", "foo"], 2, "UsageError"),
    (["submit", HELLO, "--set", "foo"], 2, "UsageError"),
    (["submit", HELLO, "--set", "partition=debug"], 2, "UsageError"),
    (["submit", HELLO, "--site", "nosuchsite"], 4, "SiteProfileError"),
    (["submit", HELLO, "--site", "slurm", "--set", "partiton=debug"], 4, "SiteProfileError"),
    (["submit", HELLO, "--site", "polaris"], 4, "SiteProfileError"),
    (["submit", HELLO, "--endpoint", "nosuchalias"], 2, "UsageError"),
    (["submit", HELLO, "--endpoint", UUID], 7, "NotLoggedIn"),
    (["submit", "missing.py"], 3, "BundleError"),
    # runs by id
    (["status", "0123456789ab"], 5, "RunNotFound"),
    (["status", "not-a-run"], 5, "RunNotFound"),
    (["logs", "0123456789ab"], 5, "RunNotFound"),
    (["results", "0123456789ab"], 5, "RunNotFound"),
    (["cancel", "0123456789ab"], 5, "RunNotFound"),
    (["resume", "0123456789ab"], 5, "RunNotFound"),
    (["resume", "0123456789ab", "--arg", "foo"], 2, "UsageError"),
    (["list", "-n", "x"], 2, "UsageError"),
    # profiles
    (["sites", "--frob"], 2, "UsageError"),
    (["render"], 2, "UsageError"),
    (["render", "--set", "foo"], 2, "UsageError"),
    (["render", "--site", "nosuchsite"], 4, "SiteProfileError"),
    (["render", "--site", "polaris"], 4, "SiteProfileError"),
    (["render", "--site", "slurm", "--set", "walltme=1"], 4, "SiteProfileError"),
    (["doctor"], 2, "UsageError"),
    (["doctor", "--local", "--set", "x=1"], 2, "UsageError"),
    # endpoints, register, login
    (["endpoints", "add", "polaris", "not-a-uuid"], 2, "UsageError"),
    (["endpoints", "add", "polaris", UUID, "--set", "foo"], 2, "UsageError"),
    (["endpoints", "add", "polaris", UUID, "--site", "slurm", "--set", "partiton=x"], 4, "SiteProfileError"),
    (["endpoints", "add", "polaris", UUID, "--function", "nope"], 2, "UsageError"),
    (["endpoints", "remove", "nosuch"], 2, "UsageError"),
    (["endpoints", "list", "--frob"], 2, "UsageError"),
    (["register"], 2, "UsageError"),
    (["register", "--endpoint", "nosuchalias"], 2, "UsageError"),
    (["login", "--frob"], 2, "UsageError"),
    # prune (its runs and the old-login-node case: tests/test_prune.py)
    (["prune", "--older-than", "soon"], 2, "UsageError"),
    (["prune", "--state", "running"], 2, "UsageError"),
    (["prune", "--endpoint", "nosuchalias"], 2, "UsageError"),
    (["prune", "--endpoint", UUID, "--no-caches"], 7, "NotLoggedIn"),
]


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out += _commands(cmd, path + " ")
        else:
            out.append(path)
    return out


def _command_of(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv[0] == "endpoints" else argv[0]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # no Globus tokens of this machine's user
    for var in ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "garbage.tar.gz").write_bytes(b"not a tarball")
    return tmp_path


def test_readme_table_is_the_code_table() -> None:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- exit-codes:", 1)[1].split("<!-- /exit-codes -->", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", block, re.M)
    assert {int(code): meaning for code, meaning in rows} == errors.EXIT_CODES


def test_every_error_class_has_its_own_documented_code() -> None:
    classes = {*errors.BY_NAME.values(), errors.ChecksFailed, errors.RunFailed}
    for cls in classes:
        assert cls.exit_code in errors.EXIT_CODES, cls
    # one code per family: subclasses share their base's code, bases differ
    bases = [c for c in classes if c.__bases__ == (errors.GcbundleError,)]
    assert len({c.exit_code for c in bases}) == len(bases)


def test_every_command_is_walked() -> None:
    walked = {_command_of(argv) for argv, _, _ in CASES} | set(EXTRA_WALKED)
    assert set(_commands(main)) <= walked, set(_commands(main)) - walked


#: Commands whose error cases are walked in other tests (they need a run, a
#: broken GCBUNDLE_HOME or registry), named here with where.
EXTRA_WALKED: dict[str, str] = {}


@pytest.mark.parametrize(("argv", "code", "kind"), CASES, ids=[" ".join(a)[:60] for a, _, _ in CASES])
def test_error_case(argv: list[str], code: int, kind: str, cwd: Path) -> None:
    runner = CliRunner()
    n = len(_command_of(argv).split())
    res = runner.invoke(main, [*argv[:n], "--json", *argv[n:]])
    assert res.exit_code == code, (res.stdout, res.stderr)
    env = json.loads(res.stdout)  # exactly one document on stdout
    assert env["version"] == 1 and env["status"] == "error"
    assert env["data"] is None or argv[0] == "prune"  # prune reports what it did on the other endpoints
    assert env["errors"][0]["type"] == kind, env
    assert env["command"] == _command_of(argv)
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("gcbundle: error: "), res.stderr

    res = runner.invoke(main, argv)
    assert res.exit_code == code
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("gcbundle: error: "), res.stderr


def test_arg_and_set_names_get_a_suggestion(cwd: Path) -> None:
    res = CliRunner().invoke(main, ["render", "--site", "slurm", "--set", "partiton=debug"])
    assert "did you mean --set partition=...?" in res.stderr
    res = CliRunner().invoke(main, ["endpoints", "add", "p", UUID, "--site", "slurm", "--set", "Walltime=1"])
    assert res.exit_code == 4 and "did you mean --set walltime=...?" in res.stderr
    res = CliRunner().invoke(main, ["render", "--site", "slurm", "--set", "zzz=1"])
    assert "did you mean" not in res.stderr and "its parameters: account," in res.stderr


def test_an_unexpected_exception_is_one_line_and_the_traceback_only_with_debug(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[str]:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(profiles, "builtin_names", broken)
    res = CliRunner().invoke(main, ["sites", "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["errors"][0]["type"] == "InternalError"
    assert res.stderr.strip() == ("gcbundle: error: ZeroDivisionError: boom; this is a gcbundle bug: "
                                  "rerun with --debug for the traceback, and report it")
    res = CliRunner().invoke(main, ["sites", "--debug"])
    assert isinstance(res.exception, ZeroDivisionError)


def test_bare_command_and_help_are_not_errors(cwd: Path) -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and "submit" in res.stdout
    res = CliRunner().invoke(main, ["submit", "--help"])
    assert res.exit_code == 0 and "results/<run_id>/" in res.stdout  # where --wait leaves the results
