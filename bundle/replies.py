"""The shape of every reply a login-node task sends, checked before the client uses it.

The client trusts nothing that crosses the wire: a login node may run another
gcbundle version, a damaged install, or be hostile. Each task's reply is
declared here, once, as a frozen dataclass whose ``from_json`` checks every
field the client reads (type, range, pattern) and raises one
``MalformedReply`` line that names the task and the field:

    the login node sent a status reply without `state` (a str); ...

``bundle.transport`` passes every reply through ``check`` (``call`` and
``call_many`` alike), so no command can skip it; the callers keep working on
the reply's dict. Fields a reply may carry beyond these (a newer login node's)
pass through unread. The results listing's paths, sizes and digests are
checked file by file in ``bundle.results``, which writes them to disk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from bundle.errors import MalformedReply

_SHA = re.compile(r"[0-9a-f]{64}")
_RUN_ID = re.compile(r"[0-9a-f]{12}")
#: Every state a login node may report (``login_node.state``), and the client's own for
#: runs the login node does not know (``gone``).
STATES = ("staged", "queued", "starting", "running", "succeeded", "failed", "cancelled", "lost", "unknown", "gone")
_HINT = "the login node's gcbundle may be damaged or another version: check it with `gcbundle doctor --endpoint ENDPOINT`"


def _bad(task: str, key: str, what: str, missing: bool) -> MalformedReply:
    how = f"without `{key}` ({what})" if missing else f"whose `{key}` is not {what}"
    return MalformedReply(f"the login node sent a {task} reply {how}", _HINT)


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e15


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _get(task: str, data: dict[str, Any], key: str, ok: Callable[[Any], bool], what: str, required: bool = True) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise _bad(task, key, what, True)
        return None
    if not ok(data[key]):
        raise _bad(task, key, what, False)
    return data[key]


def _obj(task: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MalformedReply(f"the login node sent a {task} reply that is a {type(data).__name__}, not an object", _HINT)
    return data


@dataclass(frozen=True)
class RunState:
    """A run's state, as ``status``, ``launch``, ``cancel`` and ``results_manifest`` carry it."""

    state: str
    detail: str | None = None
    hint: str | None = None
    host: str | None = None
    pid: int | None = None
    updated: float | None = None
    tasks: dict[str, int] = field(default_factory=dict)
    scheduler_job_ids: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    resumed_from: str | None = None
    waited: float | None = None

    @classmethod
    def from_json(cls, data: Any, task: str = "status") -> RunState:
        d = _obj(task, data)
        err = _get(task, d, "error", lambda v: isinstance(v, dict) and all(isinstance(v.get(k), (str, type(None))) for k in ("message", "traceback")),
                   "an object of strings", False)
        return cls(
            state=_get(task, d, "state", lambda v: v in STATES, f"one of {', '.join(STATES)}"),
            detail=_get(task, d, "detail", lambda v: isinstance(v, str), "a string", False),
            hint=_get(task, d, "hint", lambda v: isinstance(v, str), "a string", False),
            host=_get(task, d, "host", lambda v: isinstance(v, str), "a string", False),
            pid=_get(task, d, "pid", _is_int, "a process id", False),
            updated=_get(task, d, "updated", _is_num, "a time", False),
            tasks=_get(task, d, "tasks", lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(n) for k, n in v.items()),
                       "an object of counts", False) or {},
            scheduler_job_ids=_get(task, d, "scheduler_job_ids", _str_list, "a list of strings", False) or [],
            error=err,
            resumed_from=_get(task, d, "resumed_from", lambda v: isinstance(v, str) and _RUN_ID.fullmatch(v) is not None, "a run id", False),
            waited=_get(task, d, "waited", _is_num, "a number of seconds", False),
        )


@dataclass(frozen=True)
class ProbeReply:
    cached: list[str]
    staged_chunks: list[int]
    bases: list[str] | None

    @classmethod
    def from_json(cls, data: Any) -> ProbeReply:
        d = _obj("probe", data)
        digests = lambda v: isinstance(v, list) and all(isinstance(x, str) and _SHA.fullmatch(x) for x in v)  # noqa: E731
        return cls(
            cached=_get("probe", d, "cached", digests, "a list of digests"),
            staged_chunks=_get("probe", d, "staged_chunks", lambda v: isinstance(v, list) and all(_is_int(i) for i in v), "a list of chunk numbers", False) or [],
            bases=_get("probe", d, "bases", digests, "a list of digests", False),
        )


@dataclass(frozen=True)
class StageReply:
    complete: bool

    @classmethod
    def from_json(cls, data: Any) -> StageReply:
        return cls(_get("stage", _obj("stage", data), "complete", lambda v: isinstance(v, bool), "true or false"))


@dataclass(frozen=True)
class LaunchReply:
    state: RunState | None
    missing_bundle: bool = False

    @classmethod
    def from_json(cls, data: Any) -> LaunchReply:
        d = _obj("launch", data)
        if _get("launch", d, "missing_bundle", lambda v: isinstance(v, bool), "true or false", False):
            return cls(None, True)
        return cls(RunState.from_json(_get("launch", d, "state", lambda v: isinstance(v, dict), "an object"), "launch"))


@dataclass(frozen=True)
class LogsReply:
    data: bytes
    offset: int
    next_offset: int
    size: int
    state: str | None
    logs: list[str]

    @classmethod
    def from_json(cls, data: Any) -> LogsReply:
        d = _obj("logs", data)
        chunk = _get("logs", d, "data", lambda v: isinstance(v, (bytes, bytearray)), "bytes")
        offset = _get("logs", d, "offset", _is_int, "a byte offset")
        nxt = _get("logs", d, "next_offset", lambda v: _is_int(v) and v == offset + len(chunk), "the offset after the bytes sent")
        return cls(
            data=bytes(chunk), offset=offset, next_offset=nxt,
            size=_get("logs", d, "size", _is_int, "the log's size"),
            state=_get("logs", d, "state", lambda v: v in STATES, f"one of {', '.join(STATES)}", False),
            logs=_get("logs", d, "logs", _str_list, "a list of log names", False) or [],
        )


@dataclass(frozen=True)
class ListingReply:
    """``results_manifest``: the package's listing (or one page of it); files are checked in ``bundle.results``."""

    state: RunState
    files: list[Any]
    manifest_sha256: str
    chunk_bytes: int
    total: int
    next_page: int | None

    @classmethod
    def from_json(cls, data: Any) -> ListingReply:
        t = "results listing"
        d = _obj(t, data)
        from bundle.limits import TASK_LIMIT

        return cls(
            state=RunState.from_json(_get(t, d, "state", lambda v: isinstance(v, dict), "an object"), t),
            files=_get(t, d, "files", lambda v: isinstance(v, list), "a list"),
            manifest_sha256=_get(t, d, "manifest_sha256", lambda v: isinstance(v, str) and _SHA.fullmatch(v) is not None, "a sha256"),
            chunk_bytes=_get(t, d, "chunk_bytes", lambda v: _is_int(v, 1) and v <= TASK_LIMIT, f"a size in 1..{TASK_LIMIT}"),
            total=_get(t, d, "total", _is_int, "a byte count"),
            next_page=_get(t, d, "next_page", lambda v: _is_int(v, 1), "a file number", False),
        )


@dataclass(frozen=True)
class ChunkReply:
    index: int
    data: bytes

    @classmethod
    def from_json(cls, data: Any) -> ChunkReply:
        t = "results chunk"
        d = _obj(t, data)
        return cls(_get(t, d, "index", _is_int, "a chunk number"), bytes(_get(t, d, "data", lambda v: isinstance(v, (bytes, bytearray)), "bytes")))


@dataclass(frozen=True)
class CancelReply:
    state: RunState
    already: bool = False
    escalated: int = 0

    @classmethod
    def from_json(cls, data: Any) -> CancelReply:
        d = _obj("cancel", data)
        return cls(
            state=RunState.from_json(_get("cancel", d, "state", lambda v: isinstance(v, dict), "an object"), "cancel"),
            already=bool(_get("cancel", d, "already", lambda v: isinstance(v, bool), "true or false", False)),
            escalated=_get("cancel", d, "escalated", _is_int, "a count", False) or 0,
        )


_CHECK_STATUS = ("ok", "warn", "fail", "skip", "info")


@dataclass(frozen=True)
class DoctorReply:
    checks: list[dict[str, Any]]
    versions: dict[str, str]

    @classmethod
    def from_json(cls, data: Any) -> DoctorReply:
        d = _obj("doctor", data)

        def checks_ok(v: Any) -> bool:
            return isinstance(v, list) and all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and c.get("status") in _CHECK_STATUS
                and isinstance(c.get("detail", ""), str) and isinstance(c.get("fix") or "", str) for c in v)

        def versions_ok(v: Any) -> bool:
            return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (str, type(None))) for k, x in v.items())

        for key in ("driver_versions", "worker_versions"):
            _get("doctor", d, key, versions_ok, "an object of version strings", False)
        for key in ("host", "user", "home", "site", "python"):
            _get("doctor", d, key, lambda v: isinstance(v, str), "a string", False)
        return cls(_get("doctor", d, "checks", checks_ok, f"a list of checks (name, status in {'/'.join(_CHECK_STATUS)}, detail)"),
                   _get("doctor", d, "versions", versions_ok, "an object of version strings", False) or {})


@dataclass(frozen=True)
class RunsReply:
    runs: list[dict[str, Any]]
    next: str | None

    @classmethod
    def from_json(cls, data: Any) -> RunsReply:
        d = _obj("runs", data)

        def entry_ok(e: Any) -> bool:
            return (isinstance(e, dict) and isinstance(e.get("run_id"), str) and _RUN_ID.fullmatch(e["run_id"]) is not None
                    and e.get("state") in STATES
                    and all(e.get(k) is None or isinstance(e[k], str) for k in ("digest", "entry", "site", "detail"))
                    and (e.get("resumed_from") is None or (isinstance(e["resumed_from"], str) and _RUN_ID.fullmatch(e["resumed_from"]) is not None))
                    and all(e.get(k) is None or (_is_num(e[k]) and 0 <= e[k] < 1e11) for k in ("submitted", "updated")))

        return cls(_get("runs", d, "runs", lambda v: isinstance(v, list) and all(entry_ok(e) for e in v), "a list of runs (id, state, ...)"),
                   _get("runs", d, "next", lambda v: isinstance(v, str) and _RUN_ID.fullmatch(v) is not None, "a run id", False))


@dataclass(frozen=True)
class PruneReply:
    runs: list[dict[str, Any]]
    bundles: list[dict[str, Any]]
    freed_bytes: int

    @classmethod
    def from_json(cls, data: Any) -> PruneReply:
        d = _obj("prune", data)

        def rows(key: str, ident: str, pattern: re.Pattern[str]) -> Any:
            return _get("prune", d, key, lambda v: isinstance(v, list) and all(
                isinstance(r, dict) and isinstance(r.get(ident), str) and pattern.fullmatch(r[ident]) is not None
                and isinstance(r.get("action"), str) for r in v), f"a list of {ident} rows", False) or []

        return cls(rows("runs", "run_id", _RUN_ID), rows("bundles", "digest", _SHA),
                   _get("prune", d, "freed_bytes", _is_int, "a byte count"))


#: The declared reply of every task (``bundle.protocol.TASKS``).
REPLIES: dict[str, Callable[[Any], Any]] = {
    "probe": ProbeReply.from_json,
    "stage": StageReply.from_json,
    "launch": LaunchReply.from_json,
    "status": lambda d: RunState.from_json(d, "status"),
    "logs": LogsReply.from_json,
    "results_manifest": ListingReply.from_json,
    "results_chunk": ChunkReply.from_json,
    "cancel": CancelReply.from_json,
    "doctor": DoctorReply.from_json,
    "prune": PruneReply.from_json,
    "runs": RunsReply.from_json,
}


def check(task: str, data: Any) -> Any:
    """``data`` if it has the shape declared for ``task``'s reply; a ``MalformedReply`` otherwise."""
    REPLIES[task](data)
    return data
