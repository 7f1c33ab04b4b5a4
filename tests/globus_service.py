"""A STAND-IN of the Globus Compute web service and of Globus Auth, for the daemon tier.

The Globus Compute web service and Globus Auth are closed-source cloud
services that the test machines cannot reach. This module plays them, as far
as the real ``globus-compute-endpoint`` 4.19 daemon and the real Globus Compute
SDK call them (routes and fields measured by running them; see the daemon
tier's README section). Everything else is real: the SDK's ``Client`` and
``Executor``, the endpoint manager, the user endpoint processes it starts from
the template our Ansible role writes, their engine and workers, and a real
RabbitMQ (Debian's ``rabbitmq-server``) carrying commands, tasks, results and
heartbeats exactly as the real service's broker does.

HTTP, on ``http://localhost:5000`` (``GLOBUS_SDK_ENVIRONMENT=local`` hard-codes
that address, so the port cannot be chosen):

    Globus Auth (under /auth/, GLOBUS_SDK_SERVICE_URL_AUTH points there)
      POST /auth/v2/oauth2/token           client-credentials grant
      GET  /auth/v2/oauth2/userinfo        the caller's identity set
    Globus Compute
      GET  /v2/version                     versions (no minimum enforced)
      POST /v3/endpoints, PUT /v3/endpoints/<id>   register / re-register
      GET  /v2/endpoints/<id>/status       online / offline, from heartbeats
      POST /v3/functions                   register a function
      POST /v3/endpoints/<id>/submit       a batch of tasks
      GET  /v2/tasks/<id>, POST /v2/batch_status   task status and result
      GET  /v2/get_amqp_result_connection_url       for the SDK's Executor
      GET  /v2/task_groups/<id>            for Executor.reload_tasks

What the stand-in ASSUMES of the real service (it cannot be checked here):

- Identities: a client-credentials login is the identity ``<client id>``
  (username ``<client id>@clients.auth.globus.org``), with no linked
  identities; only clients in ``clients`` get tokens; tokens never expire
  during a session.
- One user endpoint process per (endpoint, submitting identity,
  ``user_endpoint_config``): its id is a UUIDv5 of those, its name
  ``uep.<endpoint id>.<user endpoint id>``. Every submission sends the
  manager a start command for it (the manager ignores one for a running
  process and keeps it to revive a process that is just stopping on
  idleness), then publishes the tasks to its queue, where they wait while the
  process starts.
- Task status strings: ``waiting-for-ep`` from submission until the result
  arrives, then ``success`` or ``failed`` (the SDK treats anything else as
  pending). A result stays fetchable for ``result_ttl`` seconds after it
  arrives (30 minutes, as the service documents), then ``404 TASK_NOT_FOUND``;
  fetching does not delete it.
- Limits: a task (function + arguments) above 10 MiB is refused with ``413
  TASK_PAYLOAD_TOO_LARGE``; no request-rate limit is enforced (the HTTP-level
  fake in tests/fake_globus.py covers 429s).
- ``allowed_functions`` the endpoint registered with are checked at
  submission: ``403 FUNCTION_NOT_PERMITTED`` (``check_allowed_at_submit``; the
  user endpoint process checks again on its own).
- Endpoint status: ``online`` while the manager's heartbeats arrive (within
  two periods and a grace), ``offline`` after its shutdown heartbeat or when
  they stop. A user endpoint process that fails to start reports
  ``global_state.error``; its waiting tasks then fail with that text.
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

COMPUTE_PORT = 5000
COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
COMPUTE_RS = "funcx_service"
TASK_LIMIT = 10 * 1024 * 1024
RESULT_TTL = 30 * 60.0
#: Queues the stand-in's broker side consumes (one each: messages carry their endpoint or task id).
RESULTS_QUEUE = "gcb.results"
HEARTBEATS_QUEUE = "gcb.heartbeats"
TASK_GROUP_PREFIX = "gcb.taskgroup."
_UUID = r"[0-9a-fA-F-]{36}"
_NS = uuid.UUID("6a1b2c3d-0000-4000-8000-00000000c0de")


_Message = TypeVar("_Message")


def _unpack(body: bytes, kind: type[_Message]) -> _Message | None:
    """The message an endpoint sent, if ``body`` is a ``kind``; None for anything
    else, which the stand-in drops as the service would not act on it."""
    from globus_compute_common import messagepack  # the daemon tier's dependency, not every session's

    try:
        message = messagepack.unpack(body)
    except Exception:
        return None
    return message if isinstance(message, kind) else None


@dataclass
class Endpoint:
    """An endpoint the service knows: a manager (registered) or a user endpoint (derived)."""

    id: str
    name: str
    owner: str
    parent: str | None = None
    allowed_functions: list[str] | None = None
    user_endpoint_config: dict[str, Any] | None = None
    heartbeat_period: float = 30.0
    last_heartbeat: float = 0.0
    registrations: int = 0
    #: pids the user endpoint process reported in its heartbeats (one per process started).
    pids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def online(self, now: float) -> bool:
        return self.heartbeat_period > 0 and now - self.last_heartbeat <= 2 * self.heartbeat_period + 5


@dataclass
class TaskRecord:
    id: str
    function_id: str
    endpoint_id: str
    child_id: str
    task_group_id: str
    submitted: float
    status: str = "waiting-for-ep"
    result: str | None = None
    exception: str | None = None
    details: dict[str, Any] | None = None
    completed: float | None = None


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Broker:
    """The service's side of RabbitMQ: it declares every exchange and queue."""

    def __init__(self, url: str, on_result: Callable[[bytes], None], on_heartbeat: Callable[[bytes], None]) -> None:
        import pika

        self.url = url
        self._pika = pika
        self._lock = threading.Lock()
        self._pub = pika.BlockingConnection(self._params())
        self._chan = self._pub.channel()
        self._chan.confirm_delivery()
        for exchange in ("gcb.tasks", "gcb.results", "gcb.heartbeats"):
            self._chan.exchange_declare(exchange, exchange_type="direct", durable=True)
        for q, ex in ((RESULTS_QUEUE, "gcb.results"), (HEARTBEATS_QUEUE, "gcb.heartbeats")):
            self._chan.queue_declare(q, durable=True)
            self._chan.queue_bind(q, ex, routing_key=q)
        self._on = {RESULTS_QUEUE: on_result, HEARTBEATS_QUEUE: on_heartbeat}
        self._consumer: Any = None
        self._consumer_chan: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._consume, name="standin-amqp", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the stand-in could not start consuming from RabbitMQ")

    def _params(self) -> Any:
        params = self._pika.URLParameters(self.url)
        params.heartbeat = 0  # the publisher idles between tests; no heartbeat to miss
        return params

    def _consume(self) -> None:
        conn = self._pika.BlockingConnection(self._params())
        chan = conn.channel()
        self._consumer, self._consumer_chan = conn, chan
        for q, handler in self._on.items():
            def callback(
                ch: Any, method: Any, props: Any, body: bytes, handler: Callable[[bytes], None] = handler
            ) -> None:
                try:
                    handler(body)
                finally:
                    ch.basic_ack(method.delivery_tag)
            chan.basic_consume(q, callback)
        self._ready.set()
        try:
            chan.start_consuming()
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def queue_info(self, queue: str, exchange: str) -> dict[str, Any]:
        return {
            "connection_url": self.url, "exchange": exchange, "queue": queue,
            "queue_publish_kwargs": {"exchange": exchange, "routing_key": queue, "mandatory": True,
                                     "properties": {"delivery_mode": 2}},
        }

    def declare(self, queue: str, exchange: str = "") -> None:
        with self._lock:
            self._chan.queue_declare(queue, durable=True)
            if exchange:
                self._chan.queue_bind(queue, exchange, routing_key=queue)

    def publish(self, exchange: str, routing_key: str, body: bytes, **props: Any) -> None:
        with self._lock:
            properties = self._pika.BasicProperties(delivery_mode=2, **props)
            self._chan.basic_publish(exchange, routing_key, body, properties, mandatory=True)

    def close(self) -> None:
        if self._consumer is not None and self._consumer_chan is not None:
            try:
                self._consumer.add_callback_threadsafe(self._consumer_chan.stop_consuming)
            except Exception:
                pass
            self._thread.join(10)
        with self._lock:
            try:
                self._pub.close()
            except Exception:
                pass


class GlobusStandIn:
    """The stand-in service: HTTP on localhost:5000 plus its side of RabbitMQ."""

    def __init__(self, amqp_url: str, clients: dict[str, str], *, host: str = "127.0.0.1", port: int = COMPUTE_PORT,
                 result_ttl: float = RESULT_TTL) -> None:
        self.amqp_url = amqp_url
        self.clients = dict(clients)
        self.host, self.port = host, port
        self.result_ttl = result_ttl
        self.check_allowed_at_submit = True
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = {}  # access token -> identity (client id)
        self.endpoints: dict[str, Endpoint] = {}
        self.functions: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.task_groups: dict[str, dict[str, Any]] = {}
        #: Every submission as the SDK sent it (tasks' payloads left out), with its endpoint id.
        self.submissions: list[dict[str, Any]] = []
        #: Every start command sent to a manager: (manager id, user endpoint id).
        self.start_commands: list[tuple[str, str]] = []
        #: (method, path, status) of every request, in order.
        self.log: list[tuple[str, str, int]] = []
        self.broker: Broker | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> GlobusStandIn:
        self.broker = Broker(self.amqp_url, self._on_result, self._on_heartbeat)
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                service._handle(self, "GET")

            def do_POST(self) -> None:
                service._handle(self, "POST")

            def do_PUT(self) -> None:
                service._handle(self, "PUT")

            def do_DELETE(self) -> None:
                service._handle(self, "DELETE")

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="standin-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    @property
    def auth_url(self) -> str:
        return f"http://{self.host}:{self.port}/auth/"

    def environment(self) -> dict[str, str]:
        """What points the SDK and the endpoint at this stand-in (no code patched)."""
        return {"GLOBUS_SDK_ENVIRONMENT": "local", "GLOBUS_SDK_SERVICE_URL_AUTH": self.auth_url}

    # -- inspection, for the tests ---------------------------------------------------------
    def endpoint_named(self, name: str) -> Endpoint:
        with self.lock:
            found = [e for e in self.endpoints.values() if e.parent is None and e.name == name]
        if not found:
            raise KeyError(f"no endpoint registered as {name!r}")
        return found[-1]

    def children(self, parent: str) -> list[Endpoint]:
        with self.lock:
            return [e for e in self.endpoints.values() if e.parent == parent]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"stand-in: waited {timeout:.0f} s for {what}")
            time.sleep(0.2)

    # -- HTTP plumbing ---------------------------------------------------------------------
    _ROUTES: list[tuple[str, str, str]] = [
        ("POST", r"/auth/v2/oauth2/token", "_token"),
        ("GET", r"/auth/v2/oauth2/userinfo", "_userinfo"),
        ("GET", r"/v2/version", "_version"),
        ("POST", r"/v3/endpoints", "_register_endpoint"),
        ("PUT", rf"/v3/endpoints/(?P<ep>{_UUID})", "_register_endpoint"),
        ("GET", rf"/v2/endpoints/(?P<ep>{_UUID})/status", "_endpoint_status"),
        ("GET", rf"/v2/endpoints/(?P<ep>{_UUID})", "_endpoint_info"),
        ("POST", r"/v3/functions", "_register_function"),
        ("POST", rf"/v3/endpoints/(?P<ep>{_UUID})/submit", "_submit"),
        ("GET", rf"/v2/tasks/(?P<task>{_UUID})", "_task"),
        ("POST", r"/v2/batch_status", "_batch_status"),
        ("GET", r"/v2/get_amqp_result_connection_url", "_amqp_url"),
        ("GET", rf"/v2/task_groups/(?P<tg>{_UUID})", "_task_group"),
    ]

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urlparse(req.path)
        path = parsed.path.rstrip("/") or "/"
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        status, body = 404, {"code": "NOT_FOUND", "message": f"the stand-in has no route {method} {path}"}
        try:
            for m, pattern, name in self._ROUTES:
                match = re.fullmatch(pattern, path)
                if m == method and match:
                    status, body = getattr(self, name)(req, raw, parse_qs(parsed.query), **match.groupdict())
                    break
        except ServiceError as exc:
            status, body = exc.status, {"code": exc.code, "message": exc.message, "http_status": exc.status}
        except Exception as exc:  # a bug in the stand-in: say so loudly
            status, body = 500, {"code": "STANDIN_BUG", "message": f"{type(exc).__name__}: {exc}"}
        with self.lock:
            self.log.append((method, path, status))
        data = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _identity(self, req: BaseHTTPRequestHandler) -> str:
        header = req.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with self.lock:
            ident = self.tokens.get(token)
        if ident is None:
            raise ServiceError(401, "UNAUTHORIZED", "missing or unknown access token")
        return ident

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            raise ServiceError(400, "BAD_REQUEST", "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise ServiceError(400, "BAD_REQUEST", "the body is not a JSON object")
        return doc

    # -- Globus Auth -----------------------------------------------------------------------
    def _token(self, req: Any, raw: bytes, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            cid, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials" or self.clients.get(cid) != secret or not cid:
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
        by_rs: dict[str, list[str]] = {}
        for scope in form.get("scope", "").split():
            by_rs.setdefault(COMPUTE_RS if scope == COMPUTE_SCOPE else "auth.globus.org", []).append(scope)
        tokens = []
        for rs, scopes in by_rs.items():
            token = f"standin-{uuid.uuid4().hex}"
            with self.lock:
                self.tokens[token] = cid
            tokens.append({"access_token": token, "scope": " ".join(scopes), "resource_server": rs,
                           "expires_in": 172800, "token_type": "Bearer"})
        if not tokens:
            return 400, {"error": "invalid_scope", "error_description": "no scope requested"}
        return 200, {**tokens[0], "other_tokens": tokens[1:]}

    def _userinfo(self, req: Any, raw: bytes, query: Any) -> tuple[int, dict[str, Any]]:
        ident = self._identity(req)
        me = {"sub": ident, "username": f"{ident}@clients.auth.globus.org", "name": None, "email": None,
              "identity_provider": "clients.auth.globus.org"}
        return 200, {"sub": ident, "preferred_username": me["username"], "identity_set": [me]}

    # -- Globus Compute: endpoints ---------------------------------------------------------
    def _version(self, req: Any, raw: bytes, query: Any) -> tuple[int, dict[str, Any]]:
        from globus_compute_sdk import __version__

        return 200, {"api": "1.0", "sdk": __version__, "endpoint": __version__, "min_sdk_version": "1.0.0",
                     "min_ep_version": "1.0.0", "redis_servers": [], "forwarder": "stand-in"}

    def _register_endpoint(self, req: Any, raw: bytes, query: Any, ep: str | None = None) -> tuple[int, dict[str, Any]]:
        ident = self._identity(req)
        doc = self._json(raw)
        name = str(doc.get("endpoint_name") or "")
        if not name:
            raise ServiceError(400, "BAD_REQUEST", "endpoint_name is required")
        ep_id = ep or str(uuid.uuid4())
        assert self.broker is not None
        with self.lock:
            rec = self.endpoints.get(ep_id)
            if rec is not None and rec.owner != ident:
                raise ServiceError(403, "FORBIDDEN", f"endpoint {ep_id} belongs to someone else")
            if rec is None:
                rec = self.endpoints[ep_id] = Endpoint(id=ep_id, name=name, owner=ident)
            allowed = doc.get("allowed_functions")
            rec.allowed_functions = [str(f) for f in allowed] if allowed else None
            rec.registrations += 1
        commands = f"{ep_id}.commands"
        self.broker.declare(commands)
        return 200, {
            "endpoint_id": ep_id,
            "command_queue_info": {"connection_url": self.amqp_url, "queue": commands},
            "heartbeat_queue_info": self.broker.queue_info(HEARTBEATS_QUEUE, "gcb.heartbeats"),
        }

    def _endpoint(self, ep: str) -> Endpoint:
        with self.lock:
            rec = self.endpoints.get(ep)
        if rec is None or rec.parent is not None:
            raise ServiceError(404, "ENDPOINT_NOT_FOUND", f"Endpoint {ep} could not be found")
        return rec

    def _endpoint_status(self, req: Any, raw: bytes, query: Any, ep: str) -> tuple[int, dict[str, Any]]:
        self._identity(req)
        rec = self._endpoint(ep)
        now = time.time()
        children = self.children(ep)
        return 200, {"status": "online" if rec.online(now) else "offline",
                     "details": {"user_endpoints_online": sum(1 for c in children if c.online(now))}}

    def _endpoint_info(self, req: Any, raw: bytes, query: Any, ep: str) -> tuple[int, dict[str, Any]]:
        self._identity(req)
        rec = self._endpoint(ep)
        return 200, {"uuid": rec.id, "name": rec.name, "status": "online" if rec.online(time.time()) else "offline"}

    # -- functions and tasks ---------------------------------------------------------------
    def _register_function(self, req: Any, raw: bytes, query: Any) -> tuple[int, dict[str, Any]]:
        ident = self._identity(req)
        doc = self._json(raw)
        if not doc.get("function_code") or not doc.get("function_name"):
            raise ServiceError(400, "BAD_REQUEST", "function_code and function_name are required")
        fid = str(uuid.uuid4())
        with self.lock:
            self.functions[fid] = {**doc, "owner": ident}
        return 200, {"function_uuid": fid}

    def _child(self, parent: Endpoint, ident: str, config: dict[str, Any] | None) -> Endpoint:
        key = json.dumps({"endpoint": parent.id, "identity": ident, "config": config or {}}, sort_keys=True)
        cid = str(uuid.uuid5(_NS, key))
        with self.lock:
            rec = self.endpoints.get(cid)
            if rec is None:
                rec = self.endpoints[cid] = Endpoint(
                    id=cid,
                    name=f"uep.{parent.id}.{cid}",
                    owner=ident,
                    parent=parent.id,
                    user_endpoint_config=config or {},
                )
        assert self.broker is not None
        self.broker.declare(f"{cid}.tasks", "gcb.tasks")
        return rec

    def _start_command(self, parent: Endpoint, child: Endpoint, ident: str, doc: dict[str, Any]) -> None:
        assert self.broker is not None
        me = {"sub": ident, "username": f"{ident}@clients.auth.globus.org"}
        command = {
            "command": "cmd_start_endpoint",
            "globus_effective_identity": ident,
            "globus_identity_set": [me],
            "globus_username": me["username"],
            "args": [],
            "kwargs": {
                "name": child.name,
                "user_opts": child.user_endpoint_config or {},
                "user_runtime": doc.get("user_runtime") or {},
                "amqp_creds": {
                    "endpoint_id": child.id,
                    "task_queue_info": {"connection_url": self.amqp_url, "queue": f"{child.id}.tasks"},
                    "result_queue_info": self.broker.queue_info(RESULTS_QUEUE, "gcb.results"),
                    "heartbeat_queue_info": self.broker.queue_info(HEARTBEATS_QUEUE, "gcb.heartbeats"),
                },
            },
        }
        self.broker.publish("", f"{parent.id}.commands", json.dumps(command).encode(),
                            content_type="application/json", timestamp=int(time.time()))
        with self.lock:
            self.start_commands.append((parent.id, child.id))

    def _submit(self, req: Any, raw: bytes, query: Any, ep: str) -> tuple[int, dict[str, Any]]:
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task

        ident = self._identity(req)
        parent = self._endpoint(ep)
        doc = self._json(raw)
        tasks = doc.get("tasks")
        if not isinstance(tasks, dict) or "user_runtime" not in doc:
            raise ServiceError(400, "BAD_REQUEST", "tasks (by function id) and user_runtime are required")
        with self.lock:
            self.submissions.append({
                "endpoint_id": ep,
                **{k: v for k, v in doc.items() if k != "tasks"},
                "function_ids": sorted(tasks),
                "task_count": sum(len(p) for p in tasks.values()),
            })
        for fid, payloads in tasks.items():
            if fid not in self.functions:
                raise ServiceError(404, "FUNCTION_NOT_FOUND", f"Function {fid} could not be found")
            restricted = self.check_allowed_at_submit and parent.allowed_functions is not None
            if restricted and fid not in parent.allowed_functions:
                raise ServiceError(403, "FUNCTION_NOT_PERMITTED", f"Function {fid} not permitted on endpoint {ep}")
            for payload in payloads:
                size = len(self.functions[fid]["function_code"]) + len(payload)
                if size > TASK_LIMIT:
                    too_large = f"Task payload of {size} bytes exceeds the {TASK_LIMIT}-byte limit"
                    raise ServiceError(413, "TASK_PAYLOAD_TOO_LARGE", too_large)
        child = self._child(parent, ident, doc.get("user_endpoint_config"))
        tg = str(doc.get("task_group_id") or uuid.uuid4())
        assert self.broker is not None
        if doc.get("create_queue"):
            self.broker.declare(f"{TASK_GROUP_PREFIX}{tg}")
        with self.lock:
            group = self.task_groups.setdefault(tg, {"queue": bool(doc.get("create_queue")), "tasks": []})
            group["queue"] = group["queue"] or bool(doc.get("create_queue"))
        self._start_command(parent, child, ident, doc)
        out: dict[str, list[str]] = {}
        headers_base = {"resource_specification": json.dumps(doc.get("resource_specification") or {}),
                        "result_serializers": doc.get("result_serializers") or []}
        for fid, payloads in tasks.items():
            for payload in payloads:
                tid = str(uuid.uuid4())
                with self.lock:
                    self.tasks[tid] = TaskRecord(
                        id=tid,
                        function_id=fid,
                        endpoint_id=ep,
                        child_id=child.id,
                        task_group_id=tg,
                        submitted=time.time(),
                    )
                    self.task_groups[tg]["tasks"].append(tid)
                task_buffer = self.functions[fid]["function_code"] + payload
                body = messagepack.pack(Task(task_id=uuid.UUID(tid), task_buffer=task_buffer))
                self.broker.publish("gcb.tasks", f"{child.id}.tasks", body,
                                    headers={"function_uuid": fid, "task_uuid": tid, **headers_base})
                out.setdefault(fid, []).append(tid)
        return 200, {"request_id": str(uuid.uuid4()), "task_group_id": tg, "endpoint_id": ep, "tasks": out}

    def _task_doc(self, tid: str) -> dict[str, Any] | None:
        with self.lock:
            rec = self.tasks.get(tid)
        if rec is None or (rec.completed is not None and time.time() - rec.completed > self.result_ttl):
            return None
        doc: dict[str, Any] = {"task_id": tid, "status": rec.status}
        if rec.completed is not None:
            doc["completion_t"] = str(rec.completed)
            doc["details"] = rec.details or {}
            if rec.status == "success":
                doc["result"] = rec.result
            else:
                doc["exception"] = rec.exception
        return doc

    def _task(self, req: Any, raw: bytes, query: Any, task: str) -> tuple[int, dict[str, Any]]:
        self._identity(req)
        doc = self._task_doc(task)
        if doc is None:
            raise ServiceError(404, "TASK_NOT_FOUND", f"Task {task} could not be found")
        return 200, doc

    def _batch_status(self, req: Any, raw: bytes, query: Any) -> tuple[int, dict[str, Any]]:
        self._identity(req)
        ids = self._json(raw).get("task_ids") or []
        results = {}
        for tid in ids:
            doc = self._task_doc(str(tid))
            unknown = {"task_id": str(tid), "status": "failed", "reason": "unknown task id"}
            results[str(tid)] = doc if doc is not None else unknown
        return 200, {"response": "batch", "results": results}

    def _amqp_url(self, req: Any, raw: bytes, query: Any) -> tuple[int, dict[str, Any]]:
        self._identity(req)
        return 200, {"connection_url": self.amqp_url, "queue_prefix": TASK_GROUP_PREFIX}

    def _task_group(self, req: Any, raw: bytes, query: Any, tg: str) -> tuple[int, dict[str, Any]]:
        self._identity(req)
        with self.lock:
            group = self.task_groups.get(tg)
        if group is None:
            raise ServiceError(404, "TASK_GROUP_NOT_FOUND", f"Task group {tg} could not be found")
        return 200, {"taskgroup_id": tg, "tasks": [{"id": t} for t in group["tasks"]]}

    # -- messages from endpoints -------------------------------------------------------------
    def _on_result(self, body: bytes) -> None:
        from globus_compute_common.messagepack.message_types import Result

        res = _unpack(body, Result)
        if res is None:
            return
        tid = str(res.task_id)
        with self.lock:
            rec = self.tasks.get(tid)
            if rec is None:
                return
            rec.completed = time.time()
            rec.details = res.details or {}
            if res.is_error:
                rec.status, rec.exception = "failed", res.data
            else:
                rec.status, rec.result = "success", res.data
            group = self.task_groups.get(rec.task_group_id) or {}
        if group.get("queue") and self.broker is not None:
            # The Executor's results: copied to its task group's queue.
            self.broker.publish("", f"{TASK_GROUP_PREFIX}{rec.task_group_id}", body)

    def _on_heartbeat(self, body: bytes) -> None:
        from globus_compute_common.messagepack.message_types import EPStatusReport

        report = _unpack(body, EPStatusReport)
        if report is None:
            return
        state = dict(report.global_state or {})
        with self.lock:
            rec = self.endpoints.get(str(report.endpoint_id))
            if rec is None:
                return
            rec.last_heartbeat = time.time()
            rec.heartbeat_period = float(state.get("heartbeat_period", rec.heartbeat_period) or 0)
            if state.get("active") is False:
                rec.heartbeat_period = 0  # a user endpoint process's last heartbeat
            pid = state.get("posix_pid")
            if isinstance(pid, int) and pid not in rec.pids:
                rec.pids.append(pid)
            error = state.get("error")
            if error:
                rec.errors.append(str(error))
                rec.heartbeat_period = 0
                for task in self.tasks.values():
                    if task.child_id == rec.id and task.completed is None:
                        task.completed, task.status = time.time(), "failed"
                        task.exception = f"the user endpoint process could not start: {error}"
