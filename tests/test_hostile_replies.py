"""Every hostile reply in the corpus, through the real client code: one
gcbundle error line, no traceback, nothing written outside the results folder.

The login node is replaced by canned replies (``tests/hostile_replies.py``):
a damaged or hostile login node cannot be made otherwise. The client side is
the real CLI, API, transport checks and results writer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bundle import api, transport
from bundle import doctor as client_doctor
from bundle.cli import main
from bundle.errors import ResultsError
from bundle.registry import Registry
from tests.conftest import write_workflow
from tests.hostile_replies import ARGS, CASES, ESCAPES, GOOD, GOOD_CHUNK, RUN, HostileLoginNode, listing
from tests.registry_rows import row


def _files(root: Path, skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip not in p.parents and p != skip}


def _registered() -> None:
    Registry().adopt(row(RUN))


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, replies: dict[str, Any]) -> tuple[Any, Path]:
    hostile = HostileLoginNode(replies)
    monkeypatch.setattr(api, "get_transport", lambda endpoint: hostile)
    monkeypatch.setattr(transport, "get_transport", lambda endpoint: hostile)
    monkeypatch.setattr(client_doctor, "get_transport", lambda endpoint: hostile)
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    dest = tmp_path / "res"
    _registered()
    args = [a.format(dest=dest, wf=wf) for a in ARGS[command]]
    try:
        return CliRunner().invoke(main, args), dest
    finally:
        hostile.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_reply_is_one_error_line_and_writes_nothing_outside(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, replies = CASES[case]
    write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    before = _files(tmp_path, tmp_path / "res")
    res, dest = _run(tmp_path, monkeypatch, command, replies)
    assert res.exit_code not in (0, 1), (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("gcbundle: error:")]
    assert len(errors) == 1 and "\x1b" not in res.stderr and "\x9b" not in res.stderr, res.stderr
    after = _files(tmp_path, dest)
    new = {p for p in after - before if not p.startswith(("xdg-", "gchome", "registry.sqlite3"))}
    assert new == set(), f"written outside the results folder: {new}"
    if dest.exists():
        assert not (dest / RUN).exists() or not list((dest / RUN).rglob("*")), "a refused package is not placed"


def test_the_corpus_has_at_least_thirty_shapes() -> None:
    assert len(CASES) >= 30
    assert {command for command, _ in CASES.values()} == set(ARGS)


def test_escape_sequences_from_the_login_node_are_shown_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res, _ = _run(tmp_path, monkeypatch, "status", {"status": ESCAPES})
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x9b" not in res.output and "\x07" not in res.output
    assert "\\x1b]0;owned\\x07\\x1b[2Jcleared" in res.output and "\\x9b31mred" in res.output
    hostile_error = {"type": "RunStateError", "message": "no\x1b[2J\nline two", "hint": "\x1b[31m"}
    error = {"protocol": 3, "ok": False, "error": hostile_error}
    res, _ = _run(tmp_path, monkeypatch, "cancel", {"cancel": {"__envelope__": error}})
    assert res.exit_code == 6 and len(res.stderr.strip().splitlines()) == 1 and "\x1b" not in res.stderr, res.stderr


def test_a_result_json_that_is_not_json_is_a_results_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [("result.json", b"{not json"), ("state.json", b'{"state": "succeeded"}')]
    replies = {"launch": {"state": {"state": "running"}}, "status": {"state": "succeeded"},
               "results_manifest": listing(files), "results_chunk": {"index": 0, "data": b"".join(d for _, d in files)}}
    monkeypatch.setattr(api, "default_results_dir", lambda: tmp_path / "res")
    hostile = HostileLoginNode(replies)
    monkeypatch.setattr(api, "get_transport", lambda endpoint: hostile)
    wf = write_workflow(tmp_path / "wf", "def main():\n    return 1\n")
    res = CliRunner().invoke(main, ["submit", str(wf), "--wait"])
    hostile.close()
    assert res.exit_code == 9 and "result.json is not JSON" in res.stderr and "Traceback" not in res.output, res.output


def test_a_state_json_that_is_not_json_stops_run_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [("state.json", b"[1, 2")]
    hostile = HostileLoginNode({"results_manifest": listing(files), "results_chunk": {"index": 0, "data": b"[1, 2"}})
    _registered()
    Registry().update(RUN, state="succeeded")
    run = api.Run(RUN, "local", transport=hostile)
    with pytest.raises(ResultsError, match="state.json is not JSON"):
        run.result(tmp_path / "res")
    hostile.close()


def test_a_good_canned_package_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus's baseline: with nothing hostile, the same path succeeds (so the cases fail for their one fault)."""
    res, dest = _run(tmp_path, monkeypatch, "results", {"results_manifest": GOOD, "results_chunk": GOOD_CHUNK})
    assert res.exit_code == 0, res.output
    assert json.loads((dest / RUN / "result.json").read_text()) == 42
