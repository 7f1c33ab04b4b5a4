"""The first workers start when the DFK loads, not a scaling period later.

This Parsl submits a Config's ``init_blocks`` on the strategy's first tick,
``strategy_period`` after the DFK loads (5 s by default: most of a short run on
``local``). The driver runs that first pass itself. With a period of an hour, a
run ends in seconds only because of that; without it, it would sit for the
hour with no worker.
"""
from __future__ import annotations

from pathlib import Path

from bundle import api, profiles
from tests.conftest import write_workflow

TRIVIAL = '''
from parsl import python_app


@python_app
def one():
    return 1


def main():
    return one().result()
'''


def test_a_run_gets_its_first_block_without_waiting_for_the_strategy_period(tmp_path: Path) -> None:
    local = profiles.load("local")
    site = tmp_path / "slow-strategy.yaml"
    site.write_text(local.text.rstrip("\n") + "\nconfig:\n  strategy_period: 3600\n")
    wf = write_workflow(tmp_path / "wf", TRIVIAL)
    run = api.submit(wf, "local", site=str(site))
    st = run.wait(timeout=240)
    assert st["state"] == "succeeded", st
    assert run.result(tmp_path / "res") == 1
