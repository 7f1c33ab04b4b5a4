"""The embedded ``local`` endpoint: this machine plays the login node.

Same code path as a real endpoint: the call is serialized with the SDK's
``ComputeSerializer``, packed as a messagepack ``Task`` (``wire.py``), and
executed by the endpoint's own ``execute_task`` in a separate process (one
forked worker, like the endpoint's one-worker ``ProcessPoolEngine``), under
the same 10 MiB limits.
"""
from __future__ import annotations

import atexit
import pickle
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from bundle.errors import TransportError
from bundle.limits import TASK_LIMIT
from bundle.protocol import request, unwrap
from bundle.transport import Transport
from bundle.transport.wire import pack_task, task_function, unpack_result
from login_node.rundir import Home


def _execute(task_bytes: bytes, task_id: uuid.UUID, run_dir: str) -> bytes:
    from globus_compute_endpoint.engines.helper import execute_task

    return execute_task(task_bytes, task_id, run_dir=run_dir, result_size_limit=TASK_LIMIT)


class _Worker:
    """One forked process that runs ``execute_task`` for each task sent down its pipe.

    Like the endpoint's one-worker ``ProcessPoolEngine``, but with plain pipes
    of which the parent keeps only its own ends: if the worker dies, sending
    fails with EPIPE and receiving ends with EOF, at once. With a
    ``ProcessPoolExecutor`` the parent also holds the reading end of the call
    queue, so a worker killed while a large task was being written left the
    queue's feeder thread, and the caller, blocked for good (Python 3.11). The
    task and result bytes also go through unpickled, one copy fewer each way.
    """

    def __init__(self) -> None:
        import multiprocessing

        # Imported before the fork, so the worker starts warm.
        import globus_compute_endpoint.engines.helper  # noqa: F401

        ctx = multiprocessing.get_context("fork")
        task_r, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_serve, args=(task_r, result_w, (self.tasks, self.results)),
                                name="gcbundle-local-endpoint", daemon=True)
        self.proc.start()
        task_r.close()
        result_w.close()

    def run(self, packed: bytes, task_id: uuid.UUID, workdir: str) -> bytes:
        self.send(packed, task_id, workdir)
        return self.results.recv_bytes()

    def send(self, packed: bytes, task_id: uuid.UUID, workdir: str) -> None:
        self.tasks.send_bytes(pickle.dumps((task_id, workdir)))
        self.tasks.send_bytes(packed)

    def stop(self, timeout: float = 10.0, kill: bool = False) -> None:
        """Let the worker finish its task and exit; with ``kill`` (an interrupted
        caller, who will not read the reply), end it at once."""
        for end in (self.tasks, self.results):
            end.close()  # the worker reads EOF and exits
        if kill:
            self.proc.kill()
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout)


def _serve(tasks: Any, results: Any, parent_ends: tuple[Any, ...]) -> None:
    """The worker's loop: a (task id, working dir) header, the packed task; the packed result back.

    Ctrl-C in a terminal signals the whole foreground process group, this
    worker too: it ignores SIGINT, and the client, which handles it, ends the
    worker (a real endpoint's worker is not in the user's terminal either).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for end in parent_ends:
        end.close()
    while True:
        try:
            task_id, workdir = pickle.loads(tasks.recv_bytes())
            packed = tasks.recv_bytes()
        except (EOFError, OSError):
            return
        result = _execute(packed, task_id, workdir)
        try:
            results.send_bytes(result)
        except OSError:  # the client is gone (killed): nobody to answer
            return


class LocalTransport(Transport):
    """The embedded default endpoint: this machine plays the login node."""

    name = "local"
    status_wait = 10.0  # its one worker is ours alone

    def __init__(self) -> None:
        super().__init__()
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread inside call_many
        self._scratch: str | None = None  # working directory when GCBUNDLE_HOME cannot hold one

    def _workdir(self) -> str:
        """The tasks' working directory, in GCBUNDLE_HOME; if that cannot be made, a
        private temporary one, so that the task itself runs and says what is wrong
        with GCBUNDLE_HOME (a HomeError; ``doctor``: a failed check)."""
        workdir = Home.default().endpoint_workdir
        try:
            workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return str(workdir)
        except OSError:
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix="gcbundle-local-endpoint-")
            return self._scratch

    def _refuse_reentry(self) -> None:
        if self._holder == threading.get_ident():
            raise RuntimeError("a call on the local transport while its call_many() is not finished")

    def _started(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker()
            atexit.register(self.close)
        return self._worker

    def _run(self, task: str, req: dict[str, Any]) -> Any:
        task_id, packed = pack_task(task_function(task), req)
        self._sent(task, len(packed))
        workdir = self._workdir()
        self._refuse_reentry()  # before the lock, which this thread may hold
        with self._lock:  # one task at a time, like a default endpoint
            worker = self._started()
            try:
                result = worker.run(packed, task_id, workdir)
            except (EOFError, OSError):
                self._close_worker()
                raise TransportError(f"the local endpoint's worker died while running the {task} task",
                                     "run the command again") from None
            except BaseException:
                self._close_worker(kill=True)  # interrupted half-way: the pipes are out of step
                raise
        return unpack_result(result)

    def call_many(self, task: str, requests: Iterable[dict[str, Any]]) -> Iterator[Any]:
        """Pipelined: the next task is sent before this reply is unpacked and handed over.

        The worker runs task k+1 while the caller deserializes and uses reply
        k, so the two processes overlap (a results download keeps both cores
        busy). Still one task at a time in the worker, as on an endpoint.
        """
        if type(self).call is not Transport.call:
            # A subclass that intercepts call() (a test's fault injection, a
            # wrapper) sees every task go through it, one at a time.
            yield from super().call_many(task, requests)
            return
        fn = task_function(task)
        workdir = self._workdir()
        pending = iter(requests)
        self._refuse_reentry()
        with self._lock:
            worker = self._started()
            self._holder = threading.get_ident()
            in_flight = 0
            try:
                def send_next() -> int:
                    fields = next(pending, None)
                    if fields is None:
                        return 0
                    task_id, packed = pack_task(fn, request(**fields))
                    self._sent(task, len(packed))
                    worker.send(packed, task_id, workdir)
                    return 1

                in_flight = send_next()
                while in_flight:
                    raw = worker.results.recv_bytes()
                    in_flight = send_next()
                    yield self._checked(task, unwrap(unpack_result(raw)))
            except (EOFError, OSError):
                in_flight = 0
                self._close_worker()
                raise TransportError(f"the local endpoint's worker died while running a {task} task",
                                     "run the command again") from None
            finally:
                self._holder = None
                if in_flight:
                    self._close_worker(kill=True)  # abandoned with a reply still in the pipe

    def _close_worker(self, kill: bool = False) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(kill=kill)

    def close(self) -> None:
        with self._lock:
            self._close_worker()
            scratch, self._scratch = self._scratch, None
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
