"""Where a task goes: the interface every transport implements, and the factory.

A transport sends one login-node task function with one request dict and
returns the reply's data, checked against the task's reply contract
(``bundle.contracts``): ``send`` takes a request object and returns the
reply object; ``call`` takes the request's fields and returns the reply's
dict. Two exist:

    local.py          the embedded ``local`` endpoint: this machine plays the login node
    globus.py         a real Globus Compute endpoint, through the SDK's ``Client``
    globus_errors.py  what the Globus service and SDK say, as gcbundle errors
    wire.py           the bytes an endpoint receives and returns (shared by both)

``local.py`` is the only client module that imports ``login_node`` (it runs
the login node's task functions on this machine); ``wire.task_function``
names those functions by reference, which is how both transports send them.

Observers see every task a transport sends (its name and serialized size):
benchmarks and tests count tasks and bytes with ``Tally`` instead of reaching
into the transport.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from bundle.contracts import Contract, check_reply_shape, parse_reply
from bundle.endpoints import resolve
from bundle.errors import ProtocolMismatch, RemoteError
from bundle.protocol import TASK_SINCE, request, unwrap

#: Called with (task name, serialized bytes) for every task sent; bytes is 0 when unknown.
Observer = Callable[[str, int], None]


class Transport(ABC):
    """Sends gcbundle's task functions to one endpoint."""

    name: str = "?"
    #: Longest a status task may wait on the login node for a state change
    #: (``Run.wait``'s long poll); 0 to poll. Each waiting task holds one of
    #: the endpoint's workers for that long.
    status_wait: float = 0.0

    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> Observer:
        """Call ``observer(task, nbytes)`` for every task this transport sends from now on."""
        self._observers.append(observer)
        return observer

    @contextmanager
    def observing(self, observer: Observer) -> Iterator[Observer]:
        """``observe`` for the duration of a ``with`` block."""
        self._observers.append(observer)
        try:
            yield observer
        finally:
            self._observers.remove(observer)

    def _sent(self, task: str, nbytes: int = 0) -> None:
        for observer in self._observers:
            observer(task, nbytes)

    def send(self, req: Contract) -> Contract:
        """The reply to one request object (``bundle.contracts``), as its task's reply object."""
        return parse_reply(req.task, self.call(req.task, **req.to_json()))  # call checked its values

    def call(self, task: str, **fields: Any) -> Any:
        """Send ``task`` and return its reply's data, checked against the reply's contract (``bundle.contracts``)."""
        try:
            data = unwrap(self._run(task, request(**fields)))
        except RemoteError as exc:
            raise _missing_task(task, exc) from None
        return self._checked(task, data)

    @staticmethod
    def _checked(task: str, data: Any) -> Any:
        return check_reply_shape(task, data)  # a reply that lacks a field, or has one of the wrong type, stops here

    def call_many(self, task: str, requests: Iterable[dict[str, Any]]) -> Iterator[Any]:
        """The replies to ``task`` for each request's fields, in order.

        One task per request, as with ``call``; a transport may overlap them
        (the local one starts the next task while the caller handles a reply).
        Make no other call on the transport until the iterator is exhausted.
        """
        for fields in requests:
            yield self.call(task, **fields)

    @abstractmethod
    def _run(self, task: str, req: dict[str, Any]) -> Any:
        """Run ``task`` with ``req`` on the endpoint and return its raw reply.

        An implementation reports each task it sends to ``_sent``.
        """

    def close(self) -> None:  # noqa: B027 - a transport with nothing to release need not override it
        """Release what the transport holds (the local endpoint's worker)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Tally:
    """An observer that counts the tasks and bytes a transport sends, by task name.

    ``tally = Tally.attach(transport)``; then ``tally.calls["stage"]``,
    ``tally.bytes["stage"]``, ``tally.sent`` (benchmarks, tests).
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    @classmethod
    def attach(cls, transport: Transport) -> Tally:
        tally = cls()
        transport.observe(tally)
        return tally

    def __call__(self, task: str, nbytes: int) -> None:
        self.calls[task] += 1
        self.bytes[task] += nbytes

    @property
    def sent(self) -> int:
        return sum(self.calls.values())


def _missing_task(task: str, exc: RemoteError) -> RemoteError:
    """A task newer than the login node's gcbundle fails there as a missing function: say to upgrade."""
    since = TASK_SINCE.get(task)
    if since and task in exc.message and ("attribute" in exc.message or "import" in exc.message):
        return ProtocolMismatch(
            f"the login node's gcbundle has no `{task}` task (it came with gcbundle protocol {since})",
            "upgrade gcbundle on the login node (re-run the Ansible playbook)",
        )
    return exc


def get_transport(endpoint: str) -> Transport:
    """``local``, or a Globus Compute endpoint by UUID or configured alias."""
    if endpoint == "local":
        from bundle.transport.local import LocalTransport  # import cycle: local.py subclasses Transport

        return LocalTransport()
    from bundle.transport.globus import transport_for  # import cycle: globus.py subclasses Transport

    return transport_for(resolve(endpoint))  # resolve() says what to do with an unknown name
