"""What the Globus Compute service and SDK say, as gcbundle errors with what to do.

Everything the service or the SDK raises becomes one of ``bundle.errors``:
HTTP answers of the web API (``translate``, and ``out_of_patience`` for a
429 or 5xx that outlasts the back-off), a service that cannot be reached
(``unreachable``), what the service reports about the endpoint or a task
(``offline``, ``no_result``, ``still_pending``), an answer the SDK cannot
read (``unreadable_result``), and the endpoint's error text for a task that
failed there (``remote_failure``). Pure functions of what was said and
where; the transport (``globus.py``) decides when to retry.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bundle.errors import (
    EndpointUnavailable,
    FunctionNotPermitted,
    GcbundleError,
    NotLoggedIn,
    PayloadTooLarge,
    ProtocolMismatch,
    RateLimited,
    RemoteError,
    TaskTimeout,
    TransportError,
)
from bundle.limits import TASK_LIMIT

LOGIN_HINT = (
    "run `gcbundle login` in a terminal (the Globus Compute SDK's own login), "
    "or set GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET for headless use"
)
#: What to do when the two sides' pickles do not agree.
_SAME_PYTHON = "use the same Python minor version (and dill) on this machine and in the endpoint's environment"


def translate(exc: Any, what: str, task: str | None, *, label: str, endpoint_id: str, has_functions: bool,
              client_credentials: bool) -> GcbundleError:
    """A Globus API error as one of ours, with what to do."""
    import globus_sdk

    status, code = exc.http_status, str(exc.code or "")
    detail = exc.message or exc.http_reason or ""
    ep = f"endpoint {label}" + (f" ({endpoint_id})" if label != endpoint_id else "")
    if isinstance(exc, globus_sdk.AuthAPIError):
        if client_credentials:
            return NotLoggedIn(
                "Globus Auth refused the client credentials in GLOBUS_COMPUTE_CLIENT_ID/GLOBUS_COMPUTE_CLIENT_SECRET "
                f"(HTTP {status} {code or detail})",
                "check both values (the client's secret may have been deleted), or unset them to use your own login",
            )
        return NotLoggedIn(f"your Globus login has expired or was revoked (HTTP {status} {code or detail})",
                           "log in again with `gcbundle login`")
    if status == 401:
        return NotLoggedIn(f"Globus Compute did not accept your credentials (HTTP 401 on: {what})", LOGIN_HINT)
    if code == "FUNCTION_NOT_PERMITTED":
        return FunctionNotPermitted(
            f"{ep} only runs allow-listed functions, and the {task or 'requested'} task's function is not one of them "
            f"({detail})",
            "ask the endpoint's administrators to add gcbundle's function ids to `allowed_functions` "
            f"(`gcbundle register --endpoint {label}` prints them), or put the ids they allowed into the alias: "
            f"`gcbundle endpoints add NAME {endpoint_id} --function TASK=ID ... --replace`",
        )
    if code.startswith("FUNCTION_") and status in (403, 404):
        if has_functions:
            return FunctionNotPermitted(
                f"Globus Compute will not run the registered function of the {task or 'requested'} task for you "
                f"({code}: {detail})",
                f"the ids in alias {label} must be registered with --public or shared with your group "
                f"(`gcbundle register --endpoint {label} --public`); ask whoever registered them",
            )
        return TransportError(f"Globus Compute cannot use the {task or 'requested'} task's function ({code}: {detail})",
                              "run the command again: gcbundle registers the function anew")
    if code == "TASK_PAYLOAD_TOO_LARGE" or status == 413:
        return PayloadTooLarge(
            f"Globus Compute refused the {task or 'submitted'} task as too large ({code or 'HTTP 413'}: {detail})",
            f"gcbundle keeps each task under {TASK_LIMIT} bytes after serialization, so the service's limit is lower "
            "than that: report this, with the output of --debug",
        )
    if status == 404 and what.startswith("task"):
        return TransportError(f"Globus Compute no longer knows the {task or ''} task ({detail})",
                              "results not fetched within 30 minutes are dropped by the service: run the command again")
    if status == 404:
        return EndpointUnavailable(
            f"Globus Compute knows no {ep} ({code or 'HTTP 404'}: {detail})",
            "check the UUID (`globus-compute-endpoint list` on the login node shows it); "
            "fix the alias with `gcbundle endpoints add NAME UUID --replace`",
        )
    if status == 403:
        return EndpointUnavailable(
            f"Globus Compute does not let you use {ep} ({code or 'HTTP 403'}: {detail})",
            "ask the endpoint's owner or administrators for access "
            "(its authentication policy or identity mapping leaves you out)",
        )
    if status is not None and status >= 500:
        return TransportError(
            f"the Globus Compute service failed (HTTP {status} on: {what}); the task may or may not have been accepted",
            "check `gcbundle list` / `gcbundle status` and run the command again",
        )
    return TransportError(f"Globus Compute refused the request (HTTP {status} {code}: {detail}; on: {what})",
                          "run the command again with --debug for details")


def out_of_patience(status: int | None, waited: float, what: str) -> GcbundleError:
    """HTTP 429 or 5xx still, after backing off for as long as the transport's patience lasts."""
    if status == 429:
        return RateLimited(
            f"Globus Compute still limits this client's requests after {waited:.0f} s of backing off "
            f"(HTTP 429 on: {what})",
            "another program may be sending many requests as you: wait a few minutes and run the command again",
        )
    return TransportError(f"the Globus Compute service kept failing for {waited:.0f} s (HTTP {status} on: {what})",
                          "check https://status.globus.org and run the command again later")


def unreachable(what: str, exc: BaseException) -> TransportError:
    """The SDK could not reach the service at all (a ``globus_sdk.NetworkError``)."""
    return TransportError(f"cannot reach the Globus Compute service ({what}): {type(exc).__name__}",
                          "check your network connection and run the command again")


def offline(label: str, extra: str = "") -> EndpointUnavailable:
    """The service reports the endpoint offline; ``extra`` says what was waiting for it."""
    return EndpointUnavailable(
        f"endpoint {label} is offline{extra}",
        "start it on the login node (`globus-compute-endpoint start NAME`) or ask the site's administrators; "
        f"`gcbundle doctor --endpoint {label}` checks again",
    )


def no_result(task: str, status: Mapping[str, Any], label: str) -> RemoteError:
    """The service reports the task done, with neither a result nor an exception."""
    return RemoteError(
        f"the {task} task ended without a result "
        f"({status.get('status')}: {status.get('reason', 'no reason given')})",
        f"run the command again; `gcbundle doctor --endpoint {label}` checks the endpoint",
    )


def still_pending(task: str, task_id: str, status: str, elapsed: float, label: str) -> TaskTimeout:
    """A task the endpoint has not finished within the transport's timeout (and the endpoint is online)."""
    return TaskTimeout(
        f"the {task} task has waited {elapsed:.0f} s on endpoint {label} without finishing (task {task_id}, {status})",
        "the endpoint may be busy: a default endpoint runs one task at a time, so another task "
        "(an earlier gcbundle command's, or anyone's sent as you) may hold it; try again later, "
        f"check with `gcbundle doctor --endpoint {label}`, or allow longer with GCBUNDLE_TASK_TIMEOUT=SECONDS",
    )


def unreadable_result(task: str, warned: list[str]) -> ProtocolMismatch:
    """The SDK cannot deserialize the login node's answer (a ``SerializationError``)."""
    return ProtocolMismatch(
        f"the login node's answer to the {task} task cannot be read here" + versions_note(warned),
        _SAME_PYTHON,
    )


def stale_function(exc: GcbundleError) -> bool:
    """A service error about a function id (not the endpoint's allow list)."""
    return re.search(r"FUNCTION_(?!NOT_PERMITTED)[A-Z_]+", str(exc)) is not None


_RESULT_SIZE = re.compile(
    r"MaxResultSizeExceeded\((\d+),\s*(\d+)\)"
    r"|Task result of (\d+)B exceeded current limit of (\d+)B"
)


def versions_note(warned: list[str]) -> str:
    notes = [w.strip().splitlines()[0] for w in warned if "version" in w.lower()]
    return f" ({notes[0]})" if notes else ""


def remote_failure(task: str, remote: str, warned: list[str]) -> GcbundleError:
    """The endpoint's error text for a failed task, as one of our errors."""
    text = (remote or "").strip()
    last = text.splitlines()[-1].strip() if text else "no details"
    m = _RESULT_SIZE.search(text)
    if m or "MaxResultSizeExceeded" in text:
        size, limit = (m.group(1) or m.group(3), m.group(2) or m.group(4)) if m else ("?", "?")
        return PayloadTooLarge(
            f"the {task} task's result ({size} bytes) exceeded the endpoint's result limit ({limit} bytes): "
            "MaxResultSizeExceeded",
            "gcbundle sizes result chunks for a 10 MiB limit; if the site set a lower one, ask its administrators, "
            "otherwise report this gcbundle bug",
        )
    if "FUNCTION_NOT_PERMITTED" in text or ("not permitted" in text.lower() and "function" in text.lower()):
        return FunctionNotPermitted(
            f"the endpoint refused to run the {task} task's function: {last}",
            "ask the endpoint's administrators to allow gcbundle's function ids (`gcbundle register` prints them)",
        )
    if re.search(r"No module named '(login_node|bundle)'", text):
        return RemoteError(
            "gcbundle is not installed in the endpoint's Python environment" + versions_note(warned),
            "provision the login node (the Ansible playbook), "
            "or pip install gcbundle into the environment the endpoint runs",
        )
    if re.search(r"module 'login_node\.tasks' has no attribute", text):
        return ProtocolMismatch(f"the login node's gcbundle is older than this client: it has no {task} task",
                                "upgrade gcbundle on the login node (re-run the Ansible playbook)")
    if re.search(r"dill|pickle|serializ|WorkerLost", text, re.IGNORECASE):
        return ProtocolMismatch(f"the endpoint could not run the {task} task: {last}" + versions_note(warned),
                                _SAME_PYTHON)
    return RemoteError(f"the {task} task failed on the login node: {last}",
                       "see `gcbundle doctor`, or rerun with --debug for the remote traceback")
