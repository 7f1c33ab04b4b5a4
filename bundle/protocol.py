"""The wire between client and login node: versions and envelopes.

Every task function takes one dict and returns one dict. The request carries
the protocol version it needs; the reply carries the login node's, and either
``data`` or an ``error`` that names a class of ``bundle.errors``. A change that
old clients or old login nodes cannot understand bumps ``PROTOCOL``; the side
that is behind is told to upgrade.

A request is stamped with the lowest version that can serve it
(``request_level``), not with the newest the client speaks, so a newer client
keeps working with an older login node for everything that login node knows,
and uses a newer feature only after the login node has said it has it.

    1  the tasks in TASKS
    2  delta staging: ``probe`` with ``bases`` answers which of those bundles
       the login node holds; ``stage`` with ``base`` takes the chunks of a
       bundle archive that holds only the files the base lacks (by sha256),
       and the login node rebuilds the whole bundle from the two
    3  the ``runs`` task (the runs a login node holds, to list, refresh and
       adopt them); ``results_manifest`` with ``page`` sends the listing in
       pages (any number of files); the ``prune`` task (finished runs and
       unused bundles). A login node of protocol 2 refuses a paged request
       (the client then asks for the whole listing) and has neither task
       (the client says to upgrade it)
"""
from __future__ import annotations

from typing import Any

from bundle import __version__
from bundle.errors import BY_NAME, GcbundleError, ProtocolMismatch, RemoteError

PROTOCOL = 3
#: Oldest peer protocol this side still understands.
MIN_PROTOCOL = 1
#: The version that brought delta staging.
DELTA = 2
#: The version that brought the ``runs`` task and paged results listings.
LISTINGS = 3

#: The version that brought the ``prune`` task.
PRUNE = 3

#: Names of the task functions in ``login_node.tasks``.
TASKS = (
    "probe", "stage", "launch", "status", "logs", "results_manifest", "results_chunk",
    "cancel", "doctor", "prune", "runs",
)
#: Tasks that a login node of an older protocol does not have.
TASK_SINCE = {"prune": PRUNE, "runs": LISTINGS}


def request_level(fields: dict[str, Any]) -> int:
    """The lowest protocol version that understands a request with these fields."""
    if "prune" in fields:
        return PRUNE
    if "page" in fields or "run_ids" in fields or "after" in fields:
        return LISTINGS
    return DELTA if fields.get("base") is not None else 1


def request(**fields: Any) -> dict[str, Any]:
    return {"protocol": request_level(fields), "client_version": __version__, **fields}


def supports_delta(probe_reply: dict[str, Any]) -> bool:
    """Whether a login node's answer to ``probe`` with ``bases`` says it can take a delta."""
    return isinstance(probe_reply.get("bases"), list) and int(probe_reply.get("protocol") or 1) >= DELTA


def check_request(req: Any) -> dict[str, Any]:
    """Login side: refuse a request from a client whose protocol we cannot serve."""
    if not isinstance(req, dict):
        raise ProtocolMismatch("the task's argument is not a gcbundle request", "use the gcbundle client to send tasks")
    proto = req.get("protocol")
    if not isinstance(proto, int) or isinstance(proto, bool):
        raise ProtocolMismatch("the request carries no protocol version", "use the gcbundle client to send tasks")
    if proto > PROTOCOL:
        raise ProtocolMismatch(
            f"the client speaks gcbundle protocol {proto} (gcbundle {req.get('client_version', '?')}), "
            f"the login node only up to {PROTOCOL} (gcbundle {__version__})",
            "upgrade gcbundle on the login node (re-run the Ansible playbook), or use an older client",
        )
    if proto < MIN_PROTOCOL:
        raise ProtocolMismatch(
            f"the client speaks gcbundle protocol {proto}, "
            f"the login node needs at least {MIN_PROTOCOL} (gcbundle {__version__})",
            "upgrade your gcbundle client",
        )
    return req


def reply(data: Any) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "server_version": __version__, "ok": True, "data": data}


def error_reply(exc: GcbundleError) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "server_version": __version__, "ok": False, "error": exc.to_json()}


def unwrap(resp: Any) -> Any:
    """Client side: the reply's data, or the error it names, raised."""
    if not isinstance(resp, dict) or not isinstance(resp.get("ok"), bool):
        raise RemoteError("the login node sent a reply gcbundle does not understand",
                          "check that the endpoint runs gcbundle's login-node side (`gcbundle doctor`)")
    proto = resp.get("protocol")
    if isinstance(proto, int) and proto < MIN_PROTOCOL:
        raise ProtocolMismatch(
            f"the login node speaks gcbundle protocol {proto} (gcbundle {resp.get('server_version', '?')}), "
            f"this client needs at least {MIN_PROTOCOL}",
            "upgrade gcbundle on the login node (re-run the Ansible playbook)",
        )
    if resp["ok"] is True:
        return resp.get("data")
    err = resp.get("error")
    if not isinstance(err, dict):
        err = {}
    cls = BY_NAME.get(str(err.get("type"))[:40], RemoteError)
    message = err.get("message")
    if not isinstance(message, str):
        message = "the login node reported an error it did not describe"
    hint = err.get("hint") if isinstance(err.get("hint"), str) else None
    raise cls(message.replace("\n", " ")[:2000], hint[:1000] if hint else None)
