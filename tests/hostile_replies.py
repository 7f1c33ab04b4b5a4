"""A corpus of hostile login-node replies, and a login node that sends them.

Each case names the gcbundle command that receives it and the replies of the
tasks that command sends (the task's ``data``, or a whole envelope with
``ENVELOPE``). ``HostileLoginNode`` is the local transport with its login
node replaced by these canned replies: it stands in for a damaged, outdated
or hostile login node, which cannot be made any other way; everything on the
client side (transport checks, API, results writer, CLI) is the real code.
Used by ``tests/test_hostile_replies.py`` and ``bench/faults.py``.
"""
from __future__ import annotations

import hashlib
from typing import Any

from bundle.limits import CHUNK_BYTES
from bundle.manifest import listing_sha256
from bundle.protocol import PROTOCOL
from bundle.transport.local import LocalTransport

RUN = "0123456789ab"
ENVELOPE = "__envelope__"

#: The command line that makes each client command ask for the replies in CASES
#: ({dest}: a results folder, {wf}: a workflow file), for the test and bench/faults.py.
ARGS = {
    "status": ["status", RUN],
    "logs": ["logs", RUN],
    "cancel": ["cancel", RUN],
    "results": ["results", RUN, "-o", "{dest}"],
    "doctor": ["doctor", "--endpoint", "local"],
    "list": ["list", "--endpoint", "local"],
    "submit": ["submit", "{wf}"],
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(files: list[tuple[str, bytes]], **over: Any) -> dict[str, Any]:
    entries = [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files]
    out = {
        "state": {"state": "succeeded"},
        "files": entries,
        "manifest_sha256": listing_sha256(entries),
        "chunk_bytes": CHUNK_BYTES,
        "total": sum(len(d) for _, d in files),
        "page": 0,
        "next_page": None,
        "file_count": len(files),
    }
    out.update(over)
    return out


GOOD_FILES = [("result.json", b"42"), ("state.json", b'{"state": "succeeded"}')]
GOOD = listing(GOOD_FILES)
GOOD_CHUNK = {"index": 0, "data": b"".join(d for _, d in GOOD_FILES)}


def _with_files(entries: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    """A listing whose sha256 and total agree with its crafted entries: the entries are what is wrong."""
    sizes = [e["size"] for e in entries if isinstance(e, dict) and isinstance(e.get("size"), int)]
    out = {
        "state": {"state": "succeeded"},
        "files": entries,
        "manifest_sha256": listing_sha256(entries),
        "chunk_bytes": CHUNK_BYTES,
        "total": sum(sizes),
        "next_page": None,
    }
    out.update(over)
    return out


def _entry(path: str, data: bytes = b"x") -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": sha(data)}


def _envelope(**fields: Any) -> dict[str, Any]:
    """Replies to `status` of one whole envelope: ``fields`` after today's protocol level (or over it)."""
    return {"status": {ENVELOPE: {"protocol": PROTOCOL, **fields}}}


def _log(data: Any, next_offset: int, size: Any, state: str) -> dict[str, Any]:
    """Replies to `logs` of one page that starts at offset 0."""
    return {"logs": {"data": data, "offset": 0, "next_offset": next_offset, "size": size, "state": state}}


#: name -> (command, {task: reply data, or {ENVELOPE: whole envelope}})
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # the envelope itself
    "envelope is a string": ("status", {"status": {ENVELOPE: "hello"}}),
    "envelope without ok": ("status", _envelope(data={})),
    "envelope error is a string": ("status", _envelope(ok=False, error="boom")),
    "envelope error message is a dict": (
        "status",
        _envelope(ok=False, error={"type": "RunNotFound", "message": {"a": 1}}),
    ),
    "envelope ok is a string": ("status", _envelope(ok="yes", data={"state": "running"})),
    "envelope protocol 0": ("status", _envelope(protocol=0, ok=True, data={"state": "running"})),
    # status
    "status reply is a list": ("status", {"status": []}),
    "status reply is null": ("status", {"status": None}),
    "status without state": ("status", {"status": {}}),
    "a state that is a dict": ("status", {"status": {"state": {"x": 1}}}),
    "a state nobody knows": ("status", {"status": {"state": "pwned"}}),
    "task counts in a list": ("status", {"status": {"state": "running", "tasks": [1, 2]}}),
    "task counts as strings": ("status", {"status": {"state": "running", "tasks": {"total": "5"}}}),
    "error is a string": ("status", {"status": {"state": "failed", "error": "boom"}}),
    "pid is a string": ("status", {"status": {"state": "running", "host": "h", "pid": "12"}}),
    "heartbeat is a string": ("status", {"status": {"state": "running", "updated": "yesterday"}}),
    "job ids are a string": ("status", {"status": {"state": "running", "scheduler_job_ids": "123"}}),
    # logs
    "log bytes are a string": ("logs", _log("text", next_offset=4, size=4, state="succeeded")),
    "log offset does not advance": ("logs", _log(b"abc", next_offset=0, size=10, state="running")),
    "log size is a string": ("logs", _log(b"", next_offset=0, size="big", state="succeeded")),
    "a log that never ends": ("logs", _log(b"", next_offset=0, size=10, state="running")),
    "log reply without data": ("logs", {"logs": {"offset": 0, "next_offset": 0, "size": 0}}),
    # results listing
    "listing files is an object": ("results", {"results_manifest": {**GOOD, "files": {"a": 1}}}),
    "zero chunk size": ("results", {"results_manifest": {**GOOD, "chunk_bytes": 0}}),
    "chunk size is a string": ("results", {"results_manifest": {**GOOD, "chunk_bytes": "7"}}),
    "negative total": ("results", {"results_manifest": {**GOOD, "total": -1}}),
    "listing without state": ("results", {"results_manifest": {k: v for k, v in GOOD.items() if k != "state"}}),
    "listing without manifest_sha256": (
        "results",
        {"results_manifest": {k: v for k, v in GOOD.items() if k != "manifest_sha256"}},
    ),
    "`a` then `a/b`": ("results", {"results_manifest": _with_files([_entry("a"), _entry("a/b")])}),
    "a name over 255 bytes": ("results", {"results_manifest": _with_files([_entry("outputs/" + "n" * 256)])}),
    "a path out of the folder": ("results", {"results_manifest": _with_files([_entry("../../escaped.txt")])}),
    "an absolute path": ("results", {"results_manifest": _with_files([_entry("/tmp/escaped.txt")])}),
    "a path with an escape sequence": ("results", {"results_manifest": _with_files([_entry("outputs/\x1b[2Jx")])}),
    "one name twice, by case": (
        "results",
        {"results_manifest": _with_files([_entry("outputs/A"), _entry("outputs/a")])},
    ),
    "the results marker as a file": ("results", {"results_manifest": _with_files([_entry(".gcbundle-results.json")])}),
    "a size that is negative": ("results", {"results_manifest": _with_files([{**_entry("x", b""), "size": -5}])}),
    "a size that is a float": ("results", {"results_manifest": _with_files([{**_entry("x", b""), "size": 1.5}])}),
    "a sha256 that is not hex": ("results", {"results_manifest": _with_files([{**_entry("x"), "sha256": "z" * 64}])}),
    "a file entry that is a string": ("results", {"results_manifest": _with_files(["x"])}),  # type: ignore[list-item]
    "manifest sha256 of other files": ("results", {"results_manifest": {**GOOD, "manifest_sha256": "0" * 64}}),
    "a total that is not the sum": ("results", {"results_manifest": {**GOOD, "total": GOOD["total"] + 1}}),
    "a page that does not continue": ("results", {"results_manifest": {**GOOD, "next_page": 5}}),
    "a chunk that is too short": ("results", {"results_manifest": GOOD, "results_chunk": {"index": 0, "data": b"42"}}),
    "a chunk that is text": ("results", {"results_manifest": GOOD, "results_chunk": {"index": 0, "data": "42"}}),
    "a chunk without its index": ("results", {"results_manifest": GOOD, "results_chunk": {"data": GOOD_CHUNK["data"]}}),
    "a chunk of another index": ("results", {"results_manifest": GOOD, "results_chunk": {**GOOD_CHUNK, "index": 3}}),
    "bytes that do not match their sha256": (
        "results",
        {"results_manifest": GOOD, "results_chunk": {"index": 0, "data": b"43" + GOOD_CHUNK["data"][2:]}},
    ),
    # cancel
    "cancel without state": ("cancel", {"cancel": {"already": True}}),
    "cancel `already` is a string": ("cancel", {"cancel": {"state": {"state": "cancelled"}, "already": "yes"}}),
    # doctor
    "doctor checks in an object": ("doctor", {"doctor": {"checks": {"a": 1}}}),
    "a check of unknown status": ("doctor", {"doctor": {"checks": [{"name": "x", "status": "maybe", "detail": ""}]}}),
    "doctor versions in a list": ("doctor", {"doctor": {"checks": [], "versions": ["3.11"]}}),
    # runs (gcbundle list --endpoint)
    "a run id that is a path": ("list", {"runs": {"runs": [{"run_id": "../../x", "state": "running"}], "next": None}}),
    "runs in an object": ("list", {"runs": {"runs": {}, "next": None}}),
    "a run listing that never ends": ("list", {"runs": {"runs": [], "next": "aaaaaaaaaaaa"}}),
    # launch (submit)
    "launch without state": ("submit", {"launch": {}}),
    "launch state is a string": ("submit", {"launch": {"state": "running"}}),
    "a bundle missing twice": ("submit", {"launch": {"missing_bundle": True}}),
}

#: Replies that are well formed but carry what must not reach a terminal as is.
ESCAPES = {
    "state": "running",
    "detail": "\x1b]0;owned\x07\x1b[2Jcleared",
    "host": "h\x1b[31m",
    "pid": 1,
    "updated": 1.0,
    "hint": "\x9b31mred",
}


class HostileLoginNode(LocalTransport):
    """The local transport, with the login node's replies to some tasks replaced (see the module doc)."""

    def __init__(self, replies: dict[str, Any]) -> None:
        super().__init__()
        self.replies = replies

    def _run(self, task: str, req: dict[str, Any]) -> Any:
        if task not in self.replies:
            return super()._run(task, req)
        reply = self.replies[task]
        if isinstance(reply, dict) and ENVELOPE in reply:
            return reply[ENVELOPE]
        return {"protocol": PROTOCOL, "server_version": "hostile", "ok": True, "data": reply}

    def call_many(self, task: str, requests: Any) -> Any:  # one at a time, through _run
        for fields in requests:
            yield self.call(task, **fields)
