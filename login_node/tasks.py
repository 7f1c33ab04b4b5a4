"""The task functions a Globus Compute endpoint runs for gcbundle.

Each is short (seconds), takes one request dict and returns one reply dict
(``bundle.protocol``), and confines every path it touches to
``$GCBUNDLE_HOME``. The request is parsed and checked by its contract
(``bundle.contracts``) before the task runs: every field of its kind, and run
ids and digests against strict patterns before they name anything on disk;
the task reads the checked request's attributes. These are the functions a
site lists in ``allowed_functions``; their names are part of the protocol.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from bundle import archive, placement, profiles
from bundle.contracts import (
    RUN_ID,
    CancelRequest,
    Contract,
    DoctorRequest,
    LaunchRequest,
    LaunchSpec,
    LogsRequest,
    ProbeRequest,
    PruneRequest,
    ResultsChunkRequest,
    ResultsManifestRequest,
    RunsRequest,
    StageRequest,
    StatusRequest,
    check_reply_shape,
    check_run_id,
    parse_request,
)
from bundle.errors import BundleError, GcbundleError, RunNotFound, RunStateError, UsageError
from bundle.protocol import PROTOCOL, check_request, error_reply, reply
from login_node import blocks, driverenv, driverjob, envcheck, procs, results, state
from login_node.cache import Cache
from login_node.doctor import site_report
from login_node.orphans import reap
from login_node.prune import prune as prune_home
from login_node.rundir import Home, RunPaths, RunRequest, read_json, write_json
from login_node.siteconfig import SiteDefaults
from login_node.spawn import driver_env, spawn

#: How long ``launch`` waits for the driver to report that it started.
LAUNCH_WAIT = float(os.environ.get("GCBUNDLE_LAUNCH_WAIT", "60"))


def _task(fn: Callable[[Any, Home], Any] | None = None, *, ensure_home: bool = True) -> Any:
    """A task function: the request checked and parsed into its contract's request
    object (``bundle.contracts``), which the function is given; ``$GCBUNDLE_HOME``
    made ready (a HomeError otherwise; ``doctor`` reports it as a check instead);
    errors as envelopes."""
    def decorate(fn: Callable[[Any, Home], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        @functools.wraps(fn)
        def wrapper(req: dict[str, Any]) -> dict[str, Any]:
            try:
                request: Contract = parse_request(fn.__name__, check_request(req))
                home = Home.default()
                if ensure_home:
                    home.ensure()
                # Built to the same declaration the client checks it against
                # (``bundle.contracts``): a reply this login node gets wrong is an
                # error here, with the task and field named, not bad data there.
                return reply(check_reply_shape(fn.__name__, fn(request, home)))
            except GcbundleError as exc:
                return error_reply(exc)

        return wrapper

    return decorate(fn) if fn is not None else decorate


@_task
def probe(req: ProbeRequest, home: Home) -> dict[str, Any]:
    """Which of the given bundles are cached, and which chunks of an upload have arrived."""
    cache = Cache(home)
    out: dict[str, Any] = {"cached": [d for d in req.digests if cache.has(d)]}
    if req.archive_sha256 and len(req.digests) == 1:
        out["staged_chunks"] = cache.staged_chunks(req.digests[0], req.archive_sha256)
    if req.bases is not None:  # protocol 2: which of these could a delta be made against
        out["bases"] = [b for b in req.bases if cache.has(b)]
        out["protocol"] = PROTOCOL
    return out


@_task
def stage(req: StageRequest, home: Home) -> dict[str, Any]:
    """Store one chunk of a bundle in the cache's staging area."""
    complete = Cache(home).put_chunk(req.digest, req.archive_sha256, req.size, req.index, req.data, base=req.base)
    return {"complete": complete}


@_task
def launch(req: LaunchRequest, home: Home) -> dict[str, Any]:
    """Extract a cached bundle into a new run directory and start its detached driver."""
    run_id, digest = req.run_id, req.digest
    cache = Cache(home)
    if req.bundle is not None:
        cache.put_whole(digest, req.archive_sha256, req.bundle)
    if not cache.has(digest):
        return {"missing_bundle": True}
    paths = home.run(run_id)
    if paths.root.exists():
        raise RunStateError(f"run {run_id} already exists on the login node",
                            "submit again: the client picks a new run id")
    spec = _inherit(home, req.spec)
    resumed = _resume_sources(home, spec)
    try:
        needs = envcheck.needed(cache.path(digest))  # the workflow's third-party imports
    except BundleError as exc:
        return _damaged(cache, digest, req, exc)
    # Before the run exists: a failed preflight leaves nothing.
    plan = _driver_plan(home, paths, spec, [ref.top for ref in needs])
    envcheck.check(needs, spec.site, plan.get("environment"))
    try:
        _create_run(home, paths, cache.path(digest), digest, spec, resumed)
    except BundleError as exc:
        return _damaged(cache, digest, req, exc)
    write_json(paths.driver_plan, plan)
    if plan["placement"] == "batch":
        try:
            return {"state": driverjob.submit(home, paths, plan, SiteDefaults.read(home).worker_init)}
        except BaseException:
            shutil.rmtree(paths.root, ignore_errors=True)  # a job that was never queued leaves no run
            raise
    try:
        pid = spawn(paths)
    except Exception as exc:
        st = state.read_raw(paths)
        error = {"message": f"the driver could not be started: {exc}", "traceback": traceback.format_exc()}
        st.update(state="failed", error=error)
        state.write(paths, st)
        raise RunStateError(f"the driver of run {run_id} could not be started: {exc}",
                            "check the login node's Python environment with `gcbundle doctor`") from None
    return {"state": _wait_started(paths, pid)}


def _damaged(cache: Cache, digest: str, req: LaunchRequest, exc: BundleError) -> dict[str, Any]:
    """A cached bundle failed its checks at launch. One that came in this very
    task was checked as it arrived: then the bundle itself is bad. Otherwise the
    cached copy was damaged on disk: drop it, and the client sends the bundle
    again, once, as for a bundle that was never cached."""
    if req.bundle is not None:
        raise exc
    cache.evict(digest)
    return {"missing_bundle": True, "evicted": str(exc)[:200]}


def _driver_plan(home: Home, paths: RunPaths, spec: LaunchSpec, imports: list[str]) -> dict[str, Any]:
    """How the run's driver starts: in the endpoint's environment, or after
    ``driver_init`` in the user's, checked first (``login_node.driverenv``; it
    also looks for the workflow's third-party ``imports`` there)."""
    site = SiteDefaults.read(home)
    rendered = None
    options = {"driver_init": "", "placement": "login"}
    if spec.site:
        profile, params = profiles.Profile.from_spec(spec.site)
        params = {**site.params_for(profile), **params}
        options = profile.driver_options(params)
        rendered = profiles.substitute(profile, params)
    driver_init = options["driver_init"] or site.driver_init
    plan: dict[str, Any] = {"driver_init": driver_init, "placement": options["placement"], "rendered": rendered}
    if options["placement"] == "batch":
        placement.batch_provider_node(rendered or {})
    if driver_init.strip():
        lib = driverenv.ship(home)
        env = driverenv.env_for(paths, driver_env(paths))
        found = driverenv.preflight(paths, driver_init, rendered, env, lib, imports)
        plan.update(lib=str(lib), environment=found)
    return plan


def _inherit(home: Home, spec: LaunchSpec) -> LaunchSpec:
    """A resume without new arguments runs with the earlier run's arguments and site."""
    prev = spec.resumed_from
    if prev is None:
        return spec
    prev_paths = home.run(prev).require()
    st = state.effective(prev_paths)
    if not state.is_terminal(st):
        raise RunStateError(f"run {prev} is still {st.get('state')}",
                            f"cancel it first (`gcbundle cancel {prev}`), or wait for it to end")
    reap(prev_paths, st)
    if not spec.inherit:
        return spec
    earlier = RunRequest.read(prev_paths)
    return dataclasses.replace(spec, args=spec.args or earlier.args, site=spec.site or earlier.site,
                               params=spec.params or earlier.params)


def _await_change(paths: RunPaths, st: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Watch ``state.json`` until the state differs from ``st``'s or ends, or until ``deadline``.

    Only a stat every 50 ms while nothing is written; the file is read when
    its mtime moves (heartbeats move it too, so a wait also sees the current
    task counts) and once more at the end, for ``lost``, which no one writes.
    """
    first = st.get("state")
    seen = None
    while not state.is_terminal(st) and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        try:
            mtime = os.stat(paths.state).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != seen:
            seen = mtime
            st = state.effective(paths)
            if st.get("state") != first and not state.is_terminal(st):
                return st
    st = state.effective(paths)
    if state.is_terminal(st) and st.get("host") == state.hostname():
        # The driver writes its final state, then stops what is left of the run
        # and exits: a waiting client is answered once it has, so "ended" also
        # means "nothing of the run is still running" (a fraction of a second).
        while state.alive(st.get("pid"), st.get("pid_start")) and time.monotonic() < deadline:
            time.sleep(0.02)
    return st


def _resume_sources(home: Home, spec: LaunchSpec) -> list[str]:
    """Run ids whose checkpoints a resumed run loads (the chain of earlier resumes too)."""
    prev = spec.resumed_from
    if prev is None:
        return []
    prev_paths = home.run(prev).require()
    earlier = RunRequest.read(prev_paths).checkpoint_runs
    chain = [prev, *[r for r in earlier if isinstance(r, str)]]
    return [check_run_id(r) for r in chain]  # run.json is a file on disk: its ids are checked as read


def _create_run(home: Home, paths: RunPaths, bundle_path: Any, digest: str, spec: LaunchSpec,
                checkpoint_runs: list[str]) -> None:
    """Build the run directory beside its final name and rename it into place."""
    tmp = home.runs / f".{paths.run_id}.creating.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        tmp_paths = RunPaths(tmp)
        manifest = archive.extract(bundle_path, tmp_paths.bundle, expected_digest=digest)
        for d in (tmp_paths.outputs, tmp_paths.runinfo):
            d.mkdir(mode=0o700)
        args = dict(manifest.args)
        args.update(spec.args or {})
        request = RunRequest(
            run_id=paths.run_id, digest=digest, entry=manifest.entry, mode=manifest.mode, config=dict(manifest.config),
            args=args, site=spec.site, params=dict(spec.params or {}), resumed_from=spec.resumed_from,
            checkpoint_runs=checkpoint_runs, client=dict(manifest.client), submitted=time.time(),
        )
        write_json(tmp_paths.request, request.to_json())
        staged = {"run_id": paths.run_id, "state": "staged", "digest": digest, "resumed_from": spec.resumed_from}
        state.write(tmp_paths, staged)
        os.rename(tmp, paths.root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _wait_started(paths: RunPaths, pid: int) -> dict[str, Any]:
    deadline = time.monotonic() + LAUNCH_WAIT
    while time.monotonic() < deadline:
        st = state.read_raw(paths)
        if st.get("state") != "staged":
            return state.effective(paths)
        if state.process_start_time(pid) is None:
            st.update(state="failed", error={"message": "the driver exited before it started: " + _tail(paths.stderr)})
            state.write(paths, st)
            return st
        time.sleep(0.05)
    return state.effective(paths)


def _tail(path: Any, n: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        return "(no output)"


@_task
def status(req: StatusRequest, home: Home) -> dict[str, Any]:
    """The run's state; with ``wait`` (seconds, at most ``bundle.contracts.STATUS_WAIT_MAX``), first
    wait that long for it to change or end.

    A long poll: the client learns that a run ended within a fraction of a
    second, with one task per ``wait`` seconds instead of one per poll. A
    client that sends no ``wait`` gets the state at once, as before.
    """
    paths = home.run(req.run_id).require()
    st = state.effective(paths)
    if st.get("state") == "queued":
        st = driverjob.check_queued(paths, st)
    wait = req.wait
    if wait:
        started = time.monotonic()
        st = _await_change(paths, st, started + wait)
        st = {**st, "waited": round(time.monotonic() - started, 3)}
        if not paths.exists():
            raise RunNotFound(f"run {paths.run_id} is gone: its directory was deleted on the login node "
                              "while status waited",
                              "nothing of it is left to fetch; "
                              "`gcbundle list --endpoint ENDPOINT` shows the runs that remain")
    reaped = reap(paths, st)
    if reaped:
        st = {**st, "reaped_processes": reaped}
    return st


@_task
def logs(req: LogsRequest, home: Home) -> dict[str, Any]:
    """A slice of one of the run's logs, from ``offset``."""
    paths = home.run(req.run_id).require()
    name = req.name
    available = paths.log_files()
    if name not in available:
        raise UsageError(f"no log named {name!r} for run {paths.run_id}",
                         f"choose one of: {', '.join(sorted(available))}")
    offset = req.offset
    limit = req.max_bytes
    path = available[name]
    data = b""
    size = 0
    if path.is_file() and not path.is_symlink():
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if req.tail and offset == 0:
                offset = max(0, size - limit)
            f.seek(min(offset, size))
            data = f.read(limit)
    st = state.effective(paths)
    return {"data": data, "offset": offset, "next_offset": offset + len(data), "size": size, "state": st.get("state"),
            "logs": sorted(available)}


@_task
def results_manifest(req: ResultsManifestRequest, home: Home) -> dict[str, Any]:
    paths = home.run(req.run_id).require()
    st = state.effective(paths)
    if not state.is_terminal(st) and not req.partial:
        raise RunStateError(f"run {paths.run_id} is still {st.get('state')}",
                            f"wait for it to end (`gcbundle status {paths.run_id} --wait`), "
                            f"or stop it (`gcbundle cancel {paths.run_id}`)")
    if req.page is not None:  # protocol 3: the listing in pages
        return {"state": st, **results.page(paths, req.page, req.manifest_sha256)}
    return {"state": st, **results.manifest(paths)}


@_task
def results_chunk(req: ResultsChunkRequest, home: Home) -> dict[str, Any]:
    paths = home.run(req.run_id).require()
    return {"index": req.index, "data": results.read_chunk(paths, req.manifest_sha256, req.index)}


@_task
def runs(req: RunsRequest, home: Home) -> dict[str, Any]:
    """The runs on this login node (protocol 3): each one's state and what it ran.

    ``run_ids`` asks for those runs only (how ``gcbundle list`` refreshes the
    unfinished runs of an endpoint in one task); otherwise every run, in id
    order, ``limit`` at a time from after ``after``. A run found here can be
    adopted into a client's registry: one started from another machine, or
    whose registry row was lost.
    """
    ids, limit, after = req.run_ids, req.limit, req.after
    if ids is not None:
        wanted = sorted(set(ids))
    else:
        try:
            wanted = sorted(name for name in os.listdir(home.runs) if RUN_ID.fullmatch(name))
        except FileNotFoundError:
            wanted = []
        if after is not None:
            wanted = [r for r in wanted if r > after]
    page, rest = wanted[:limit], wanted[limit:]
    out = []
    for run_id in page:
        paths = home.run(run_id)
        if not paths.exists():
            out.append({"run_id": run_id, "state": "gone"})
            continue
        try:
            request = read_json(paths.request)
            if not isinstance(request, dict):
                raise ValueError("run.json holds no object")
        except (OSError, ValueError, RecursionError):
            request = {}
        st = state.effective(paths)
        site = request.get("site")
        out.append({
            "run_id": run_id, "state": st.get("state"), "detail": st.get("detail"), "updated": st.get("updated"),
            "digest": request.get("digest") if isinstance(request.get("digest"), str) else None,
            "entry": request.get("entry") if isinstance(request.get("entry"), str) else None,
            "site": site.get("name") if isinstance(site, dict) and isinstance(site.get("name"), str) else None,
            "submitted": request.get("submitted") if isinstance(request.get("submitted"), (int, float)) else None,
            "resumed_from": request.get("resumed_from") if isinstance(request.get("resumed_from"), str) else None,
        })
    return {"runs": out, "next": page[-1] if rest and ids is None else None}


@_task
def cancel(req: CancelRequest, home: Home) -> dict[str, Any]:
    """Ask the driver to stop, and make sure it and everything it started does."""
    paths = home.run(req.run_id).require()
    grace = float(req.grace)
    st = state.effective(paths)
    if state.is_terminal(st):
        return {"state": st, "already": True}
    if not paths.cancel_marker.exists():
        write_json(paths.cancel_marker, {"requested": time.time(), "host": state.hostname()})
    if st.get("state") == "unknown":
        # No readable state.json, so no recorded driver pid: stop whatever of
        # the run runs on this host, found by its environment and directory.
        swept = procs.sweep(paths.run_id, grace=min(grace, 10.0))
        return {"state": state.effective(paths), "escalated": swept}
    if st.get("state") == "queued":
        # placement=batch, the job not started yet: end it; a driver starting meanwhile sees the marker.
        driverjob.cancel(st)
        fresh = state.read_raw(paths)
        if fresh.get("state") == "queued":
            fresh.update(state="cancelled", finished=time.time(), detail="cancelled while its batch job was queued")
            state.write(paths, fresh)
        st = state.effective(paths)
    pid = st.get("pid")
    local = st.get("host") == state.hostname()
    if local and state.alive(pid, st.get("pid_start")):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        st = state.effective(paths)
        if state.is_terminal(st) and not (local and state.alive(pid, st.get("pid_start"))):
            break
        time.sleep(0.1)
    escalated = 0
    if not local and not state.is_terminal(st) and st.get("driver_job"):
        # placement=batch: the driver did not stop by itself in time: end its job.
        escalated += int(driverjob.cancel(st))
    if local:
        if state.alive(pid, st.get("pid_start")):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            escalated += 1
            blocks.cancel_recorded(state.read_raw(paths).get("batch_jobs") or {})
        escalated += procs.sweep(paths.run_id, grace=2.0)
    return {"state": state.effective(paths), "escalated": escalated}


@_task(ensure_home=False)
def doctor(req: DoctorRequest, home: Home) -> dict[str, Any]:
    return site_report(home, req.site, probe=bool(req.probe))


@_task
def prune(req: PruneRequest, home: Home) -> dict[str, Any]:
    """Remove finished runs and cached bundles by the client's criteria (``login_node.prune``)."""
    return prune_home(home, req.prune)
