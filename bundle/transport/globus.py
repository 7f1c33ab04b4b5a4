"""The ``globus`` transport: gcbundle's task functions on a real Globus Compute endpoint.

Why the SDK's ``Client`` and not its ``Executor``
    gcbundle sends one short task at a time and needs its answer before doing
    anything else (stage a chunk, then the next; fetch a result chunk, write it,
    then the next). The ``Executor`` is built for the opposite: many tasks in
    flight, a background submitter thread, and results pushed over AMQP (port
    5671, often closed on campus and laptop networks) to futures that live as
    long as the process. With the ``Client`` every step is one plain HTTPS
    request that we can see, so we can pace ourselves under the service's limit
    of 20 requests per 10 s and back off on HTTP 429; each result is fetched
    once, by task id, handed straight to the caller (who writes it to disk
    before asking for the next), and dropped from memory; and the whole path
    can be tested against a fake of the documented web API. The ``Client`` is
    also what ``Executor.submit_to_registered_function`` uses underneath:
    ``create_batch`` + ``batch_run`` with a function id.

Functions
    Globus Compute runs registered functions only. When the endpoint's alias
    holds registered ids (``gcbundle register``, needed where administrators
    restrict endpoints with ``allowed_functions``), tasks name those ids and the
    function is never serialized again. Otherwise the transport registers each
    task function on first use, the way the ``Executor`` does, and remembers
    the id on disk (keyed by the serialized code and the Globus identity), so a
    ``gcbundle status`` does not register a new function every time it runs.
    Both ways send the exact bytes the ``local`` transport executes: the
    function serialized by the SDK's ``ComputeSerializer`` and ``(req,), {}``
    packed as the task's arguments.

Authentication
    The SDK's own: its token storage and login flow, or client credentials
    from ``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET`` for
    headless use. gcbundle never reads, stores or logs a token. Without a
    terminal the transport does not start a login flow (nobody could answer
    it); it says how to log in instead.

Errors
    Everything the service or the SDK raises becomes one of ``bundle.errors``
    with a line on what to do (the translation lives in ``globus_errors.py``).
    Replies travel as the login node wrote them, so ``protocol.unwrap`` (in
    ``Transport.call``) reports a login node whose gcbundle speaks another
    protocol, as for ``local``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bundle import __version__
from bundle.endpoints import resolve
from bundle.errors import FunctionNotPermitted, GcbundleError, NotLoggedIn, PayloadTooLarge, TransportError, UsageError
from bundle.limits import TASK_LIMIT
from bundle.protocol import PROTOCOL, TASKS
from bundle.transport import Transport
from bundle.transport.globus_errors import (
    LOGIN_HINT,
    no_result,
    offline,
    out_of_patience,
    remote_failure,
    stale_function,
    still_pending,
    translate,
    unreachable,
    unreadable_result,
)
from bundle.transport.wire import task_function

log = logging.getLogger(__name__)

#: How long one task may stay pending before we give up on it (``GCBUNDLE_TASK_TIMEOUT``).
DEFAULT_TASK_TIMEOUT = 600.0
#: The service allows 20 requests per 10 s per client; we keep two spare for
#: whatever else the same identity runs (another gcbundle, a notebook).
RATE_LIMIT = 18
RATE_WINDOW = 10.0
#: How long we keep backing off on HTTP 429 / 503 before calling it a failure.
RATE_LIMIT_PATIENCE = 600.0
#: Task status polling: first interval, growth, ceiling (seconds).
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.5, 1.5, 5.0
#: A task pending this long is most likely waiting for the endpoint to start a
#: user endpoint process and its worker (after an idle stop): say so once.
COLD_START_NOTICE = 5.0


def _stderr_note(text: str) -> None:
    print(f"gcbundle: {text}", file=sys.stderr, flush=True)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def _client_credentials() -> bool:
    return bool(os.environ.get("GLOBUS_COMPUTE_CLIENT_ID") and os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET"))


def _identity_namespace() -> str:
    """Whose functions these are: the same split the SDK's token storage makes."""
    env = os.environ.get("GLOBUS_SDK_ENVIRONMENT", "production")
    if _client_credentials():
        return f"clientprofile/{env}/{os.environ['GLOBUS_COMPUTE_CLIENT_ID']}"
    return f"user/{env}"


def make_client() -> Any:
    """A ``globus_compute_sdk.Client`` using the SDK's own authentication.

    The service's version check is skipped: it costs a request per command,
    and the service refuses a too-old SDK on its own.
    """
    from globus_compute_sdk import Client

    return Client(do_version_check=False)


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds, by sleeping before a request."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.limit, self.window = limit, window
        self._clock, self._sleep = clock, sleep
        self._stamps: deque[float] = deque()

    def acquire(self) -> None:
        now = self._clock()
        while self._stamps and now - self._stamps[0] >= self.window:
            self._stamps.popleft()
        if len(self._stamps) >= self.limit:
            self._sleep(self._stamps[0] + self.window - now)
            now = self._clock()
            self._stamps.popleft()
        self._stamps.append(now)


#: One pace for every transport of a process: the service counts per client, not per object.
_SHARED_LIMITER = RateLimiter()


class FunctionIds:
    """Function ids this client registered itself, by Globus identity and code digest.

    A file in the user's cache dir: losing it only costs a registration.
    """

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            import platformdirs

            path = Path(platformdirs.user_cache_dir("gcbundle")) / "globus-functions.json"
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def put(self, key: str, function_id: str | None) -> None:
        data = self._load()
        if function_id is None:
            data.pop(key, None)
        else:
            data[key] = function_id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:  # a cache: say so, carry on
            log.debug("cannot write %s: %s", self.path, exc)


class GlobusTransport(Transport):
    """Sends gcbundle's task functions to one Globus Compute endpoint, one at a time."""

    name = "globus"

    def __init__(self, endpoint_id: str, *, label: str | None = None, functions: Mapping[str, str] | None = None,
                 client: Any = None, task_timeout: float | None = None, interactive: bool | None = None,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None,
                 rate_limit_patience: float = RATE_LIMIT_PATIENCE, function_ids: FunctionIds | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.endpoint_id = endpoint_id
        self.label = label or endpoint_id
        #: Registered function ids by task name; empty means "register on first use".
        self.functions = dict(functions or {})
        if task_timeout is None:
            task_timeout = _env_float("GCBUNDLE_TASK_TIMEOUT", DEFAULT_TASK_TIMEOUT)
        self.task_timeout = task_timeout
        if interactive is None:  # someone at a terminal can answer the SDK's login prompt (on stdout)
            at_terminal = sys.stdin.isatty() and sys.stdout.isatty()
            interactive = at_terminal and not os.environ.get("GCBUNDLE_NO_LOGIN")
        self.interactive = interactive
        self.rate_limit_patience = rate_limit_patience
        self._sleep = sleep or time.sleep
        self._clock = clock or time.monotonic
        if sleep is None and clock is None:
            self._limiter = _SHARED_LIMITER
        else:  # an injected clock and sleep (tests): a pace of their own
            self._limiter = RateLimiter(clock=self._clock, sleep=self._sleep)
        self._function_ids = function_ids or FunctionIds()
        self._auto_ids: dict[str, tuple[str, str]] = {}  # task -> (function id, cache key)
        self._client_obj = client
        self._ready = False
        self._endpoint_checked = False
        self._warnings: list[str] = []
        #: Progress notes (stderr by default): a task that waits for a cold start.
        self.notify = notify or _stderr_note
        #: Sent with every task. The service starts one user endpoint process per
        #: distinct user_endpoint_config (each a cold start, each with its own
        #: worker), so all tasks of one transport, hence of one alias, send the same.
        self.user_endpoint_config: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"GlobusTransport({self.label!r}, endpoint_id={self.endpoint_id!r})"

    # -- the SDK client, logged in -------------------------------------------------------
    def client(self) -> Any:
        """The SDK ``Client``, created on first use, with credentials checked."""
        if self._client_obj is None:
            try:
                self._client_obj = make_client()
            except ValueError as exc:  # the SDK's own check of half-set client credentials
                raise NotLoggedIn(f"cannot set up Globus credentials: {exc}", LOGIN_HINT) from None
        if not self._ready:
            self._take_over_retries(self._client_obj)
            self._ensure_login(self._client_obj)
            self._ready = True
        return self._client_obj

    @staticmethod
    def _take_over_retries(client: Any) -> None:
        """Let this transport, not the SDK, retry 429 and 5xx answers.

        The SDK's web clients retry those a few times with real sleeps and then
        raise; we pace, honour ``Retry-After`` for as long as our patience
        lasts, and never re-send a submission that the service may have taken.
        The SDK keeps retrying dropped connections and refreshing expired
        access tokens (HTTP 401), which is what we want.
        """
        web = getattr(client, "_compute_web_client", None)
        for sub in (getattr(web, "v2", None), getattr(web, "v3", None)):
            config = getattr(sub, "retry_config", None)
            if config is not None:
                config.retry_after_status_codes = ()
                config.transient_error_status_codes = ()

    def _ensure_login(self, client: Any) -> None:
        app = getattr(client, "app", None)
        if app is None:  # a client built around a ready authorizer
            return
        required = self._guard("check your Globus login", app.login_required)
        if not required:
            return
        if not self.interactive and not _client_credentials():
            raise NotLoggedIn("you are not logged in to Globus Compute", LOGIN_HINT)
        # The SDK's own flow: a link and a code at a terminal, or, with client
        # credentials, a token request that needs nobody.
        self._guard("log in to Globus", app.login)

    # -- requests, paced and translated ---------------------------------------------------
    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, idempotent: bool = True,
               task: str | None = None) -> Any:
        """Call the SDK: paced, with back-off on 429/503 (and 5xx when safe), errors translated."""
        import globus_sdk
        from globus_sdk.token_storage import TokenValidationError

        started = self._clock()
        attempt = 0
        while True:
            self._limiter.acquire()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = fn(*args)
                self._warnings += [str(w.message) for w in caught]
                return result
            except globus_sdk.GlobusAPIError as exc:
                status = exc.http_status
                retry = status in (429, 503) or (idempotent and status in (500, 502, 504))
                if not retry or isinstance(exc, globus_sdk.AuthAPIError):
                    raise translate(
                        exc, what, task,
                        label=self.label,
                        endpoint_id=self.endpoint_id,
                        has_functions=bool(self.functions),
                        client_credentials=_client_credentials(),
                    ) from None
                delay = self._retry_after(exc, attempt)
                waited = self._clock() - started
                if waited + delay > self.rate_limit_patience:
                    raise out_of_patience(status, waited, what) from None
                log.warning("Globus Compute answered HTTP %s to %s; retrying in %.0f s", status, what, delay)
                self._sleep(delay)
                attempt += 1
            except globus_sdk.NetworkError as exc:
                raise unreachable(what, exc) from None
            except EOFError:
                # The SDK started a login flow (e.g. Globus asked for a fresh session) and nobody can answer it.
                raise NotLoggedIn(f"Globus asked for a new login ({what}) and there is no terminal to do it",
                                  LOGIN_HINT) from None
            except TokenValidationError as exc:
                raise NotLoggedIn(f"your stored Globus credentials cannot be used: {exc}", LOGIN_HINT) from None

    @staticmethod
    def _retry_after(exc: Any, attempt: int) -> float:
        value = (exc.headers or {}).get("Retry-After")
        try:
            if value is not None:
                return max(0.0, min(float(value), 120.0))
        except ValueError:
            pass
        return float(min(2 ** attempt, 30))

    # -- the endpoint --------------------------------------------------------------------
    def endpoint_status(self) -> dict[str, Any]:
        """The service's view of the endpoint (``status``: online/offline, worker details)."""
        client = self.client()
        data = self._guard(f"endpoint {self.label} status", client.get_endpoint_status, self.endpoint_id)
        return dict(data) if isinstance(data, Mapping) else {"status": str(data)}

    def _check_endpoint(self) -> None:
        """Fail fast on an unknown or offline endpoint instead of waiting for a task that cannot run."""
        if self._endpoint_checked:
            return
        if str(self.endpoint_status().get("status", "")).lower() == "offline":
            raise offline(self.label)
        self._endpoint_checked = True

    # -- functions -----------------------------------------------------------------------
    def _function_id(self, task: str, fn: Callable[..., Any]) -> tuple[str, str | None]:
        """The id to submit ``task`` with, and the cache key when we registered it ourselves."""
        if self.functions:
            fid = self.functions.get(task)
            if not fid:
                raise FunctionNotPermitted(
                    f"the alias {self.label} holds registered function ids, but none for the {task} task",
                    f"run `gcbundle register --endpoint {self.label}` again "
                    "and have the administrators allow the new ids",
                )
            return fid, None
        if task in self._auto_ids:
            return self._auto_ids[task]
        from globus_compute_sdk.sdk.client import FunctionRegistrationData

        client = self.client()
        code = FunctionRegistrationData(function=fn, serializer=client.fx_serializer).function_code
        key = f"{_identity_namespace()}:{hashlib.sha256(code.encode()).hexdigest()}"
        fid = self._function_ids.get(key)
        if fid is None:
            register = functools.partial(client.register_function, fn, _description(task))
            fid = str(self._guard(f"register the {task} task function", register, idempotent=False, task=task))
            self._function_ids.put(key, fid)
        self._auto_ids[task] = (fid, key)
        return fid, key

    def register_all(self, *, public: bool = False, group: str | None = None) -> dict[str, str]:
        """Register every task function once; their ids, by task name (``gcbundle register``)."""
        client = self.client()
        out = {}
        for task in TASKS:
            register = functools.partial(client.register_function, task_function(task),
                                         description=_description(task), public=public, group=group)
            out[task] = str(self._guard(f"register the {task} task function", register, idempotent=False, task=task))
        return out

    # -- one task ------------------------------------------------------------------------
    def _run(self, task: str, req: dict[str, Any]) -> Any:
        self.client()
        self._check_endpoint()
        task_id = self._submit(task, req)
        return self._wait(task, task_id)

    def _submit(self, task: str, req: dict[str, Any]) -> str:
        fn = task_function(task)
        for fresh in (False, True):
            fid, key = self._function_id(task, fn)
            client = self.client()
            batch = client.create_batch(user_endpoint_config=self.user_endpoint_config)
            batch.add(fid, (req,), {})
            payload = batch.prepare()["tasks"][fid][0]
            if len(payload) > TASK_LIMIT:
                raise PayloadTooLarge(
                    f"the {task} task is {len(payload)} bytes after serialization, above the {TASK_LIMIT}-byte limit",
                    "this is a gcbundle bug: chunk sizes should keep tasks under the limit",
                )
            try:
                reply = self._guard(f"submit the {task} task to endpoint {self.label}",
                                    client.batch_run, self.endpoint_id, batch, idempotent=False, task=task)
            except TransportError as exc:
                # A function id we registered ourselves may have been deleted, or
                # belong to the identity we were logged in as before: register anew, once.
                if key is not None and not fresh and stale_function(exc):
                    self._function_ids.put(key, None)
                    self._auto_ids.pop(task, None)
                    continue
                raise
            self._sent(task, len(payload))
            try:
                return str(reply["tasks"][fid][0])
            except (KeyError, IndexError, TypeError):
                raise TransportError(f"Globus Compute accepted the {task} task but returned no task id",
                                     "run the command again") from None
        raise AssertionError("unreachable")

    def _wait(self, task: str, task_id: str) -> Any:
        """Poll until the task ends; return its value the moment it is fetched."""
        from globus_compute_sdk.errors import SerializationError, TaskExecutionFailed

        client = self.client()
        started = self._clock()
        interval = POLL_FIRST
        noted = False
        self._warnings = []
        while True:
            try:
                st = self._guard(f"task {task_id} ({task})", client.get_task, task_id, task=task)
            except TaskExecutionFailed as exc:
                raise remote_failure(task, exc.remote_data, self._warnings) from None
            except SerializationError:
                raise unreadable_result(task, self._warnings) from None
            finally:
                # The SDK keeps every fetched result in a table for the life of the
                # client; a results download would pile up there. The caller has it now.
                getattr(client, "_task_status_table", {}).pop(task_id, None)
            if not st.get("pending", True):
                if "result" in st:
                    return st["result"]
                raise no_result(task, st, self.label)
            elapsed = self._clock() - started
            if elapsed >= self.task_timeout:
                raise self._pending_too_long(task, task_id, str(st.get("status")), elapsed)
            if not noted and elapsed >= COLD_START_NOTICE:
                # An endpoint stops its user endpoint process when idle; the next
                # task waits while it starts again. Say so rather than look hung.
                self.notify(f"the {task} task has waited {elapsed:.0f} s ({st.get('status')}): "
                            f"endpoint {self.label} is probably starting a worker "
                            "(a cold start after idling takes ~20 s), or busy with another task")
                noted = True
            self._sleep(min(interval, max(0.0, self.task_timeout - elapsed)))
            interval = min(POLL_MAX, interval * POLL_GROWTH)

    def _pending_too_long(self, task: str, task_id: str, status: str, elapsed: float) -> GcbundleError:
        note = f" (task {task_id}, still {status} after {elapsed:.0f} s; it stays queued and may run later)"
        try:
            if str(self.endpoint_status().get("status", "")).lower() == "offline":
                return offline(self.label, note)
        except GcbundleError:
            pass
        return still_pending(task, task_id, status, elapsed, self.label)


def _description(task: str) -> str:
    return f"gcbundle {__version__} login-node task `{task}` (protocol {PROTOCOL})"


def transport_for(endpoint: Any) -> GlobusTransport:
    """A transport for a resolved alias or UUID (``bundle.endpoints.Endpoint``)."""
    return GlobusTransport(endpoint.uuid, label=endpoint.label, functions=endpoint.functions)


def login(force: bool = False) -> dict[str, Any]:
    """Run the SDK's own login flow, or with client credentials fetch their tokens.

    Tokens land in the SDK's token storage, where every Globus Compute tool
    finds them; gcbundle keeps none itself.
    """
    headless = _client_credentials()
    if not headless and not sys.stdin.isatty():
        raise NotLoggedIn(
            "logging in needs a terminal: the SDK prints a link and asks for the code Globus shows",
            "run `gcbundle login` in a terminal, or set GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET",
        )
    client = make_client()
    t = GlobusTransport("00000000-0000-0000-0000-000000000000", label="login", client=client, interactive=True)
    if force and not headless and getattr(client, "app", None) is not None:
        t._guard("log in to Globus", lambda: client.app.login(force=True))
    t.client()
    from globus_compute_sdk.sdk.compute_dir import get_compute_dir

    return {"headless": headless, "token_storage": str(get_compute_dir() / "storage.db")}


def require_globus(endpoint: str) -> GlobusTransport:
    """The globus transport for ``endpoint`` (an alias or UUID), refusing ``local``."""
    if endpoint == "local":
        raise UsageError("the local endpoint has no Globus functions to register",
                         "name a Globus Compute endpoint: an alias or a UUID")
    return transport_for(resolve(endpoint))
