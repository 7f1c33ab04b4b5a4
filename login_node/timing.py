"""Where an app's time went, for ``report.json``: waiting, queued, running.

Parsl's task record has the app's call (``time_invoked``), its hand-over to
the executor (``try_time_launched``) and its result (``time_returned``), but
not when a worker started it. What separates a batch site's queue wait from
the app's own time is when the run's first workers connected: before that
no app could run (its blocks sat in the scheduler's queue, then started). So
the driver notes that moment (``FirstWorkers``), and each task's time splits
into:

- ``waiting_s``: call -> launch: waiting for its inputs (other apps' futures),
  and earlier tries;
- ``queued_s``: launch -> the first workers connected (0 once they are);
- ``running_s``: the rest, up to its result: running, or waiting for a free
  worker of the run.

Until workers connect, ``time_returned - time_invoked`` is mostly queue.
"""
from __future__ import annotations

import threading
import time
from typing import Any

#: Seconds between two looks at the interchange while no worker has connected.
POLL = 1.0


class FirstWorkers(threading.Thread):
    """Notes when the first workers of the run's executors connected (``first``).

    Looks at each HighThroughputExecutor's interchange (its list of connected
    managers) once a second until one has workers, then stops; an executor
    without blocks (threads in the driver) has workers at once.
    """

    def __init__(self, dfk: Any, poll: float = POLL) -> None:
        super().__init__(name="gcbundle-first-workers", daemon=True)
        self.dfk = dfk
        self.poll = poll
        self.first: float | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            if self._connected():
                self.first = time.time()
                return
            self._stop.wait(self.poll)

    def _connected(self) -> bool:
        for executor in list(getattr(self.dfk, "executors", {}).values()):
            if executor.label == "_parsl_internal":
                continue
            managers = getattr(executor, "connected_managers", None)
            if managers is None:
                return True  # no blocks: its workers are there from the start
            try:
                if any(m.get("worker_count") for m in managers()):
                    return True
            except Exception:  # noqa: BLE001 - the interchange is starting or gone: look again
                continue
        return False

    def stop(self) -> None:
        self._stop.set()


def _ts(value: Any) -> float | None:
    return value.timestamp() if value is not None and hasattr(value, "timestamp") else None


def split(record: Any, first_workers: float | None) -> tuple[float, float, float]:
    """``(waiting_s, queued_s, running_s)`` of one task record (zeros where it has no times)."""
    invoked, launched, returned = (_ts(record.get(k)) for k in ("time_invoked", "try_time_launched", "time_returned"))
    if invoked is None or returned is None:
        return 0.0, 0.0, 0.0
    if launched is None:  # never reached an executor (a dependency failed, or memoized)
        return max(0.0, returned - invoked), 0.0, 0.0
    waiting = max(0.0, launched - invoked)
    queued = max(0.0, min(returned, first_workers) - launched) if first_workers is not None else 0.0
    running = max(0.0, returned - launched - queued)
    return waiting, queued, running
