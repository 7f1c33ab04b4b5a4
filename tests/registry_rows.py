"""Rows of the client's run registry for tests that need a run on record
without submitting one (a reply to check, a place that cannot be written, an
endpoint that cannot be asked)."""
from __future__ import annotations

import time
from typing import Any

from bundle.registry import RunRecord


def row(run_id: str, *, state: str = "running", endpoint: str = "local", workflow: str = "wf.py",
        **more: Any) -> RunRecord:
    """A record of ``run_id`` as the registry holds it; what the test does not
    name is a placeholder: a digest of zeros, no site, submitted and updated now.
    ``more`` sets the optional fields (``results_sha``, ``resumed_from``...)."""
    now = time.time()
    return RunRecord(run_id=run_id, endpoint=endpoint, digest="0" * 64, workflow=workflow, site=None, state=state,
                     submitted=now, updated=now, **more)
