"""The smaller things a user reads: a progress line ended before the next
message, what ``inspect`` says about a bundle's Config."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle.cli import main
from bundle.output import ProgressMeter as Progress
from tests.conftest import EXAMPLES, write_workflow


def test_a_note_ends_the_progress_line_first(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(enabled=True)
    progress("upload", 10, 10)
    progress.note("submitted run 0123456789ab to local")
    err = capsys.readouterr().err
    assert err.endswith("upload: 10 B / 10 B (100%)\ngcbundle: submitted run 0123456789ab to local\n")
    progress.note("second")  # no progress line open: nothing ended twice
    assert capsys.readouterr().err == "gcbundle: second\n"


@pytest.mark.parametrize(("body", "says"), [
    (
        "def main():\n    return 1\n",
        "the `local` profile (workflow.py defines no make_config() or config), unless submit gives --site or --config",
    ),
    (
        "def make_config():\n    pass\n\ndef main():\n    return 1\n",
        "make_config() of workflow.py, unless submit gives --site or --config",
    ),
    (
        "from mysite import config\n\ndef main():\n    return 1\n",
        "`config` of workflow.py, unless submit gives --site or --config",
    ),
    ("import parsl\nparsl.load()\n", "whatever workflow.py passes to parsl.load()"),
])
def test_inspect_says_where_the_config_comes_from(tmp_path: Path, body: str, says: str) -> None:
    wf = write_workflow(tmp_path / "wf", body)
    runner = CliRunner()
    assert runner.invoke(main, ["pack", str(wf), "-o", str(tmp_path / "b.tar.gz")]).exit_code == 0
    res = runner.invoke(main, ["inspect", str(tmp_path / "b.tar.gz")])
    assert res.exit_code == 0, res.stderr
    assert f"config  {says}\n" in res.stdout


def test_inspect_of_a_bundle_with_a_config_module(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["pack", str(EXAMPLES / "hello" / "workflow.py"), "-o", str(tmp_path / "b.tar.gz"),
                                    "--config", str(EXAMPLES / "hello" / "workflow.py")])
    assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "b.tar.gz"), "--json"])
    assert '"config_source": "make_config() of workflow.py"' in res.stdout
