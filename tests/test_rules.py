"""Unit tests of the pure rules: when a run reads as lost, how --set values are typed,
which protocol level a request needs and what each side accepts, and the wire contracts."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bundle import contracts, profiles, protocol
from bundle.errors import (
    GcbundleError,
    MalformedReply,
    ProtocolMismatch,
    RemoteError,
    RunStateError,
    UsageError,
)
from bundle.limits import LOG_SLICE_BYTES, RUNS_PAGE
from login_node import state
from login_node.rundir import RunPaths, write_json

# -- state.effective: lost and late cancels are derived, never written ----------------------


@pytest.fixture
def run(tmp_path: Path) -> RunPaths:
    paths = RunPaths(tmp_path / "runs" / "0123456789ab")
    paths.root.mkdir(parents=True)
    return paths


def _write(paths: RunPaths, **fields: Any) -> None:
    write_json(paths.state, {"run_id": paths.run_id, **fields})


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_a_live_driver_with_a_fresh_heartbeat_is_running(run: RunPaths) -> None:
    me = os.getpid()
    _write(run, state="running", pid=me, pid_start=state.process_start_time(me), host=state.hostname(),
           heartbeat_seconds=30, updated=time.time())
    assert state.effective(run)["state"] == "running"


def test_a_driver_whose_pid_is_gone_reads_lost_with_a_hint(run: RunPaths, dead_pid: int) -> None:
    _write(run, state="running", pid=dead_pid, pid_start="1", host=state.hostname(), heartbeat_seconds=30,
           updated=time.time())
    st = state.effective(run)
    assert st["state"] == "lost"
    assert f"the driver (pid {dead_pid}) is gone" in st["detail"] and "resume" in st["hint"]
    assert state.read_raw(run)["state"] == "running", "lost is derived, never written"


def test_a_reused_pid_is_not_the_driver(run: RunPaths) -> None:
    me = os.getpid()  # alive, but started at another time than the driver recorded
    _write(run, state="running", pid=me, pid_start="not-my-start-time", host=state.hostname(), heartbeat_seconds=30,
           updated=time.time())
    assert state.effective(run)["state"] == "lost"


def test_a_stale_heartbeat_reads_lost_even_on_another_host(run: RunPaths) -> None:
    now = time.time()
    period = 10.0
    limit = state.MISSED * period + state.GRACE
    _write(run, state="running", pid=1, host="another-login-host", heartbeat_seconds=period, updated=now - limit + 1)
    assert state.effective(run, now=now)["state"] == "running", "within two periods plus the grace"
    st = state.effective(run, now=now + 2)
    assert st["state"] == "lost" and "no heartbeat for" in st["detail"]


def test_a_run_staged_too_long_never_got_a_driver(run: RunPaths) -> None:
    now = time.time()
    _write(run, state="staged", updated=now)
    assert state.effective(run, now=now + state.STAGED_TIMEOUT - 1)["state"] == "staged"
    st = state.effective(run, now=now + state.STAGED_TIMEOUT + 1)
    assert st["state"] == "lost" and "never started" in st["detail"]


def test_a_cancel_whose_driver_is_gone_reads_cancelled(run: RunPaths, dead_pid: int) -> None:
    _write(run, state="running", pid=dead_pid, host=state.hostname(), heartbeat_seconds=30, updated=time.time())
    write_json(run.cancel_marker, {"requested": time.time()})
    st = state.effective(run)
    assert st["state"] == "cancelled" and st["detail"].startswith("cancel requested")


def test_a_terminal_state_is_reported_as_written(run: RunPaths, dead_pid: int) -> None:
    _write(run, state="failed", pid=dead_pid, host=state.hostname(), updated=0.0, error={"message": "boom"})
    st = state.effective(run)
    assert st["state"] == "failed" and st["error"] == {"message": "boom"} and state.is_terminal(st)


def test_a_missing_or_damaged_state_file_reads_unknown_with_the_reason(run: RunPaths) -> None:
    missing = state.read_raw(run)
    assert missing["state"] == "unknown" and missing["detail"]
    run.state.write_text("{not json")
    damaged = state.read_raw(run)
    assert damaged["state"] == "unknown" and damaged["detail"]


# -- profile value typing ------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("4", 4), ("-2", -2), ("0.5", 0.5), ("true", True), ("false", False), ("debug", "debug"),
    ("01:00:00", "01:00:00"), ("1:00:00", "1:00:00"), ("", ""), ("a b", "a b"),
    ("[1, 2]", "[1, 2]"), ("{a: 1}", "{a: 1}"), ("'quoted'", "quoted"), ("@bad", "@bad"),
])
def test_set_values_are_typed_as_yaml_reads_them_but_walltimes_stay_strings(text: str, value: Any) -> None:
    assert profiles.parse_sets([f"x={text}"]) == {"x": value}


def test_parse_sets_splits_at_the_first_equals_sign_and_keeps_the_last_value() -> None:
    assert profiles.parse_sets(["opts=--a=b", "n=1", "n=2"]) == {"opts": "--a=b", "n": 2}


@pytest.mark.parametrize("item", ["noequals", "=value", "1abc=2", "a-b=1", "a b=1"])
def test_a_set_that_is_not_name_equals_value_is_refused(item: str) -> None:
    with pytest.raises(UsageError, match="is not name=value"):
        profiles.parse_sets([item])


# -- protocol level negotiation ------------------------------------------------------------

def test_a_request_carries_the_lowest_level_that_serves_it() -> None:
    assert protocol.request_level({"digests": []}) == 1
    assert protocol.request_level({"base": None}) == 1
    assert protocol.request_level({"base": "a" * 64}) == protocol.DELTA
    req = protocol.request(run_id="x")
    assert req["protocol"] == 1 and req["run_id"] == "x" and "client_version" in req


def test_the_login_node_refuses_what_it_cannot_serve() -> None:
    assert protocol.check_request({"protocol": protocol.PROTOCOL}) == {"protocol": protocol.PROTOCOL}
    assert protocol.check_request({"protocol": protocol.MIN_PROTOCOL})
    for bad, words in [("not a dict", "not a gcbundle request"), ({}, "no protocol version"),
                       ({"protocol": True}, "no protocol version"), ({"protocol": "2"}, "no protocol version"),
                       ({"protocol": protocol.PROTOCOL + 1}, "only up to"), ({"protocol": protocol.MIN_PROTOCOL - 1},
                                                                             "at least")]:
        with pytest.raises(ProtocolMismatch, match=words):
            protocol.check_request(bad)


def test_unwrap_gives_the_data_or_raises_the_error_it_names() -> None:
    assert protocol.unwrap(protocol.reply({"a": 1})) == {"a": 1}
    with pytest.raises(RunStateError, match="still running"):
        protocol.unwrap(protocol.error_reply(RunStateError("still running", "wait")))
    with pytest.raises(RemoteError, match="strange"):  # an unknown class name: the base of remote errors
        protocol.unwrap({"ok": False, "error": {"type": "NoSuchError", "message": "strange"}})
    with pytest.raises(RemoteError, match="does not understand"):
        protocol.unwrap({"data": 1})
    with pytest.raises(ProtocolMismatch, match="needs at least"):
        protocol.unwrap({"ok": True, "protocol": protocol.MIN_PROTOCOL - 1, "data": 1})


def test_a_delta_goes_only_to_a_login_node_that_said_it_takes_one() -> None:
    assert protocol.supports_delta({"cached": [], "bases": [], "protocol": 2})
    assert not protocol.supports_delta({"cached": [], "bases": []})  # protocol 1 by default
    assert not protocol.supports_delta({"cached": [], "protocol": 2})  # it did not answer bases


# -- the wire contracts --------------------------------------------------------------------

GOOD_STATE = {"state": "running", "run_id": "0123456789ab", "updated": 1.0, "tasks": {"total": 0}, "pid": 7}

GOOD_REPLIES: dict[str, dict[str, Any]] = {
    "probe": {"cached": [], "bases": [], "protocol": 2},
    "stage": {"complete": False},
    "launch": {"state": GOOD_STATE},
    "status": GOOD_STATE,
    "logs": {"data": b"x", "offset": 0, "next_offset": 1, "size": 1, "state": "running", "logs": ["driver"]},
    "results_manifest": {"state": {**GOOD_STATE, "state": "succeeded"}, "files": [], "manifest_sha256": "0" * 64,
                         "chunk_bytes": 7, "total": 0, "future_field": 1},
    "results_chunk": {"index": 0, "data": b""},
    "cancel": {"state": {**GOOD_STATE, "state": "cancelled"}, "escalated": 0},
    "doctor": {"checks": [{"name": "x", "status": "ok", "detail": ""}], "versions": {}, "ok": True, "host": "h"},
}

#: (task, the reply with a field missing or of the wrong type, words of the one-line error).
#: A value the client reads is checked first (``_validate``: "whose `x` is not ..."), then each
#: declared field's kind ("with `x` that is ..., not ...").
BAD_REPLIES = [
    ("probe", {}, "probe reply without `cached`"),
    ("probe", {"cached": "abc"}, "probe reply whose `cached` is not a list of digests"),
    ("probe", {"cached": [], "protocol": "2"}, "`protocol` that is a string, not an integer"),
    ("stage", {}, "stage reply without `complete`"),
    ("stage", {"complete": 1}, "stage reply whose `complete` is not true or false"),
    ("launch", {}, "launch reply without `state`"),
    ("launch", {"state": {"run_id": "x"}}, "launch reply without `state`"),
    ("launch", {"state": "running"}, "launch reply whose `state` is not an object"),
    ("status", {"run_id": "x"}, "status reply without `state`"),
    ("status", {"state": 3}, "status reply whose `state` is not one of staged"),
    ("status", {"state": "exploded"}, "status reply whose `state` is not one of staged, queued"),
    ("status", {"state": "running", "updated": "now"}, "status reply whose `updated` is not a time"),
    ("status", [], "status reply that is a list, not an object"),
    ("logs", {**GOOD_REPLIES["logs"], "data": "text"}, "logs reply whose `data` is not bytes"),
    ("logs", {k: v for k, v in GOOD_REPLIES["logs"].items() if k != "next_offset"}, "logs reply without `next_offset`"),
    ("results_manifest", {k: v for k, v in GOOD_REPLIES["results_manifest"].items() if k != "files"},
     "without `files`"),
    ("results_manifest", {**GOOD_REPLIES["results_manifest"], "chunk_bytes": 0},
     "results listing reply whose `chunk_bytes` is not a size in 1.."),
    ("results_manifest", {**GOOD_REPLIES["results_manifest"], "state": {}}, "results listing reply without `state`"),
    ("results_chunk", {"index": 0}, "results chunk reply without `data` (bytes)"),
    ("results_chunk", {"index": True, "data": b""}, "results chunk reply whose `index` is not a chunk number"),
    ("cancel", {"escalated": 0}, "cancel reply without `state`"),
    ("doctor", {"checks": [{"name": "x"}], "versions": {}, "ok": True},
     "doctor reply whose `checks` is not a list of checks"),
    ("doctor", {"checks": [], "ok": True}, "doctor reply without `versions`"),
]


@pytest.mark.parametrize("task", list(GOOD_REPLIES))
def test_every_good_reply_parses_and_travels_back_unchanged(task: str) -> None:
    parsed = contracts.check_reply(task, GOOD_REPLIES[task])
    assert parsed.to_json() == GOOD_REPLIES[task]


@pytest.mark.parametrize("task,reply,words", BAD_REPLIES)
def test_a_bad_reply_is_one_line_naming_task_and_field(task: str, reply: Any, words: str) -> None:
    with pytest.raises(RemoteError) as info:
        contracts.check_reply(task, reply)
    message = info.value.message
    assert words in message and "\n" not in message and message.startswith("the login node sent a ")
    assert "gcbundle doctor" in (info.value.hint or "")


def test_a_launch_reply_that_says_the_bundle_is_missing_needs_no_state() -> None:
    assert contracts.check_reply("launch", {"missing_bundle": True}).missing_bundle


@pytest.mark.parametrize("task,request_fields,words", [
    ("probe", {"digests": "abc"}, "probe request with `digests` that is a string, not a list"),
    ("launch", {"run_id": "0123456789ab", "digest": "0" * 64}, "launch request without `spec`"),
    ("launch", {"spec": None}, "launch request with `spec` that is null, not an object"),
    ("launch", {"spec": {"args": []}}, "launch request's spec with `args` that is a list, not an object"),
    ("launch", {"spec": {}, "bundle": "text"}, "`bundle` that is a string, not bytes"),
    ("logs", {"name": 3}, "logs request with `name` that is an integer, not a string"),
    ("doctor", {"site": "slurm"}, "doctor request with `site` that is a string, not an object"),
])
def test_a_bad_request_is_refused_on_the_login_node_naming_task_and_field(task: str, request_fields: dict[str, Any],
                                                                          words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("`", ".").replace("(", ".").replace(")", ".")):
        contracts.parse_request(task, request_fields)


def test_the_launch_spec_round_trips_and_fills_defaults() -> None:
    spec = contracts.LaunchSpec(args={"n": 1}, site=None, params={}, resumed_from="0123456789ab", inherit=True)
    again = contracts.LaunchSpec.from_json(spec.to_json())
    assert again == spec
    assert contracts.LaunchSpec.from_json({}) == contracts.LaunchSpec()
    req = contracts.LaunchRequest(run_id="0123456789ab", digest="0" * 64, spec=spec)
    assert contracts.LaunchRequest.from_json(req.to_json()) == req
    assert "bundle" not in req.to_json(), "an absent bundle is left out, as the login node's default"


def test_every_task_has_one_contract_whose_reply_checks_its_values() -> None:
    """One home for the wire contract: each task's request and reply class, and the reply's value checks."""
    assert set(contracts.CONTRACTS) == set(protocol.TASKS)
    for task, (request_class, reply_class) in contracts.CONTRACTS.items():
        assert request_class.side == "request" and reply_class.side == "reply", task
        assert "_validate" in vars(reply_class), f"the {task} reply checks no values"


def test_the_shape_check_returns_the_reply_unchanged_and_refuses_a_bad_one() -> None:
    reply = {**GOOD_REPLIES["results_manifest"], "next_page": None}
    assert contracts.check_reply_shape("results_manifest", reply) is reply
    with pytest.raises(MalformedReply, match="results listing reply whose `next_page` is not a file number"):
        contracts.check_reply_shape("results_manifest", {**reply, "next_page": 0})


# -- request fields: absent, null, and the order of the checks -------------------------------

RUN = "0123456789ab"


def _refusal(task: str, fields: dict[str, Any]) -> str:
    with pytest.raises(GcbundleError) as info:
        contracts.parse_request(task, fields)
    return info.value.message


@pytest.mark.parametrize("task,field,absent,null_refused", [
    ("status", "wait", 0, "wait must be a number of seconds in 0..30, got None"),
    ("runs", "limit", RUNS_PAGE, f"limit must be an integer in 1..{RUNS_PAGE}, got None"),
    ("logs", "max_bytes", LOG_SLICE_BYTES, f"max_bytes must be an integer in 1..{LOG_SLICE_BYTES}, got None"),
    ("logs", "offset", 0, "offset must be an integer in 0..inf, got None"),
    ("logs", "tail", False, "logs takes a string `name` and a boolean `tail`"),
    ("cancel", "grace", 30, "grace must be an integer in 0..600, got None"),
    ("results_manifest", "partial", False, "partial must be true or false"),
    ("results_manifest", "page", None, "page must be an integer in 0..inf, got None"),
])
def test_a_field_left_out_takes_the_login_nodes_default_but_a_null_one_is_refused(
        task: str, field: str, absent: Any, null_refused: str) -> None:
    base = {} if task == "runs" else {"run_id": RUN}
    assert getattr(contracts.parse_request(task, base), field) == absent
    assert _refusal(task, {**base, field: None}) == null_refused


@pytest.mark.parametrize("task,fields,field,refused", [
    ("status", {}, "run_id", "'None' is not a run id"),
    ("stage", {}, "digest", "digest must be 64 lowercase hex digits"),
    ("stage", {"digest": "a" * 64}, "archive_sha256", "archive_sha256 must be 64 lowercase hex digits"),
    ("stage", {"digest": "a" * 64, "archive_sha256": "b" * 64}, "size", "size must be an integer in 1..inf, got None"),
    ("results_chunk", {"run_id": RUN}, "manifest_sha256", "manifest_sha256 must be a string"),
    ("results_chunk", {"run_id": RUN, "manifest_sha256": "x"}, "index", "index must be an integer in 0..inf, got None"),
    ("launch", {"run_id": RUN, "digest": "a" * 64, "spec": {}, "bundle": b"x"}, "archive_sha256",
     "archive_sha256 must be 64 lowercase hex digits"),
])
def test_a_needed_field_left_out_is_refused_as_if_it_were_null(task: str, fields: dict[str, Any], field: str,
                                                                refused: str) -> None:
    assert _refusal(task, fields) == refused
    assert _refusal(task, {**fields, field: None}) == refused


@pytest.mark.parametrize("task,fields,field", [
    ("probe", {"bases": None}, "bases"),
    ("probe", {"digests": ["a" * 64], "archive_sha256": None}, "archive_sha256"),
    ("stage", {"digest": "a" * 64, "archive_sha256": "b" * 64, "size": 1, "index": 0, "base": None}, "base"),
    ("launch", {"run_id": RUN, "digest": "a" * 64, "spec": {"site": None, "resumed_from": None}}, "archive_sha256"),
    ("runs", {"run_ids": None, "after": None}, "after"),
    ("runs", {"run_ids": None}, "run_ids"),
    ("doctor", {"site": None, "probe": None}, "site"),
    ("results_manifest", {"run_id": RUN, "page": 0, "manifest_sha256": None}, "manifest_sha256"),
])
def test_a_null_that_means_none_is_taken(task: str, fields: dict[str, Any], field: str) -> None:
    assert getattr(contracts.parse_request(task, fields), field) is None


def test_the_listing_digest_is_checked_only_for_a_paged_request() -> None:
    assert contracts.parse_request("results_manifest", {"run_id": RUN, "manifest_sha256": "x"}).page is None
    assert _refusal("results_manifest", {"run_id": RUN, "manifest_sha256": "x", "page": 0}) == \
        "manifest_sha256 must be 64 lowercase hex digits"


def test_the_launch_spec_refuses_unknown_fields_and_reads_null_params_as_none() -> None:
    with pytest.raises(UsageError) as info:
        contracts.LaunchSpec.from_json({"args": {}, "colour": "red", "bogus": 1})
    assert info.value.message == "spec has unknown fields: bogus, colour"
    assert info.value.hint == "use a gcbundle client of the login node's version"
    assert contracts.LaunchSpec.from_json({"params": None}).params == {}
    assert _refusal("launch", {"run_id": RUN, "digest": "a" * 64, "spec": {"resumed_from": "../x"}}) == \
        "'../x' is not a run id"


@pytest.mark.parametrize("task,fields,refused", [
    # Every field's kind first ...
    ("logs", {"run_id": "bad", "name": 3}, "the logs request with `name` that is an integer, not a string"),
    ("launch", {"run_id": "bad", "digest": "x", "spec": {"site": "x", "params": "y"}},
     "the launch request's spec with `site` that is a string, not an object"),
    # ... then the rules, in the order the login node has always checked them in.
    ("launch", {"run_id": "bad", "digest": "x", "spec": {"bogus": 1}}, "'bad' is not a run id"),
    ("launch", {"run_id": RUN, "digest": "x", "spec": {"bogus": 1}}, "digest must be 64 lowercase hex digits"),
    ("launch", {"run_id": RUN, "digest": "a" * 64, "spec": {"bogus": 1, "args": {"1": 2}}},
     "spec has unknown fields: bogus"),
    ("launch", {"run_id": RUN, "digest": "a" * 64, "spec": {"site": {"text": 3}, "params": {1: 2}}},
     "spec.params must be an object with string keys"),
    ("launch", {"run_id": RUN, "digest": "a" * 64, "spec": {"resumed_from": "x"}, "archive_sha256": "x",
                "bundle": b"x"}, "'x' is not a run id"),
    ("runs", {"run_ids": ["x"], "after": "y", "limit": 0}, f"limit must be an integer in 1..{RUNS_PAGE}, got 0"),
    ("runs", {"run_ids": ["x"], "after": "y"}, "'y' is not a run id"),
    ("logs", {"run_id": RUN, "max_bytes": 0, "offset": -1, "tail": None},
     "logs takes a string `name` and a boolean `tail`"),
    ("logs", {"run_id": RUN, "max_bytes": 0, "offset": -1}, "offset must be an integer in 0..inf, got -1"),
    ("results_manifest", {"run_id": RUN, "page": None, "manifest_sha256": "x", "partial": 1},
     "partial must be true or false"),
    ("results_manifest", {"run_id": RUN, "page": None, "manifest_sha256": "x"},
     "manifest_sha256 must be 64 lowercase hex digits"),
    ("probe", {"digests": ["a" * 64], "archive_sha256": "x", "bases": ["y"]},
     "archive_sha256 must be 64 lowercase hex digits"),
    ("probe", {"digests": ["a" * 64, "a" * 64], "archive_sha256": "x", "bases": ["y"]},
     "base must be 64 lowercase hex digits"),
])
def test_a_request_wrong_in_two_ways_is_refused_for_the_first_the_login_node_checks(
        task: str, fields: dict[str, Any], refused: str) -> None:
    assert _refusal(task, fields) == refused


def test_the_client_leaves_out_what_it_does_not_set_so_the_login_node_takes_its_defaults() -> None:
    assert contracts.StatusRequest(run_id=RUN).to_json() == {"run_id": RUN}
    assert contracts.RunsRequest(after=RUN).to_json() == {"after": RUN}
    assert contracts.LogsRequest(run_id=RUN, name="driver", offset=0, tail=False).to_json() == \
        {"run_id": RUN, "name": "driver", "offset": 0, "tail": False}
    assert contracts.ResultsManifestRequest(run_id=RUN).to_json() == {"run_id": RUN}


def test_prune_criteria_travel_as_one_declared_object() -> None:
    criteria = contracts.PruneCriteria(older_than=60.0, fetched=frozenset({RUN}), dry_run=True)
    sent = contracts.PruneRequest(prune=criteria)
    wire = sent.to_json()
    assert wire["prune"]["fetched"] == [RUN] and wire["prune"]["states"] == list(contracts.TERMINAL)
    assert contracts.PruneRequest.from_json(wire) == sent
    assert _refusal("prune", {}) == "prune must be an object"
    assert _refusal("prune", {"prune": {"states": ["running"]}}) == \
        "prune.states must be a non-empty list of succeeded, failed, cancelled, lost"
    assert _refusal("prune", {"prune": {"fetched": [RUN.upper()]}}) == \
        f"prune.fetched must be a list of at most {contracts.MAX_FETCHED} run ids"


def test_a_slurm_block_that_ended_without_dying_is_asked_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat asks Slurm about blocks Parsl calls FAILED/MISSING; one that Slurm
    says COMPLETED or CANCELLED is settled, while a death is recorded and a job Slurm
    could not answer for is asked again. (Slurm's answers are given here: the rule is
    what is tested; tests/test_slurm_e2e.py meets the real scontrol.)"""
    from types import SimpleNamespace

    from login_node import blocks

    answers = {"1": ("COMPLETED", "0:0", "ended"), "2": ("CANCELLED", "0:15", "cancelled"),
               "3": ("FAILED", "3:0", "Slurm job 3 FAILED"), "4": None}
    asked: list[str] = []

    def reason(job_id: str) -> tuple[str, str | None, str] | None:
        asked.append(job_id)
        return answers[job_id]

    class SlurmProvider:  # named as Parsl's: failures() tells providers apart by class name
        def __init__(self) -> None:
            missing = SimpleNamespace(state=SimpleNamespace(name="MISSING"))
            self.resources = {job_id: {"status": missing} for job_id in answers}

    monkeypatch.setattr(blocks, "slurm_reason", reason)
    provider, known = SlurmProvider(), {}
    for _ in range(3):
        found = blocks.failures([provider], known)
    assert [d["job"] for d in found] == ["3"] and found[0]["scheduler_state"] == "FAILED"
    assert sorted(asked) == ["1", "2", "3", "4", "4", "4"]
