"""One exception family for the whole tool.

Every error says what went wrong and what to do about it; the CLI prints the
message on one line and maps the class to an exit code. Login-node task
functions send these back by name (see ``protocol``), so a remote error raises
the same class on the client.
"""
from __future__ import annotations


class GcbundleError(Exception):
    """Base of every error gcbundle raises on purpose.

    ``data`` and ``human`` are what a failing command still has to show: the
    CLI puts ``data`` in the ``--json`` envelope and prints ``human`` (e.g.
    doctor's table) above the one-line error.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, data: object = None, human: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.data = data
        self.human = human

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def to_json(self) -> dict[str, str | None]:
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint}


class UsageError(GcbundleError):
    """A command was called with arguments that cannot work."""

    exit_code = 2


class BundleError(GcbundleError):
    """A workflow cannot be packed, or a bundle is malformed or hostile."""

    exit_code = 3


class ManifestError(BundleError):
    """``gcbundle.json`` is missing, malformed or disagrees with the archive."""


class SiteProfileError(GcbundleError):
    """A site profile or Parsl config module is unknown, broken or incomplete."""

    exit_code = 4


class SiteEnvironmentError(GcbundleError):
    """The login node's Python environment lacks what the workflow or its site profile needs
    (found by the launch task before a run exists)."""

    exit_code = 13


class RunNotFound(GcbundleError):
    """No run matches an id or prefix (client registry or login node)."""

    exit_code = 5


class RunStateError(GcbundleError):
    """The run is in a state that does not allow the operation."""

    exit_code = 6


class TransportError(GcbundleError):
    """A task could not be delivered to, or answered by, the endpoint."""

    exit_code = 7


class ProtocolMismatch(TransportError):
    """Client and login node speak incompatible protocol versions."""


class RemoteError(TransportError):
    """A task raised an unexpected exception on the login node."""


class MalformedReply(RemoteError):
    """A login node's reply lacks a field or has one of the wrong type (``bundle.contracts``)."""


class PayloadTooLarge(TransportError):
    """A task payload or result is above the Globus Compute size limit."""


class NotLoggedIn(TransportError):
    """No usable Globus credentials: never logged in, expired, revoked, or rejected client credentials."""


class EndpointUnavailable(TransportError):
    """The Globus Compute endpoint is unknown, not ours to use, or offline."""


class FunctionNotPermitted(TransportError):
    """The endpoint only runs allow-listed functions, and this task's function is not one of them."""


class RateLimited(TransportError):
    """The Globus Compute service kept refusing requests for too many requests, beyond our patience."""


class TaskTimeout(TransportError):
    """A task stayed pending on the endpoint longer than the transport's timeout."""


class RegistryError(GcbundleError):
    """The client registry cannot be read or written."""

    exit_code = 8


class RegistryLocked(RegistryError):
    """Another gcbundle process holds the registry longer than we wait: not damage; wait and retry."""


class ResultsError(GcbundleError):
    """Results could not be fetched or verified."""

    exit_code = 9


class HomeError(GcbundleError):
    """``$GCBUNDLE_HOME`` cannot be created or written (on the login node; on this
    machine for the ``local`` endpoint)."""

    exit_code = 12


class RunFailed(GcbundleError):
    """A run that a command waited for (``--wait``) ended failed, cancelled or lost."""

    exit_code = 11


class ChecksFailed(GcbundleError):
    """``gcbundle doctor`` found a check that fails; carries the whole report."""

    exit_code = 10


#: Classes a login-node task may name in an error envelope; anything else
#: arrives as ``RemoteError``.
BY_NAME: dict[str, type[GcbundleError]] = {
    cls.__name__: cls
    for cls in (
        GcbundleError,
        UsageError,
        BundleError,
        ManifestError,
        SiteProfileError,
        SiteEnvironmentError,
        RunNotFound,
        RunStateError,
        TransportError,
        ProtocolMismatch,
        RemoteError,
        MalformedReply,
        PayloadTooLarge,
        NotLoggedIn,
        EndpointUnavailable,
        FunctionNotPermitted,
        RateLimited,
        TaskTimeout,
        RegistryError,
        RegistryLocked,
        ResultsError,
        HomeError,
    )
}

#: Exit codes of the ``gcbundle`` command, one per error class, and what each
#: means. The README's table is this one (a test compares them), and a test
#: walks every command's error cases against it.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "an unexpected error: a bug (rerun with --debug for the traceback, and report it)",
    UsageError.exit_code: (
        "usage: an unknown or missing option or argument, a malformed --arg/--set, an unknown endpoint alias"
    ),
    BundleError.exit_code: "bundle: the workflow cannot be packed, or a bundle is malformed or hostile",
    SiteProfileError.exit_code: "site profile: unknown, broken, a missing required or unknown parameter",
    RunNotFound.exit_code: "unknown run id (or an ambiguous prefix)",
    RunStateError.exit_code: "the run's state does not allow this (e.g. results of a running run)",
    TransportError.exit_code: "transport: Globus login, the endpoint, the service, protocol versions",
    RegistryError.exit_code: "registry: the client's run registry (or its folder) cannot be read or written",
    ResultsError.exit_code: "results: cannot be fetched, verified or written",
    ChecksFailed.exit_code: "a `doctor` check failed",
    RunFailed.exit_code: "the run waited for (`submit --wait`, `resume --wait`) ended failed, cancelled or lost",
    HomeError.exit_code: "GCBUNDLE_HOME cannot be created or written",
    SiteEnvironmentError.exit_code: (
        "the login node's environment lacks a module the workflow imports, or the Parsl its site profile needs "
        "(no run was created)"
    ),
    130: "interrupted (Ctrl-C); a run already started keeps going",
}
