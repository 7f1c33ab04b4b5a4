"""`gcbundle doctor --local`'s worker_init check runs the job's prelude (the
site's worker_init lines from site-defaults.yaml, then gcbundle's own) in a
bare bash, as a batch job starts, and fails when one of those lines fails: a
batch job would go on after it, and module loads that never ran would show
only later. The `local` profile keeps the scheduler out of it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import parsl
from click.testing import CliRunner

from bundle.cli import main
from bundle.errors import ChecksFailed


def worker_init_check(home: Path, site_defaults: str) -> tuple[int, dict[str, Any]]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "site-defaults.yaml").write_text(site_defaults)
    res = CliRunner().invoke(main, ["doctor", "--local", "--site", "local", "--json"])
    checks = {c["name"]: c for c in json.loads(res.stdout)["data"]["checks"]}
    return res.exit_code, checks["worker_init"]


def test_site_lines_that_run_pass(home: Path) -> None:
    code, check = worker_init_check(home, "worker_init: |-\n  export GCBUNDLE_A=1\n  export GCBUNDLE_B='two words'\n")
    assert code == 0 and check["status"] == "ok", check
    assert check["detail"].startswith(f"workers get Parsl {parsl.__version__} from ")


def test_literal_backslash_n_fails(home: Path) -> None:
    """What the Ansible role once wrote: two lines joined by a backslash and an n."""
    code, check = worker_init_check(home, 'worker_init: "module load gcc\\\\nsource /opt/venv/bin/activate"\n')
    assert code == ChecksFailed.exit_code and check["status"] == "fail", check
    assert check["detail"].startswith("a line of the job's worker_init failed (exit 127): module load gcc\\nsource")
    assert "gcbundle_site_worker_init_before" in check["fix"]


def test_failing_line_fails_even_when_the_workers_would_start(home: Path) -> None:
    code, check = worker_init_check(home, "worker_init: |-\n  export GCBUNDLE_A=1\n  false\n  export GCBUNDLE_B=2\n")
    assert code == ChecksFailed.exit_code and check["status"] == "fail", check
    assert check["detail"] == "a line of the job's worker_init failed (exit 1): false"
