"""The ``globus`` transport against a FAKED Globus Compute service.

The Globus cloud service cannot be reached from here, so every test in this
file talks to ``tests.fake_globus.FakeComputeService``: an HTTP-level fake
(``responses``) of the documented web API routes the SDK calls. The SDK, its
auth app and token storage, and our transport are the real code; tasks the
fake accepts run through the endpoint's real ``execute_task``. No real sleeps:
the transport's clock and sleep are injected.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from bundle import api, endpoints, errors
from bundle.cli import main
from bundle.protocol import PROTOCOL, TASKS, request, unwrap
from bundle.transport import Tally, get_transport
from bundle.transport.globus import FunctionIds, GlobusTransport, RateLimiter
from bundle.transport.wire import pack_task, task_function
from tests.conftest import EXAMPLES, write_workflow
from tests.fake_globus import (
    ACCESS_TOKEN,
    AUTH,
    FakeComputeService,
    client_credentials_grant,
    store_login,
)

EP = "2b3c4d5e-0000-4000-8000-00000000e0e0"
CLIENT_ID = "5c0ffee0-0000-4000-8000-000000000001"


class Clock:
    """Fake time for the transport: ``sleep`` advances it and records the delay."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        if self.on_sleep:
            self.on_sleep(seconds)


@pytest.fixture
def compute_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SDK's own directory (token storage), private to the test."""
    d = tmp_path / "globus_compute"
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(d))
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    monkeypatch.delenv("GLOBUS_SDK_ENVIRONMENT", raising=False)
    monkeypatch.delenv("GCBUNDLE_TASK_TIMEOUT", raising=False)
    return d


@pytest.fixture
def service(tmp_path: Path, compute_dir: Path) -> Iterator[FakeComputeService]:
    """The faked Globus Compute service (see tests/fake_globus.py)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        svc = FakeComputeService(rsps, EP, tmp_path / "endpoint-tasks")
        try:
            yield svc
        finally:
            svc.close()


@pytest.fixture
def logged_in(compute_dir: Path) -> None:
    store_login(compute_dir)


@pytest.fixture
def headless(service: FakeComputeService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client credentials in the environment, and a (faked) Globus Auth that grants them tokens."""
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "fake-secret")
    service.rsps.add_callback("POST", f"{AUTH}/v2/oauth2/token", callback=client_credentials_grant)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_pace(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Transports the CLI makes share the process's rate limiter: give it fake time."""
    pace = Clock()
    monkeypatch.setattr("bundle.transport.globus._SHARED_LIMITER", RateLimiter(clock=pace.now, sleep=pace.sleep))
    return pace


def make(clock: Clock, **kw: Any) -> GlobusTransport:
    kw.setdefault("label", "testsite")
    return GlobusTransport(EP, interactive=False, sleep=clock.sleep, clock=clock.now, **kw)


# -- the same bytes as the local transport ---------------------------------------------------

def test_globus_and_local_transports_speak_the_same_bytes(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    """What the globus transport sends (function code + arguments) is byte for byte the
    task buffer the local transport builds; the endpoint's real execute_task runs it
    and the globus transport's code path reads its result."""
    t = make(clock)
    req = request(digests=["0" * 64])
    reply = t._run("probe", req)
    assert unwrap(reply) == {"cached": []}

    (fid, payload), = service.submitted
    sent = service.functions[fid]["function_code"] + payload
    _, local_packed = pack_task(task_function("probe"), req)
    from globus_compute_common import messagepack

    assert messagepack.unpack(local_packed).task_buffer == sent
    # and the other way: the local transport's buffer, run by execute_task, read by the globus path
    tid = str(uuid.uuid4())
    service.tasks[tid] = service.run_on_endpoint(uuid.UUID(tid), messagepack.unpack(local_packed).task_buffer)
    assert unwrap(t._wait("probe", tid)) == {"cached": []}


def test_requests_carry_the_sdk_login_and_nothing_else_of_ours(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    make(clock).call("probe", digests=[])
    assert service.log and all(auth == f"Bearer {ACCESS_TOKEN}" for _, _, auth in service.log)
    assert [p for _, p, _ in service.log][:2] == [f"/v2/endpoints/{EP}/status", "/v3/functions"]


def test_login_node_errors_arrive_as_the_same_classes(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    with pytest.raises(errors.RunNotFound):
        make(clock).call("status", run_id="abcdef012345")


def test_a_whole_run_through_the_globus_transport(
    tmp_path: Path, service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    """submit, wait, results: every task through the faked service and the real execute_task."""
    t = make(clock)
    tally = Tally.attach(t)
    run = api.submit(EXAMPLES / "hello" / "workflow.py", EP, args={"n": 3}, transport=t, wait=True)
    assert run.last_state["state"] == "succeeded"
    assert run.result(tmp_path / "res")["sum_of_squares"] == 0 + 1 + 4
    assert {"launch", "status", "results_manifest", "results_chunk"} <= set(tally.calls)
    # one registration per task function, then only submissions by id
    assert len(service.requests_to("POST", "/v3/functions")) == len(set(tally.calls))
    assert len(service.submitted) == tally.sent


def test_the_pace_stays_under_the_service_limit(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    t = make(clock)
    for _ in range(12):
        t.call("probe", digests=[])
    # 1 status + 1 registration + 12 x (submit + poll) = 26 requests: more than 18 in 10 s needs a pause
    assert len(service.log) == 26
    assert clock.sleeps and all(s > 0 for s in clock.sleeps)


def test_rate_limiter_never_allows_more_than_the_limit_in_a_window() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=18, window=10.0, clock=clock.now, sleep=clock.sleep)
    stamps = []
    for _ in range(60):
        limiter.acquire()
        stamps.append(clock.now())
    for i, t0 in enumerate(stamps):
        assert sum(1 for t1 in stamps[i:] if t1 - t0 < 10.0) <= 18


# -- function registration -------------------------------------------------------------------

def test_function_ids_are_remembered_across_transports(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    make(clock).call("probe", digests=[])
    make(clock).call("probe", digests=[])
    assert len(service.requests_to("POST", "/v3/functions")) == 1
    assert len(service.submitted) == 2


def test_a_forgotten_function_is_registered_again_once(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    t = make(clock)
    t.call("probe", digests=[])
    service.functions.clear()  # the service dropped it (or we log in as someone else now)
    assert make(clock).call("probe", digests=[]) == {"cached": []}
    assert len(service.requests_to("POST", "/v3/functions")) == 2
    service.functions.clear()  # and again, for a transport that registered it in this process
    assert t.call("probe", digests=[]) == {"cached": []}
    assert len(service.requests_to("POST", "/v3/functions")) == 3


def test_register_stores_ids_and_tasks_then_use_them(
    service: FakeComputeService, logged_in: None, fake_pace: Clock
) -> None:
    endpoints.add("testsite", EP)
    res = CliRunner().invoke(main, ["register", "--endpoint", "testsite", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["data"]
    assert set(data["functions"]) == set(TASKS) and data["alias"] == "testsite"
    assert sorted(data["allowed_functions"]) == sorted(data["functions"].values())
    assert endpoints.resolve("testsite").functions == data["functions"]
    human = CliRunner().invoke(main, ["register", "--endpoint", "testsite"]).stdout
    assert "allowed_functions:" in human and "# gcbundle probe" in human
    data["functions"] = endpoints.resolve("testsite").functions  # the second run registered anew
    assert all(f"  - {fid}  # gcbundle {task}" in human for task, fid in data["functions"].items())
    # the file for the administrator's users, read back by `endpoints add --functions`
    shared = endpoints.config_path().parent / "gcbundle-functions.yaml"
    assert CliRunner().invoke(main, ["register", "--endpoint", "testsite", "-o", str(shared)]).exit_code == 0
    data["functions"] = endpoints.resolve("testsite").functions
    assert endpoints.read_function_ids(shared) == data["functions"]
    res = CliRunner().invoke(main, ["endpoints", "add", "other", EP, "--functions", str(shared), "--json"])
    assert json.loads(res.stdout)["data"]["functions"] == data["functions"]

    # the administrator allows exactly those ids; tasks now go by id, nothing is registered
    service.allowed = set(data["functions"].values())
    service.log.clear()
    t = get_transport("testsite")
    assert isinstance(t, GlobusTransport) and t.functions == data["functions"]
    t.interactive = False
    assert t.call("probe", digests=[]) == {"cached": []}
    assert service.requests_to("POST", "/v3/functions") == []
    assert service.submitted[-1][0] == data["functions"]["probe"]


def test_function_not_permitted(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.allowed = set()  # the endpoint runs allow-listed functions only; ours is not listed
    with pytest.raises(errors.FunctionNotPermitted) as err:
        make(clock).call("probe", digests=[])
    assert "allow-listed" in str(err.value) and "gcbundle register --endpoint testsite" in err.value.hint
    assert len(service.requests_to("POST", "/v3/functions")) == 1, "not mistaken for a stale function id"


def test_an_alias_without_an_id_for_a_task_says_to_register_again(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    with pytest.raises(errors.FunctionNotPermitted, match="none for the status task"):
        make(clock, functions={"probe": str(uuid.uuid4())}).call("status", run_id="abcdef012345")


def test_registered_ids_not_shared_with_you(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    with pytest.raises(errors.FunctionNotPermitted) as err:
        make(clock, functions={"probe": str(uuid.uuid4())}).call("probe", digests=[])
    assert "FUNCTION_NOT_FOUND" in str(err.value) and "--public" in err.value.hint


# -- authentication --------------------------------------------------------------------------

def test_not_logged_in(service: FakeComputeService, clock: Clock) -> None:
    with pytest.raises(errors.NotLoggedIn) as err:
        make(clock).call("probe", digests=[])
    assert "gcbundle login" in err.value.hint and "GLOBUS_COMPUTE_CLIENT_SECRET" in err.value.hint
    assert service.log == [], "nothing is sent without credentials"


def test_not_logged_in_through_the_cli_json_envelope(service: FakeComputeService, fake_pace: Clock) -> None:
    endpoints.add("testsite", EP)
    res = CliRunner().invoke(main, ["register", "--endpoint", "testsite", "--json"])
    env = json.loads(res.stdout)
    assert res.exit_code == errors.NotLoggedIn.exit_code
    assert env["status"] == "error" and env["errors"][0]["type"] == "NotLoggedIn"


def test_expired_login(service: FakeComputeService, compute_dir: Path, clock: Clock) -> None:
    store_login(compute_dir, expired=True)
    service.rsps.add("POST", f"{AUTH}/v2/oauth2/token", json={"error": "invalid_grant"}, status=400)
    with pytest.raises(errors.NotLoggedIn, match="expired or was revoked") as err:
        make(clock).call("probe", digests=[])
    assert "gcbundle login" in err.value.hint


def test_credentials_the_service_refuses(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.rsps.add("POST", f"{AUTH}/v2/oauth2/token", json={"error": "invalid_grant"}, status=400)
    service.fail("status", 401, "UNAUTHORIZED", "token is not valid", times=5)
    with pytest.raises(errors.NotLoggedIn):
        make(clock).call("probe", digests=[])


def test_headless_client_credentials(service: FakeComputeService, headless: None, clock: Clock) -> None:
    assert make(clock).call("probe", digests=[]) == {"cached": []}
    assert all(auth == f"Bearer {ACCESS_TOKEN}" for _, _, auth in service.log)


def test_headless_client_credentials_refused(
    service: FakeComputeService, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "wrong")
    service.rsps.add("POST", f"{AUTH}/v2/oauth2/token", json={"error": "invalid_client"}, status=401)
    with pytest.raises(errors.NotLoggedIn, match="GLOBUS_COMPUTE_CLIENT_ID"):
        make(clock).call("probe", digests=[])


def test_no_token_in_any_message_or_log(
    service: FakeComputeService, logged_in: None, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service.fail("submit", 429, "TOO_MANY_REQUESTS", "slow down", headers={"Retry-After": "1"})
    service.fail("submit", 413, "TASK_PAYLOAD_TOO_LARGE", "too large")
    texts = []
    for _ in range(2):
        try:
            make(clock).call("probe", digests=[])
        except errors.GcbundleError as exc:
            texts.append(json.dumps(exc.to_json()))
    assert texts
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bundle"))
    for text in (*texts, ours):
        assert ACCESS_TOKEN not in text and "fake-refresh-token" not in text


# -- the endpoint ----------------------------------------------------------------------------

def test_endpoint_offline(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.endpoints[EP] = "offline"
    with pytest.raises(errors.EndpointUnavailable, match="endpoint testsite is offline") as err:
        make(clock).call("probe", digests=[])
    assert "globus-compute-endpoint start" in err.value.hint
    assert service.submitted == [], "nothing is queued for an endpoint that is down"


def test_endpoint_unknown(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    del service.endpoints[EP]
    with pytest.raises(errors.EndpointUnavailable, match="knows no endpoint testsite") as err:
        make(clock).call("probe", digests=[])
    assert "endpoints add" in err.value.hint


def test_endpoint_not_yours(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.fail("status", 403, "ENDPOINT_ACCESS_FORBIDDEN", "you may not use this endpoint")
    with pytest.raises(errors.EndpointUnavailable, match="does not let you use"):
        make(clock).call("probe", digests=[])


def test_task_pending_too_long_says_the_endpoint_may_be_busy(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    service.stuck_status = "waiting-for-ep"
    with pytest.raises(errors.TaskTimeout) as err:
        make(clock, task_timeout=30).call("probe", digests=[])
    assert "waited 30 s" in str(err.value) and "waiting-for-ep" in str(err.value)
    hint = err.value.hint
    assert "may be busy" in hint and "one task at a time" in hint and "GCBUNDLE_TASK_TIMEOUT" in hint
    assert sum(clock.sleeps) == pytest.approx(30)
    assert max(clock.sleeps) <= 5.0


def test_a_task_pending_a_while_says_cold_start_once(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    """Not silent for the ~20 s of a cold start (the daemon tier sees the real one)."""
    notes: list[str] = []
    service.stuck_status = "waiting-for-ep"
    with pytest.raises(errors.TaskTimeout):
        make(clock, task_timeout=30, notify=notes.append).call("probe", digests=[])
    assert len(notes) == 1 and "cold start" in notes[0] and "probe task has waited" in notes[0], notes
    notes.clear()
    service.stuck_status = None
    assert make(clock, notify=notes.append).call("probe", digests=[]) == {"cached": []}
    assert notes == []  # an answer within 5 s says nothing


def test_task_pending_while_the_endpoint_went_offline(service: FakeComputeService, logged_in: None) -> None:
    service.stuck_status = "waiting-for-ep"
    clock = Clock(on_sleep=lambda _: service.endpoints.__setitem__(EP, "offline"))
    with pytest.raises(errors.EndpointUnavailable, match="offline .*stays queued"):
        make(clock, task_timeout=10).call("probe", digests=[])


def test_task_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCBUNDLE_TASK_TIMEOUT", "42")
    assert GlobusTransport(EP).task_timeout == 42.0


# -- sizes -----------------------------------------------------------------------------------

def test_task_payload_too_large(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.fail("submit", 413, "TASK_PAYLOAD_TOO_LARGE", "Task payload of 10485761 bytes exceeds the limit")
    with pytest.raises(errors.PayloadTooLarge, match="TASK_PAYLOAD_TOO_LARGE"):
        make(clock).call("probe", digests=[])


def test_too_large_is_refused_before_sending(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    with pytest.raises(errors.PayloadTooLarge, match="above the"):
        too_big = b"x" * (11 * 1024 * 1024)
        make(clock).call("stage", digest="0" * 64, archive_sha256="0" * 64, size=1, index=0, data=too_big)
    assert service.submitted == []


def test_max_result_size_exceeded(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.result_limit = 200  # the endpoint's own execute_task refuses the (error) reply
    with pytest.raises(errors.PayloadTooLarge, match="MaxResultSizeExceeded") as err:
        make(clock).call("status", run_id="abcdef012345")
    assert "exceeded the endpoint's result limit (200 bytes)" in str(err.value)


# -- rate limiting and a flaky service -------------------------------------------------------

def test_http_429_backs_off_and_succeeds(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.fail("submit", 429, "TOO_MANY_REQUESTS", "Rate limit exceeded", headers={"Retry-After": "3"}, times=2)
    assert make(clock).call("probe", digests=[]) == {"cached": []}
    assert clock.sleeps == [3.0, 3.0]
    assert len(service.submitted) == 1


def test_http_429_without_retry_after_backs_off_exponentially(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    service.fail("task", 429, "TOO_MANY_REQUESTS", "Rate limit exceeded", times=4)
    assert make(clock).call("probe", digests=[]) == {"cached": []}
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]


def test_http_429_forever_gives_up_after_patience(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.fail("status", 429, "TOO_MANY_REQUESTS", "Rate limit exceeded", headers={"Retry-After": "60"}, times=1000)
    with pytest.raises(errors.RateLimited) as err:
        make(clock, rate_limit_patience=600).call("probe", digests=[])
    assert sum(clock.sleeps) <= 600 and len(clock.sleeps) == 10
    assert "wait a few minutes" in err.value.hint


def test_server_errors_retry_reads_but_not_submissions(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    service.fail("task", 502, None, "bad gateway")
    assert make(clock).call("probe", digests=[]) == {"cached": []}
    service.fail("submit", 502, None, "bad gateway")
    with pytest.raises(errors.TransportError, match="may or may not have been accepted"):
        make(clock).call("probe", digests=[])


# -- the login node's side -------------------------------------------------------------------

def test_incompatible_login_node_protocol_passes_through(
    service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    """The login node's own version check answers in the reply envelope; the globus
    transport delivers that envelope untouched, so ProtocolMismatch reaches the user."""
    t = make(clock)
    newer = {**request(digests=[]), "protocol": PROTOCOL + 1, "client_version": "99.0"}
    with pytest.raises(errors.ProtocolMismatch, match="upgrade gcbundle on the login node"):
        unwrap(t._run("probe", newer))


def test_login_node_without_gcbundle(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.remote_error = (
        "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'login_node'\n"
    )
    with pytest.raises(errors.RemoteError, match="gcbundle is not installed") as err:
        make(clock).call("probe", digests=[])
    assert "Ansible" in err.value.hint


def test_login_node_with_an_older_gcbundle(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.remote_error = (
        "Traceback (most recent call last):\nAttributeError: module 'login_node.tasks' has no attribute 'doctor'\n"
    )
    with pytest.raises(errors.ProtocolMismatch, match="older than this client"):
        make(clock).call("doctor")


def test_remote_failure_of_another_kind(service: FakeComputeService, logged_in: None, clock: Clock) -> None:
    service.remote_error = "Traceback (most recent call last):\nOSError: [Errno 28] No space left on device\n"
    with pytest.raises(errors.RemoteError, match="No space left on device"):
        make(clock).call("probe", digests=[])


def test_get_transport_accepts_alias_and_uuid(tmp_path: Path) -> None:
    endpoints.add("testsite", EP, functions={"probe": "6d0ba55f-de15-4af2-827d-05c50c338aa7"})
    by_alias, by_uuid = get_transport("testsite"), get_transport(EP.upper())
    assert isinstance(by_alias, GlobusTransport) and by_alias.endpoint_id == EP and by_alias.label == "testsite"
    assert isinstance(by_uuid, GlobusTransport) and by_uuid.functions == by_alias.functions
    other = str(uuid.uuid4())
    assert get_transport(other).label == other and get_transport(other).functions == {}


def test_function_id_cache_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / "ids.json"
    path.write_text("{not json")
    ids = FunctionIds(path)
    assert ids.get("k") is None
    ids.put("k", "v")
    assert FunctionIds(path).get("k") == "v"
    ids.put("k", None)
    assert FunctionIds(path).get("k") is None


def test_login_command_with_client_credentials(service: FakeComputeService, headless: None, fake_pace: Clock) -> None:
    res = CliRunner().invoke(main, ["login", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["headless"] is True
    assert ACCESS_TOKEN not in res.output


def test_login_command_needs_a_terminal(service: FakeComputeService) -> None:
    res = CliRunner().invoke(main, ["login"])
    assert res.exit_code == errors.NotLoggedIn.exit_code and "needs a terminal" in res.output


def test_a_large_bundle_is_staged_in_chunks_once(
    tmp_path: Path, service: FakeComputeService, logged_in: None, clock: Clock
) -> None:
    """Over the per-task limit, a bundle goes up in chunks that each fit the
    service's 10 MiB (the fake refuses anything larger); a second submission of
    the same bundle sends no bundle bytes at all."""
    root = tmp_path / "big"
    (root / "data").mkdir(parents=True)
    (root / "data" / "blob.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # incompressible
    wf = write_workflow(root, 'GCBUNDLE_INCLUDE = ["data/blob.bin"]\n\n'
                              'def main():\n    import os\n    return os.path.getsize("data/blob.bin")\n')
    t = make(clock)
    tally = Tally.attach(t)
    run = api.submit(wf, EP, transport=t, wait=True)
    assert run.result(tmp_path / "res") == 9 * 1024 * 1024
    assert tally.calls["stage"] == 2
    sizes = [len(service.functions[fid]["function_code"]) + len(p) for fid, p in service.submitted]
    assert max(sizes) <= service.task_limit
    before = len(service.submitted)
    api.submit(wf, EP, transport=t, wait=True)
    assert tally.calls["stage"] == 2, "the cached digest is not sent again"
    assert max(len(p) for _, p in service.submitted[before:]) < 64 * 1024
