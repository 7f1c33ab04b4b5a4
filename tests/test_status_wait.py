"""The status long poll: a waiting client learns that a run ended at once, with few tasks."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from bundle import api
from bundle.errors import UsageError
from bundle.transport import Tally
from bundle.transport.local import LocalTransport
from tests.conftest import write_workflow

SLOW = "import time\n\ndef main(seconds=2.0):\n    time.sleep(seconds)\n    return seconds\n"


def test_wait_sees_the_end_at_once_with_few_status_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCBUNDLE_POLL_SECONDS", "10")
    wf = write_workflow(tmp_path / "wf", SLOW)
    with LocalTransport() as transport:
        calls = Tally.attach(transport).calls
        run = api.submit(wf, "local", args={"seconds": 3.0}, transport=transport)
        st = run.wait()
        seen = time.time()
        assert st["state"] == "succeeded"
        # polling every 0.5, 0.75, 1.1, 1.7 s... would have taken 5 tasks and
        # up to 1.7 s to notice; the long poll takes one or two, and notices at once
        assert calls["status"] <= 3
        assert seen - st["updated"] < 1.0


def test_status_wait_returns_when_the_state_changes_or_time_is_up(tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf", SLOW)
    with LocalTransport() as transport:
        run = api.submit(wf, "local", args={"seconds": 3.0}, transport=transport)
        t0 = time.monotonic()
        st = run.status(wait=0.5)
        assert st["state"] in ("starting", "running") and 0.4 <= st["waited"] and time.monotonic() - t0 < 3
        final = run.wait()
        assert final["state"] == "succeeded"
        t0 = time.monotonic()
        assert run.status(wait=5)["state"] == "succeeded" and time.monotonic() - t0 < 2  # ended: no waiting
        with pytest.raises(UsageError, match="wait must be"):
            transport.call("status", run_id=run.id, wait=3600)
