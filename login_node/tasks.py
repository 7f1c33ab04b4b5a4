"""The task functions a Globus Compute endpoint runs for gcbundle.

Each is short (seconds), takes one request dict and returns one reply dict
(``bundle.protocol``), and confines every path it touches to
``$GCBUNDLE_HOME``: run ids and digests are checked against strict patterns
before they name anything on disk. These are the functions a site lists in
``allowed_functions``; their names are part of the protocol.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from bundle import archive, placement, profiles
from bundle.contracts import check_reply_shape, parse_request
from bundle.errors import BundleError, GcbundleError, RunNotFound, RunStateError, UsageError
from bundle.limits import LOG_SLICE_BYTES, RUNS_PAGE
from bundle.protocol import PROTOCOL, check_request, error_reply, reply
from login_node import blocks, driverenv, driverjob, envcheck, procs, results, state
from login_node.cache import Cache, check_digest
from login_node.doctor import site_report
from login_node.prune import Criteria
from login_node.prune import prune as prune_home
from login_node.rundir import DIGEST, RUN_ID, Home, RunPaths, RunRequest, check_run_id, read_json, write_json
from login_node.siteconfig import SiteDefaults
from login_node.spawn import driver_env, spawn

#: How long ``launch`` waits for the driver to report that it started.
LAUNCH_WAIT = float(os.environ.get("GCBUNDLE_LAUNCH_WAIT", "60"))


def _task(fn: Callable[[dict[str, Any], Home], Any] | None = None, *, ensure_home: bool = True) -> Any:
    """A task function: the request checked, ``$GCBUNDLE_HOME`` made ready (a
    HomeError otherwise; ``doctor`` reports it as a check instead), errors as
    envelopes."""
    def decorate(fn: Callable[[dict[str, Any], Home], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        @functools.wraps(fn)
        def wrapper(req: dict[str, Any]) -> dict[str, Any]:
            try:
                req = check_request(req)
                parse_request(fn.__name__, req)  # every field there and of its type (bundle.contracts)
                home = Home.default()
                if ensure_home:
                    home.ensure()
                # Built to the same declaration the client checks it against
                # (``bundle.contracts``): a reply this login node gets wrong is an
                # error here, with the task and field named, not bad data there.
                return reply(check_reply_shape(fn.__name__, fn(req, home)))
            except GcbundleError as exc:
                return error_reply(exc)

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _int(req: dict[str, Any], key: str, default: int | None = None, lo: int = 0, hi: int | None = None) -> int:
    value = req.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        raise UsageError(f"{key} must be an integer in {lo}..{hi if hi is not None else 'inf'}, got {value!r}")
    return value


@_task
def probe(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """Which of the given bundles are cached, and which chunks of an upload have arrived."""
    cache = Cache(home)
    digests = req.get("digests", [])
    if not isinstance(digests, list) or len(digests) > 1000:
        raise UsageError("digests must be a list of at most 1000 digests")
    out: dict[str, Any] = {"cached": [d for d in digests if cache.has(check_digest(d))]}
    if req.get("archive_sha256") and len(digests) == 1:
        out["staged_chunks"] = cache.staged_chunks(digests[0], req["archive_sha256"])
    bases = req.get("bases")
    if bases is not None:  # protocol 2: which of these could a delta be made against
        if not isinstance(bases, list) or len(bases) > 64:
            raise UsageError("bases must be a list of at most 64 digests")
        out["bases"] = [b for b in bases if cache.has(check_digest(b, "base"))]
        out["protocol"] = PROTOCOL
    return out


@_task
def stage(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """Store one chunk of a bundle in the cache's staging area."""
    complete = Cache(home).put_chunk(
        check_digest(req.get("digest")),
        check_digest(req.get("archive_sha256"), "archive_sha256"),
        _int(req, "size", lo=1),
        _int(req, "index"),
        req.get("data"),  # type: ignore[arg-type]
        base=None if req.get("base") is None else check_digest(req.get("base"), "base"),
    )
    return {"complete": complete}


@_task
def launch(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """Extract a cached bundle into a new run directory and start its detached driver."""
    run_id = check_run_id(req.get("run_id"))
    digest = check_digest(req.get("digest"))
    spec = check_spec(req.get("spec"))
    if req.get("bundle") is not None and not isinstance(req.get("bundle"), (bytes, bytearray)):
        raise UsageError(f"bundle must be bytes, got {type(req.get('bundle')).__name__}")
    cache = Cache(home)
    if req.get("bundle") is not None:
        cache.put_whole(digest, check_digest(req.get("archive_sha256"), "archive_sha256"), req["bundle"])  # type: ignore[arg-type]
    if not cache.has(digest):
        return {"missing_bundle": True}
    paths = home.run(run_id)
    if paths.root.exists():
        raise RunStateError(f"run {run_id} already exists on the login node", "submit again: the client picks a new run id")
    spec = _inherit(home, spec)
    resumed = _resume_sources(home, spec)
    try:
        needs = envcheck.needed(cache.path(digest))  # the workflow's third-party imports
    except BundleError as exc:
        return _damaged(cache, digest, req, exc)
    plan = _driver_plan(home, paths, spec, [ref.top for ref in needs])  # before the run exists: a failed preflight leaves nothing
    envcheck.check(needs, spec.get("site"), plan.get("environment"))
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
        st.update(state="failed", error={"message": f"the driver could not be started: {exc}", "traceback": traceback.format_exc()})
        state.write(paths, st)
        raise RunStateError(f"the driver of run {run_id} could not be started: {exc}",
                            "check the login node's Python environment with `gcbundle doctor`") from None
    return {"state": _wait_started(paths, pid)}


def _damaged(cache: Cache, digest: str, req: dict[str, Any], exc: BundleError) -> dict[str, Any]:
    """A cached bundle failed its checks at launch. One that came in this very
    task was checked as it arrived: then the bundle itself is bad. Otherwise the
    cached copy was damaged on disk: drop it, and the client sends the bundle
    again, once, as for a bundle that was never cached."""
    if req.get("bundle") is not None:
        raise exc
    cache.evict(digest)
    return {"missing_bundle": True, "evicted": str(exc)[:200]}


_SPEC_KEYS = {"args", "site", "params", "resumed_from", "inherit"}


def check_site_spec(site: Any, what: str = "spec.site") -> dict[str, Any] | None:
    """A site profile as it travels (``Profile.to_spec``), or None."""
    if site is None:
        return None
    if not isinstance(site, dict) or not isinstance(site.get("text"), str) or not isinstance(site.get("name", ""), str):
        raise UsageError(f"{what} must be a site profile object with a `text` string, got {type(site).__name__}", "send it with the gcbundle client")
    params = site.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise UsageError(f"{what}.params must be an object with string keys")
    return site


def check_spec(spec: Any) -> dict[str, Any]:
    """Every field of a launch's spec, by type, before anything is written.

    The detached driver reads these without the client there to hear about a
    bad one: a string ``site`` once crashed the driver before it could write a
    final state, leaving a run that read as lost.
    """
    if not isinstance(spec, dict):
        raise UsageError(f"spec must be an object, got {type(spec).__name__}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise UsageError(f"spec has unknown fields: {', '.join(sorted(map(str, unknown)))[:120]}",
                         "use a gcbundle client of the login node's version")
    args = spec.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise UsageError("spec.args must be an object whose keys are Python identifiers")
    params = spec.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise UsageError("spec.params must be an object with string keys")
    check_site_spec(spec.get("site"))
    if spec.get("resumed_from") is not None:
        check_run_id(spec["resumed_from"])
    if not isinstance(spec.get("inherit", False), bool):
        raise UsageError(f"spec.inherit must be true or false, got {spec.get('inherit')!r}"[:120])
    return {**spec, "args": args, "params": params}


def _driver_plan(home: Home, paths: RunPaths, spec: dict[str, Any], imports: list[str]) -> dict[str, Any]:
    """How the run's driver starts: in the endpoint's environment, or after
    ``driver_init`` in the user's, checked first (``login_node.driverenv``; it
    also looks for the workflow's third-party ``imports`` there)."""
    site = SiteDefaults.read(home)
    rendered = None
    options = {"driver_init": "", "placement": "login"}
    if spec.get("site"):
        profile, params = profiles.Profile.from_spec(spec["site"])
        params = {**site.params_for(profile), **params}
        options = profile.driver_options(params)
        rendered = profiles.substitute(profile, params)
    driver_init = options["driver_init"] or site.driver_init
    plan: dict[str, Any] = {"driver_init": driver_init, "placement": options["placement"], "rendered": rendered}
    if options["placement"] == "batch":
        placement.batch_provider_node(rendered or {})
    if driver_init.strip():
        lib = driverenv.ship(home)
        found = driverenv.preflight(paths, driver_init, rendered, driverenv.env_for(paths, driver_env(paths)), lib, imports)
        plan.update(lib=str(lib), environment=found)
    return plan


def _inherit(home: Home, spec: dict[str, Any]) -> dict[str, Any]:
    """A resume without new arguments runs with the earlier run's arguments and site."""
    prev = spec.get("resumed_from")
    if prev is None:
        return spec
    prev_paths = home.run(check_run_id(prev)).require()
    st = state.effective(prev_paths)
    if not state.is_terminal(st):
        raise RunStateError(f"run {prev} is still {st.get('state')}", f"cancel it first (`gcbundle cancel {prev}`), or wait for it to end")
    reap(prev_paths, st)
    if not spec.get("inherit"):
        return spec
    earlier = RunRequest.read(prev_paths)
    return {**spec, "args": spec.get("args") or earlier.args, "site": spec.get("site") or earlier.site,
            "params": spec.get("params") or earlier.params}


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


def reap(paths: RunPaths, st: dict[str, Any]) -> int:
    """Stop what is left on this host of a run whose driver is gone (orphaned
    interchange and workers after a crash or reboot); return how many."""
    if st.get("state") in ("lost", "cancelled") and st.get("host") == state.hostname() and not state.alive(st.get("pid"), st.get("pid_start")):
        return procs.sweep(paths.run_id, grace=2.0)
    return 0


def _resume_sources(home: Home, spec: dict[str, Any]) -> list[str]:
    """Run ids whose checkpoints a resumed run loads (the chain of earlier resumes too)."""
    prev = spec.get("resumed_from")
    if prev is None:
        return []
    prev_paths = home.run(check_run_id(prev)).require()
    earlier = RunRequest.read(prev_paths).checkpoint_runs
    chain = [prev, *[r for r in earlier if isinstance(r, str)]]
    return [check_run_id(r) for r in chain]


def _create_run(home: Home, paths: RunPaths, bundle_path: Any, digest: str, spec: dict[str, Any], checkpoint_runs: list[str]) -> None:
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
        args.update(spec.get("args") or {})
        request = RunRequest(
            run_id=paths.run_id, digest=digest, entry=manifest.entry, mode=manifest.mode, config=dict(manifest.config),
            args=args, site=spec.get("site"), params=dict(spec.get("params") or {}), resumed_from=spec.get("resumed_from"),
            checkpoint_runs=checkpoint_runs, client=dict(manifest.client), submitted=time.time(),
        )
        write_json(tmp_paths.request, request.to_json())
        state.write(tmp_paths, {"run_id": paths.run_id, "state": "staged", "digest": digest, "resumed_from": spec.get("resumed_from")})
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


#: Longest a status task may wait for the run's state to change (``wait``).
STATUS_WAIT_MAX = 30.0


@_task
def status(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """The run's state; with ``wait`` (seconds), first wait that long for it to change or end.

    A long poll: the client learns that a run ended within a fraction of a
    second, with one task per ``wait`` seconds instead of one per poll. A
    client that sends no ``wait`` gets the state at once, as before.
    """
    paths = home.run(check_run_id(req.get("run_id"))).require()
    st = state.effective(paths)
    if st.get("state") == "queued":
        st = driverjob.check_queued(paths, st)
    wait = req.get("wait", 0)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= STATUS_WAIT_MAX:
        raise UsageError(f"wait must be a number of seconds in 0..{STATUS_WAIT_MAX:g}, got {wait!r}")
    if wait:
        started = time.monotonic()
        st = _await_change(paths, st, started + wait)
        st = {**st, "waited": round(time.monotonic() - started, 3)}
        if not paths.exists():
            raise RunNotFound(f"run {paths.run_id} is gone: its directory was deleted on the login node while status waited",
                              "nothing of it is left to fetch; `gcbundle list --endpoint ENDPOINT` shows the runs that remain")
    reaped = reap(paths, st)
    if reaped:
        st = {**st, "reaped_processes": reaped}
    return st


@_task
def logs(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """A slice of one of the run's logs, from ``offset``."""
    paths = home.run(check_run_id(req.get("run_id"))).require()
    name = req.get("name", "driver")
    if not isinstance(name, str) or not isinstance(req.get("tail", False), bool):
        raise UsageError("logs takes a string `name` and a boolean `tail`")
    available = paths.log_files()
    if name not in available:
        raise UsageError(f"no log named {name!r} for run {paths.run_id}", f"choose one of: {', '.join(sorted(available))}")
    offset = _int(req, "offset", 0)
    limit = _int(req, "max_bytes", LOG_SLICE_BYTES, lo=1, hi=LOG_SLICE_BYTES)
    path = available[name]
    data = b""
    size = 0
    if path.is_file() and not path.is_symlink():
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if req.get("tail") and offset == 0:
                offset = max(0, size - limit)
            f.seek(min(offset, size))
            data = f.read(limit)
    st = state.effective(paths)
    return {"data": data, "offset": offset, "next_offset": offset + len(data), "size": size, "state": st.get("state"), "logs": sorted(available)}


@_task
def results_manifest(req: dict[str, Any], home: Home) -> dict[str, Any]:
    paths = home.run(check_run_id(req.get("run_id"))).require()
    st = state.effective(paths)
    if not isinstance(req.get("partial", False), bool):
        raise UsageError("partial must be true or false")
    if not state.is_terminal(st) and not req.get("partial"):
        raise RunStateError(f"run {paths.run_id} is still {st.get('state')}",
                            f"wait for it to end (`gcbundle status {paths.run_id} --wait`), or stop it (`gcbundle cancel {paths.run_id}`)")
    if "page" in req:  # protocol 3: the listing in pages
        sha = req.get("manifest_sha256")
        if sha is not None and not (isinstance(sha, str) and DIGEST.fullmatch(sha)):
            raise UsageError("manifest_sha256 must be 64 lowercase hex digits")
        return {"state": st, **results.page(paths, _int(req, "page"), sha)}
    return {"state": st, **results.manifest(paths)}


@_task
def results_chunk(req: dict[str, Any], home: Home) -> dict[str, Any]:
    paths = home.run(check_run_id(req.get("run_id"))).require()
    sha = req.get("manifest_sha256")
    if not isinstance(sha, str):
        raise UsageError("manifest_sha256 must be a string")
    index = _int(req, "index")
    return {"index": index, "data": results.read_chunk(paths, sha, index)}


@_task
def runs(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """The runs on this login node (protocol 3): each one's state and what it ran.

    ``run_ids`` asks for those runs only (how ``gcbundle list`` refreshes the
    unfinished runs of an endpoint in one task); otherwise every run, in id
    order, ``limit`` at a time from after ``after``. A run found here can be
    adopted into a client's registry: one started from another machine, or
    whose registry row was lost.
    """
    ids = req.get("run_ids")
    limit = _int(req, "limit", RUNS_PAGE, lo=1, hi=RUNS_PAGE)
    after = req.get("after")
    if after is not None:
        check_run_id(after)
    if ids is not None:
        if not isinstance(ids, list) or len(ids) > RUNS_PAGE:
            raise UsageError(f"run_ids must be a list of at most {RUNS_PAGE} run ids")
        wanted = sorted({check_run_id(i) for i in ids})
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
def cancel(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """Ask the driver to stop, and make sure it and everything it started does."""
    paths = home.run(check_run_id(req.get("run_id"))).require()
    grace = float(_int(req, "grace", 30, lo=0, hi=600))
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
def doctor(req: dict[str, Any], home: Home) -> dict[str, Any]:
    return site_report(home, check_site_spec(req.get("site"), "site"), probe=bool(req.get("probe")))


@_task
def prune(req: dict[str, Any], home: Home) -> dict[str, Any]:
    """Remove finished runs and cached bundles by the client's criteria (``login_node.prune``)."""
    return prune_home(home, Criteria.from_json(req.get("prune")))
