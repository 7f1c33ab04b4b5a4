"""The local transport's worker: pipelined call_many, and what happens when it is misused or dies."""
from __future__ import annotations

import os
import signal

import pytest

from bundle.errors import TransportError
from bundle.transport import Tally
from bundle.transport.local import LocalTransport
from tests.faults import worker_pid


def test_call_many_gives_the_replies_in_order_one_task_each(home: object) -> None:
    with LocalTransport() as t:
        calls = Tally.attach(t).calls
        digests = [[f"{i:064x}"] for i in range(6)]
        replies = list(t.call_many("probe", ({"digests": d} for d in digests)))
        assert replies == [{"cached": []}] * 6
        assert calls["probe"] == 6
        assert t.call("probe", digests=[]) == {"cached": []}


def test_an_abandoned_call_many_leaves_a_working_transport(home: object) -> None:
    with LocalTransport() as t:
        it = t.call_many("probe", ({"digests": []} for _ in range(5)))
        assert next(it) == {"cached": []}
        it.close()  # a reply is still in the pipe: the worker is replaced
        assert t.call("probe", digests=[]) == {"cached": []}


def test_a_call_inside_call_many_is_refused_not_deadlocked(home: object) -> None:
    with LocalTransport() as t:
        it = t.call_many("probe", ({"digests": []} for _ in range(3)))
        next(it)
        with pytest.raises(RuntimeError, match="call_many"):
            t.call("probe", digests=[])
        assert list(it) == [{"cached": []}] * 2


def test_a_worker_killed_during_call_many_is_a_transport_error(home: object) -> None:
    with LocalTransport() as t:
        t.call("probe", digests=[])
        pid = worker_pid(t)
        assert pid

        def requests():  # type: ignore[no-untyped-def]
            yield {"digests": []}
            os.kill(pid, signal.SIGKILL)
            yield {"digests": []}

        with pytest.raises(TransportError, match="worker died"):
            list(t.call_many("probe", requests()))
        assert t.call("probe", digests=[]) == {"cached": []}  # a new worker
        assert worker_pid(t) != pid
