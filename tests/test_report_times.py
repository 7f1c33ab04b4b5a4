"""report.json splits each app's time: waiting for its inputs, queued until the
run's first workers connected, running (or waiting for a free worker); it no
longer calls the whole call-to-result span the app's run time."""
from __future__ import annotations

import json
from pathlib import Path

from bundle import api
from login_node.timing import POLL
from tests.conftest import write_workflow

WORKFLOW = '''
from parsl import python_app


@python_app
def slow():
    import time
    time.sleep(2)
    return 1


@python_app
def after(x):
    return x + 1


def main():
    return after(slow()).result()
'''


def test_report_splits_waiting_queued_and_running(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", WORKFLOW)
    run = api.submit(wf, "local", wait=True)
    assert run.last_state["state"] == "succeeded"
    res = run.results(tmp_path / "res")
    report = json.loads((res.path / "report.json").read_text())
    t = report["timings"]
    assert t["dfk_loaded"] < t["first_workers"] < t["main_returned"]
    slow, after = report["apps"]["slow"], report["apps"]["after"]
    assert "seconds" not in slow and set(slow) >= {"waiting_s", "queued_s", "running_s"}
    # slow() was handed to the executor at once, before any worker existed: queued, then ran its 2 s
    # (the driver notices the first workers by polling every POLL seconds, so up to one poll of
    # the run may be counted as queued)
    assert slow["waiting_s"] < 0.5 and slow["queued_s"] > 0 and slow["running_s"] >= 2.0 - POLL - 0.25
    # after() waited for slow()'s result, and found the workers there
    assert after["waiting_s"] >= 2.0 and after["queued_s"] == 0 and after["running_s"] < after["waiting_s"]
