"""A fake of the Globus Compute cloud service, at the HTTP level.

THE GLOBUS SERVICE IS FAKED HERE: it cannot be reached from the test
machines. Everything on our side of the wire is real: the Globus Compute SDK
(``Client``, its auth app and token storage, ``globus_sdk``'s HTTP layer) sends
real requests, which the ``responses`` library answers for the documented web
API routes the SDK calls:

    POST /v3/functions                       register a function
    POST /v3/endpoints/<endpoint>/submit     submit a batch of tasks
    GET  /v2/tasks/<task>                    a task's status and result
    GET  /v2/endpoints/<endpoint>/status     online / offline
    GET  /v2/version                         (the SDK's version check)
    POST https://auth.globus.org/v2/oauth2/token   (token refresh, client credentials)

Response shapes follow the examples ``globus_sdk.testing`` ships for these
routes, and errors the ``{"code": ..., "message": ...}`` documents the service
sends (e.g. ``403 FUNCTION_NOT_PERMITTED``). Tasks the fake accepts are run
for real: the function code registered earlier and the submitted arguments are
joined into the task buffer an endpoint receives, packed as a messagepack
``Task`` and run by the endpoint's own ``execute_task`` in a separate process,
so the task functions behave exactly as on a login node.
"""
from __future__ import annotations

import json
import multiprocessing
import re
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import responses

COMPUTE = "https://compute.api.globus.org"
AUTH = "https://auth.globus.org"
COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
#: The access token the fake login holds; tests check it never leaks into our messages.
ACCESS_TOKEN = "fake-access-token-3b9c1e"


def _execute(task_bytes: bytes, task_id: uuid.UUID, run_dir: str, limit: int) -> bytes:
    from globus_compute_endpoint.engines.helper import execute_task

    return execute_task(task_bytes, task_id, run_dir=run_dir, result_size_limit=limit)


@dataclass
class Failure:
    """An HTTP error the fake answers instead of doing its job, ``times`` times."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


class FakeComputeService:
    """The Globus Compute web service, as far as gcbundle uses it."""

    def __init__(
        self, rsps: responses.RequestsMock, endpoint_id: str, workdir: Path, *, result_limit: int = 10 * 1024 * 1024
    ) -> None:
        self.rsps = rsps
        self.endpoint_id = endpoint_id
        self.workdir = workdir
        self.result_limit = result_limit
        #: The service's limit on one task (function and arguments, serialized).
        self.task_limit = 10 * 1024 * 1024
        #: Endpoint status by id ("online" / "offline"); unknown ids answer 404.
        self.endpoints: dict[str, str] = {endpoint_id: "online"}
        #: Registered functions: id -> the registration document.
        self.functions: dict[str, dict[str, Any]] = {}
        #: Function ids an endpoint accepts (its ``allowed_functions``); None: any.
        self.allowed: set[str] | None = None
        #: Task documents by id, as GET /v2/tasks/<id> returns them.
        self.tasks: dict[str, dict[str, Any]] = {}
        #: A task that never leaves this status (a busy or absent endpoint), when set.
        self.stuck_status: str | None = None
        #: Error text the "endpoint" reports for every task instead of running it, when set.
        self.remote_error: str | None = None
        #: Failures to answer, by route name ("register", "submit", "task", "status").
        self.failures: dict[str, list[Failure]] = {}
        #: (function id, args/kwargs buffer) of every task submitted, as sent.
        self.submitted: list[tuple[str, str]] = []
        #: (method, path, Authorization header) of every request, in order.
        self.log: list[tuple[str, str, str]] = []
        self._pool: ProcessPoolExecutor | None = None
        self._install()

    # -- plumbing ----------------------------------------------------------------------
    def _install(self) -> None:
        uuid_re = r"[0-9a-f-]{36}"
        routes = [  # method, URL, the route's name for ``fail``, handler
            ("POST", f"{COMPUTE}/v3/functions", "register", self._register),
            ("POST", re.compile(rf"{COMPUTE}/v3/endpoints/{uuid_re}/submit"), "submit", self._submit),
            ("GET", re.compile(rf"{COMPUTE}/v2/tasks/{uuid_re}"), "task", self._task),
            ("GET", re.compile(rf"{COMPUTE}/v2/endpoints/{uuid_re}/status"), "status", self._status),
            ("GET", re.compile(rf"{COMPUTE}/v2/version.*"), "version", self._version),
        ]
        for method, url, route, handler in routes:
            self.rsps.add_callback(method, url, callback=self._guard(route, handler))

    def _guard(self, route: str, handler: Any) -> Any:
        def callback(request: Any) -> tuple[int, dict[str, str], str]:
            path = request.path_url.split("?")[0]
            self.log.append((request.method, path, request.headers.get("Authorization", "")))
            queue = self.failures.get(route) or []
            if queue:
                failure = queue[0]
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
                return failure.status, {"Content-Type": "application/json", **failure.headers}, json.dumps(failure.body)
            status, body = handler(request, path)
            return status, {"Content-Type": "application/json"}, json.dumps(body)

        return callback

    def fail(self, route: str, status: int, code: str | None = None, message: str = "",
             headers: dict[str, str] | None = None, times: int = 1) -> None:
        body = {"code": code, "message": message} if code else {"message": message}
        self.failures.setdefault(route, []).append(Failure(status, body, headers or {}, times))

    def requests_to(self, method: str, pattern: str) -> list[str]:
        return [p for m, p, _ in self.log if m == method and re.search(pattern, p)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- routes ------------------------------------------------------------------------
    def _register(self, request: Any, path: str) -> tuple[int, dict[str, Any]]:
        doc = json.loads(request.body)
        assert doc["function_code"] and doc["function_name"], doc
        fid = str(uuid.uuid4())
        self.functions[fid] = doc
        return 200, {"function_uuid": fid}

    def _status(self, request: Any, path: str) -> tuple[int, dict[str, Any]]:
        ep = path.split("/")[3]
        if ep not in self.endpoints:
            return 404, {"code": "ENDPOINT_NOT_FOUND", "message": f"Endpoint {ep} could not be found"}
        details = {"total_workers": 1, "idle_workers": 1, "pending_tasks": 0, "outstanding_tasks": 0, "managers": 1}
        return 200, {"status": self.endpoints[ep], "details": details}

    def _version(self, request: Any, path: str) -> tuple[int, dict[str, Any]]:
        return 200, {"api": "1.0", "min_sdk_version": "1.0.0", "min_ep_version": "1.0.0"}

    def _submit(self, request: Any, path: str) -> tuple[int, dict[str, Any]]:
        ep = path.split("/")[3]
        if ep not in self.endpoints:
            return 404, {"code": "ENDPOINT_NOT_FOUND", "message": f"Endpoint {ep} could not be found"}
        doc = json.loads(request.body)
        assert "user_runtime" in doc and isinstance(doc["tasks"], dict), doc
        self.submitted += [(fid, payload) for fid, payloads in doc["tasks"].items() for payload in payloads]
        out: dict[str, list[str]] = {}
        for fid, payloads in doc["tasks"].items():
            if fid not in self.functions:
                return 404, {"code": "FUNCTION_NOT_FOUND", "message": f"Function {fid} could not be found"}
            if self.allowed is not None and fid not in self.allowed:
                return 403, {"code": "FUNCTION_NOT_PERMITTED",
                             "message": f"Function {fid} not permitted on endpoint {ep}"}
            for payload in payloads:
                size = len(self.functions[fid]["function_code"]) + len(payload)
                if size > self.task_limit:
                    return 413, {"code": "TASK_PAYLOAD_TOO_LARGE",
                                 "message": f"Task payload of {size} bytes exceeds the {self.task_limit}-byte limit"}
            out[fid] = [self._accept(fid, payload) for payload in payloads]
        return 200, {"request_id": str(uuid.uuid4()), "task_group_id": str(uuid.uuid4()),
                     "endpoint_id": ep, "tasks": out}

    def _accept(self, fid: str, payload: str) -> str:
        tid = str(uuid.uuid4())
        if self.stuck_status:
            self.tasks[tid] = {"task_id": tid, "status": self.stuck_status}
        elif self.remote_error:
            self.tasks[tid] = {"task_id": tid, "status": "failed", "exception": self.remote_error,
                               "completion_t": str(time.time())}
        else:
            # What the service hands an endpoint: the registered function's
            # buffer followed by the submitted args/kwargs buffers.
            self.tasks[tid] = self.run_on_endpoint(uuid.UUID(tid), self.functions[fid]["function_code"] + payload)
        return tid

    def run_on_endpoint(self, task_id: uuid.UUID, task_buffer: str) -> dict[str, Any]:
        """Run a task buffer the way an endpoint does; the task document the service then serves."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task

        packed = messagepack.pack(Task(task_id=task_id, task_buffer=task_buffer))
        if self._pool is None:
            import globus_compute_endpoint.engines.helper  # noqa: F401  (warm before the fork)

            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        raw = self._pool.submit(_execute, packed, task_id, str(self.workdir), self.result_limit).result()
        result = messagepack.unpack(raw)
        doc: dict[str, Any] = {"task_id": str(task_id), "completion_t": str(time.time()),
                               "details": {"python_version": "3.11", "endpoint_id": self.endpoint_id}}
        if result.is_error:
            doc.update(status="failed", exception=result.data)
        else:
            doc.update(status="success", result=result.data)
        return doc

    def _task(self, request: Any, path: str) -> tuple[int, dict[str, Any]]:
        tid = path.split("/")[3]
        if tid not in self.tasks:
            return 404, {"code": "TASK_NOT_FOUND", "message": f"Task {tid} could not be found"}
        return 200, self.tasks[tid]


def store_login(compute_dir: Path, *, expired: bool = False) -> None:
    """Tokens in the SDK's own storage, as its login flow leaves them (fake values).

    ``GLOBUS_COMPUTE_USER_DIR`` must already point at ``compute_dir``.
    """
    import os

    from globus_sdk.token_storage import TokenStorageData

    assert os.environ.get("GLOBUS_COMPUTE_USER_DIR") == str(compute_dir)
    from globus_compute_sdk.sdk.auth.token_storage import get_token_storage

    storage = get_token_storage()
    expires = int(time.time()) + (-60 if expired else 3600)
    for rs, scope in (("auth.globus.org", "openid"), ("funcx_service", COMPUTE_SCOPE)):
        token = ACCESS_TOKEN if rs == "funcx_service" else "fake-auth-token"
        storage.store_token_data_by_resource_server({rs: TokenStorageData(
            resource_server=rs, identity_id="00000000-0000-0000-0000-0000000000aa", scope=scope,
            access_token=token, refresh_token="fake-refresh-token", expires_at_seconds=expires, token_type="Bearer",
        )})
    storage.close()


def client_credentials_grant(request: Any) -> tuple[int, dict[str, str], str]:
    """Globus Auth's answer to a client-credentials grant (fake tokens): one token
    per resource server whose scope was asked for."""
    from urllib.parse import parse_qs

    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    tokens = []
    for scope in parse_qs(body)["scope"][0].split():
        if scope == COMPUTE_SCOPE:
            rs, token = "funcx_service", ACCESS_TOKEN
        else:
            rs, token = "auth.globus.org", "fake-auth-token"
        tokens.append({"access_token": token, "scope": scope, "resource_server": rs, "expires_in": 172800,
                       "token_type": "Bearer"})
    doc = {**tokens[0], "other_tokens": tokens[1:]}
    return 200, {"Content-Type": "application/json"}, json.dumps(doc)
