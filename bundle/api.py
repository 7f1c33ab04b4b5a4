"""The Python API; the CLI is a thin layer over it.

    import bundle
    run = bundle.submit("workflow.py", endpoint="local", args={"n": 20})
    run.wait()
    print(run.result())
    run.results("./results")
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from bundle import archive, delta, preflight, profiles, tempdirs
from bundle.contracts import (
    CancelRequest,
    LaunchRequest,
    LaunchSpec,
    LogsRequest,
    ProbeRequest,
    RunsRequest,
    StageRequest,
    StatusRequest,
)
from bundle.endpoints import site_choice
from bundle.errors import (
    BundleError,
    EndpointUnavailable,
    FunctionNotPermitted,
    GcbundleError,
    MalformedReply,
    NotLoggedIn,
    PayloadTooLarge,
    ProtocolMismatch,
    RemoteError,
    ResultsError,
    RunNotFound,
    RunStateError,
    TransportError,
    UsageError,
)
from bundle.limits import CHUNK_BYTES, INLINE_BUNDLE_BYTES, RUNS_PAGE, chunk_count
from bundle.manifest import sha256_file
from bundle.output import OnProgress
from bundle.pack import PackResult, pack
from bundle.protocol import supports_delta
from bundle.registry import TERMINAL, Registry, RunRecord
from bundle.render import check as check_site
from bundle.results import Fetched, fetch
from bundle.selection import Limits
from bundle.transport import Transport, get_transport

#: A registry row whose launch task was sent but not answered (yet).
LAUNCHING = "launching"




def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]




def prepare(workflow: str | Path, out_dir: Path, *, includes: tuple[str, ...] = (), entry: str | None = None,
            config: str | Path | None = None, site: str | None = None, mode: str | None = None,
            progress: OnProgress | None = None, args: dict[str, Any] | None = None, only_imports: bool = False,
            limits: Limits | None = None) -> PackResult:
    """Pack a workflow, or verify a ready-made bundle (``.tar.gz`` from ``gcbundle pack``) and
    use it as is; either way the laptop's preflight (``bundle.preflight``) runs first."""
    path = Path(workflow)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        flags = (
            ("--include", includes),
            ("--entry", entry),
            ("--config", config),
            ("--mode", mode not in (None, "auto") and mode),
            ("--only-imports", only_imports),
        )
        given = [flag for flag, value in flags if value]
        if given:
            raise UsageError(f"{', '.join(given)} cannot change a bundle made earlier ({path.name})",
                             "give them to `gcbundle pack` when making the bundle, or submit the workflow itself")
        manifest = archive.verify(path)
        warnings = preflight.check_archive(path, manifest, dict(args or {}))
        summary = (f"bundle {path.name} made by gcbundle pack: {len(manifest.files):,} files, "
                   f"digest {manifest.digest[:12]}",)
        return PackResult(path, manifest, sha256_file(path), path.stat().st_size, (), summary, tuple(warnings))
    return pack(
        path, out_dir / "bundle.tar.gz", includes=includes, entry=entry, config_module=config, site=site, mode=mode,
        progress=progress, only_imports=only_imports, limits=limits, run_args=None if args is None else dict(args),
    )


def upload(transport: Transport, packed: PackResult, progress: OnProgress | None = None) -> int:
    """Stage a bundle on the login node in chunks, skipping chunks already there; return chunks sent.

    When the login node holds an earlier bundle that shares most of this
    one's files, only the files it lacks are sent (``bundle.delta``).
    """
    bases = delta.candidates(packed.manifest)
    info = transport.send(ProbeRequest(digests=[packed.digest], archive_sha256=packed.archive_sha256,
                                       bases=[m.digest for m in bases] or None)).to_json()
    if packed.digest in info["cached"]:
        return 0
    if bases and supports_delta(info):
        d = delta.build(packed.path, packed.manifest, bases, info["bases"], packed.path.parent)
        if d is not None:
            with d:
                try:
                    return _send_chunks(transport, packed.digest, d.path, d.sha256, d.size, set(), progress,
                                        base=d.base)
                except BundleError:
                    pass  # e.g. the base left the login node's cache meanwhile: send the whole bundle
    return _send_chunks(transport, packed.digest, packed.path, packed.archive_sha256, packed.size,
                        set(info.get("staged_chunks", [])), progress)


def _send_chunks(transport: Transport, digest: str, path: Path, sha: str, size: int, have: set[int],
                 progress: OnProgress | None, base: str | None = None) -> int:
    count = chunk_count(size)
    sent = 0
    with open(path, "rb") as f:
        for index in range(count):
            if index in have and index != count - 1:
                continue  # the last chunk is always sent: it completes (or re-completes) the upload
            f.seek(index * CHUNK_BYTES)
            data = f.read(CHUNK_BYTES)
            chunk = StageRequest(digest=digest, archive_sha256=sha, size=size, index=index, data=data, base=base)
            transport.send(chunk)
            sent += 1
            if progress:
                progress("upload", min(size, (index + 1) * CHUNK_BYTES), size)
    return sent


def submit(workflow: str | Path, endpoint: str = "local", *, args: dict[str, Any] | None = None,
           includes: tuple[str, ...] = (), entry: str | None = None, site: str | None = None,
           params: dict[str, Any] | None = None, config: str | Path | None = None, mode: str | None = None,
           wait: bool = False, progress: OnProgress | None = None, registry: Registry | None = None,
           transport: Transport | None = None, resumed_from: str | None = None, inherit: bool = False,
           only_imports: bool = False, limits: Limits | None = None) -> Run:
    """Pack ``workflow`` (or take a bundle made by ``gcbundle pack``), check it, send it to
    ``endpoint`` and start it; return once the driver runs. ``Run.bundle`` says what travelled."""
    site, params = site_choice(endpoint, site, dict(params or {}), config, with_config=True)
    registry = registry or Registry()
    site_spec = None
    if site:
        profile = profiles.load(site)
        check_site(profile, params)  # required parameters, type names, keywords, values: before anything is sent
        site_spec = profile.to_spec(params)
    transport = transport or get_transport(endpoint)
    with tempdirs.workdir("submit") as tmp:
        packed = prepare(workflow, Path(tmp), includes=includes, entry=entry, config=config, site=site, mode=mode,
                         progress=progress, only_imports=only_imports, limits=limits,
                         # a resume without --arg runs with the earlier run's arguments: nothing to complete here
                         args=None if inherit and not args else dict(args or {}))
        run_id = _new_run_id()
        spec = LaunchSpec(args=dict(args or {}), site=site_spec, params=params, resumed_from=resumed_from,
                          inherit=inherit)
        inline = None if registry.is_cached(endpoint, packed.digest) else _ship(transport, packed, progress)
        now = time.time()
        rec = RunRecord(run_id=run_id, endpoint=endpoint, digest=packed.digest, workflow=str(workflow), site=site,
                        state=LAUNCHING, submitted=now, updated=now, resumed_from=resumed_from)

        def send() -> dict[str, Any]:
            reply = _send_launch(transport, run_id, packed.digest, spec, packed.archive_sha256, inline)
            if reply.get("missing_bundle"):
                # Not cached after all, or the cached copy failed verification and
                # the login node dropped it: send the bundle again, once.
                reply = _launch_resent(transport, registry, endpoint, run_id, packed, spec, progress, "submit again")
            return reply

        st = _launch(registry, rec, send)
    registry.mark_cached(endpoint, packed.digest)
    run = Run(run_id, endpoint, registry=registry, transport=transport)
    run.last_state = st
    run.bundle = {"digest": packed.digest, "files": len(packed.manifest.files), "bytes": packed.manifest.total_size,
                  "summary": list(packed.summary), "warnings": list(packed.warnings)}
    if wait:
        run.wait(progress=progress)
    return run


def resume(run_id: str, *, allow_changed: bool = False, workflow: str | Path | None = None,
           args: dict[str, Any] | None = None, wait: bool = False, progress: OnProgress | None = None,
           registry: Registry | None = None, transport: Transport | None = None) -> Run:
    """Start a new run from an earlier run's bundle that reuses its checkpoints.

    Apps declared with ``cache=True`` that completed in the earlier run (or in
    the runs it resumed) are not executed again. If the workflow on this
    machine changed since (its digest differs), the memoized results may no
    longer match the code, so resuming is refused unless ``allow_changed``.
    """
    registry = registry or Registry()
    rec = registry.get(run_id)
    transport = transport or get_transport(rec.endpoint)
    source = Path(workflow) if workflow else Path(rec.workflow)
    with tempdirs.workdir("submit") as tmp:
        # packed as submit packed it: a --site run says so in its manifest
        packed = prepare(source, Path(tmp), site=rec.site) if source.exists() else None
        if packed is not None and packed.digest != rec.digest:
            if not allow_changed:
                raise RunStateError(
                    f"{source} changed since run {rec.run_id} "
                    f"(bundle {packed.digest[:12]}, the run had {rec.digest[:12]})",
                    "checkpointed results may not match the new code: pass --allow-changed to resume anyway, "
                    "or submit a new run",
                )
            return submit(source, rec.endpoint, args=args, wait=wait, progress=progress, registry=registry,
                          transport=transport, resumed_from=rec.run_id, inherit=True)
        new_id = _new_run_id()
        spec = LaunchSpec(args=dict(args or {}), resumed_from=rec.run_id, inherit=True)
        now = time.time()
        new_rec = RunRecord(run_id=new_id, endpoint=rec.endpoint, digest=rec.digest, workflow=rec.workflow,
                            site=rec.site, state=LAUNCHING, submitted=now, updated=now, resumed_from=rec.run_id)

        def send() -> dict[str, Any]:
            reply = _send_launch(transport, new_id, rec.digest, spec)
            if reply.get("missing_bundle"):
                if packed is None:
                    raise BundleError(f"the login node no longer has the bundle of run {rec.run_id}, "
                                      f"and {source} is not here to send it again",
                                      "submit the workflow again; it will be uploaded once more")
                # Gone from the login node's cache, or dropped there as damaged: the
                # unchanged workflow here packs to the same bundle; send it once more.
                reply = _launch_resent(transport, registry, rec.endpoint, new_id, packed, spec, progress,
                                       "resume again")
            return reply

        st = _launch(registry, new_rec, send)
    run = Run(new_id, rec.endpoint, registry=registry, transport=transport)
    run.last_state = st
    if wait:
        run.wait(progress=progress)
    return run


def _send_launch(transport: Transport, run_id: str, digest: str, spec: LaunchSpec, archive_sha256: str | None = None,
                 bundle: bytes | None = None) -> dict[str, Any]:
    """One launch task (submit and resume alike); the reply checked (``LaunchReply``)."""
    return transport.send(LaunchRequest(run_id=run_id, digest=digest, spec=spec, archive_sha256=archive_sha256,
                                        bundle=bundle)).to_json()


def _ship(transport: Transport, packed: PackResult, progress: OnProgress | None) -> bytes | None:
    """The bundle for a launch the login node does not have it for: a small one travels
    inside the launch task (its bytes); a larger one is staged first (None). Staging
    first, rather than a launch that can only answer "missing", saves a task, and
    upload's probe finds a bundle the login node already has."""
    if packed.size <= INLINE_BUNDLE_BYTES:
        return packed.path.read_bytes()
    upload(transport, packed, progress)
    return None


def _launch_resent(transport: Transport, registry: Registry, endpoint: str, run_id: str, packed: PackResult,
                   spec: LaunchSpec, progress: OnProgress | None, retry: str) -> dict[str, Any]:
    """The launch again after the login node answered ``missing_bundle``, with the bundle sent once more.

    Submit and resume alike: the registry forgets that the endpoint has the
    bundle, a small one travels inside the launch task and a large one is
    staged first; a second "missing" is an error (``retry`` is its hint).
    """
    registry.forget_cached(endpoint, packed.digest)
    inline = _ship(transport, packed, progress)
    reply = _send_launch(transport, run_id, packed.digest, spec, packed.archive_sha256, inline)
    if reply.get("missing_bundle"):
        raise BundleError("the login node lost the bundle right after it was sent", retry)
    return reply


def _launch(registry: Registry, rec: RunRecord, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Record the run as ``launching``, send its launch, record what the login node said.

    The row exists before the task leaves, so a client killed while the task
    is under way leaves a row that ``status`` resolves against the login node.
    When the login node answers with an error (or the task never left), no
    run exists and the row goes; when the answer is lost on the way (a
    timeout, a dead connection), the row stays ``launching`` for ``status``.
    """
    registry.add(rec)
    try:
        reply = send()
    except (ProtocolMismatch, PayloadTooLarge, NotLoggedIn, EndpointUnavailable, FunctionNotPermitted):
        registry.remove(rec.run_id)  # refused before anything ran
        raise
    except TransportError as exc:
        earlier = f"{exc.hint}; " if exc.hint else ""
        exc.hint = f"{earlier}the launch may have reached the login node: `gcbundle status {rec.run_id}` tells"
        raise
    except GcbundleError:
        registry.remove(rec.run_id)  # the login node refused it: no run
        raise
    # Killed or interrupted mid-launch (KeyboardInterrupt, SIGKILL): the row stays for `status`.
    st = reply["state"]
    registry.update(rec.run_id, state=st.get("state") or "unknown")
    return st


def launch_grace() -> float:
    """How long after its launch a run the login node does not know may still be on its way (a pending task)."""
    try:
        return float(os.environ.get("GCBUNDLE_TASK_TIMEOUT", "600")) + 60.0
    except ValueError:
        return 660.0


def get_run(run_id: str, registry: Registry | None = None) -> Run:
    """A run of the registry by id or unique prefix."""
    registry = registry or Registry()
    rec = registry.get(run_id)
    return Run(rec.run_id, rec.endpoint, registry=registry)


@dataclass(frozen=True)
class Listing:
    """What ``gcbundle list`` shows: the runs, and what it learned or could not learn on the way."""

    runs: list[RunRecord]
    adopted: list[str] = field(default_factory=list)
    refreshed: int = 0
    notes: list[str] = field(default_factory=list)


def list_runs(limit: int = 50, registry: Registry | None = None, *, endpoint: str | None = None,
              refresh: bool = False) -> list[RunRecord]:
    """The registry's runs, newest first (see ``listing``: ``refresh`` asks the login nodes first)."""
    return listing(limit, registry, endpoint=endpoint, refresh=refresh).runs


def listing(limit: int = 50, registry: Registry | None = None, *, endpoint: str | None = None, refresh: bool = True,
            transports: dict[str, Transport] | None = None) -> Listing:
    """The registry's runs, newest first; unfinished ones refreshed from their login nodes first.

    Refreshing sends one ``runs`` task per endpoint that has unfinished runs
    (not one status task per run). With ``endpoint``, the runs that exist on
    that login node instead: every one is adopted into the registry (a run
    started from another machine, or whose row was lost, can then be
    followed and cancelled), which also rebuilds a registry from scratch.
    """
    registry = registry or Registry()
    transports = transports or {}

    def transport_for(ep: str) -> Transport:
        if ep not in transports:
            transports[ep] = get_transport(ep)
        return transports[ep]

    if endpoint is not None:
        found = _login_node_runs(transport_for(endpoint))
        adopted = []
        for entry in found:
            if entry["state"] == "gone":
                continue
            now = time.time()
            rec = RunRecord(
                run_id=entry["run_id"],
                endpoint=endpoint,
                digest=entry.get("digest") or "",
                workflow=f"(adopted) {entry.get('entry') or '?'}",
                site=entry.get("site"),
                state=entry["state"],
                submitted=entry.get("submitted") or entry.get("updated") or now,
                updated=now,
                resumed_from=entry.get("resumed_from"),
            )
            if registry.adopt(rec):
                adopted.append(rec.run_id)
            else:
                registry.update(rec.run_id, state=entry["state"])
        runs = [registry.get(e["run_id"]) for e in found if e["state"] != "gone"]
        runs.sort(key=lambda r: r.submitted, reverse=True)
        return Listing(runs[:limit] if limit else runs, adopted, len(found))
    notes: list[str] = []
    refreshed = 0
    if refresh:
        by_endpoint: dict[str, list[RunRecord]] = {}
        for rec in registry.unfinished():
            by_endpoint.setdefault(rec.endpoint, []).append(rec)
        for ep, recs in by_endpoint.items():
            try:
                t = transport_for(ep)
                if hasattr(t, "task_timeout"):  # an offline endpoint must not hold `list` for the full task timeout
                    t.task_timeout = min(t.task_timeout, _env_seconds("GCBUNDLE_LIST_TIMEOUT", 30.0))
                refreshed += _refresh(t, registry, recs)
            except GcbundleError as exc:
                notes.append(f"could not refresh {len(recs)} run{'s' if len(recs) != 1 else ''} on {ep}: {exc.message}")
    return Listing(registry.list(limit), [], refreshed, notes)


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def _login_node_runs(transport: Transport, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Every run the login node holds (or those of ``run_ids``), page by page."""
    if run_ids is not None:
        out = []
        for i in range(0, len(run_ids), RUNS_PAGE):
            out += transport.send(RunsRequest(run_ids=run_ids[i:i + RUNS_PAGE])).to_json()["runs"]
        return out
    out, after = [], None
    while True:
        reply = transport.send(RunsRequest(after=after)).to_json()
        out += reply["runs"]
        if reply["next"] is None:
            return out
        if after is not None and reply["next"] <= after:
            raise RemoteError("the login node's run listing does not advance",
                              "check the login node with `gcbundle doctor`")
        after = reply["next"]


def _refresh(transport: Transport, registry: Registry, recs: list[RunRecord]) -> int:
    """Update the states of ``recs`` (all on one endpoint) from one ``runs`` task."""
    found = {e["run_id"]: e for e in _login_node_runs(transport, [r.run_id for r in recs])}
    for rec in recs:
        entry = found.get(rec.run_id)
        if entry is not None and entry["state"] != "gone":
            registry.update(rec.run_id, state=entry["state"])
        elif rec.state == LAUNCHING:
            if time.time() - rec.submitted >= launch_grace():
                registry.update(rec.run_id, state="unlaunched")
        else:
            registry.update(rec.run_id, state="gone")
    return len(recs)


class Run:
    """A run on an endpoint: ask its state, follow its logs, fetch its results, cancel it."""

    def __init__(self, run_id: str, endpoint: str, *, registry: Registry | None = None,
                 transport: Transport | None = None) -> None:
        self.id = run_id
        self.endpoint = endpoint
        self.registry = registry or Registry()
        self._transport = transport
        self.last_state: dict[str, Any] = {}
        #: For a run this process submitted: what travelled, and the preflight's warnings.
        self.bundle: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Run({self.id!r}, endpoint={self.endpoint!r}, state={self.last_state.get('state')!r})"

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = get_transport(self.endpoint)
        return self._transport

    @property
    def record(self) -> RunRecord:
        return self.registry.get(self.id)

    def status(self, wait: float = 0.0) -> dict[str, Any]:
        """The run's state; with ``wait``, the login node first waits up to that many seconds for it to change."""
        try:
            st = self.transport.send(StatusRequest(run_id=self.id, wait=wait if wait > 0 else None)).to_json()
        except RunNotFound:
            st = self._not_on_login_node()
        self._remember(st)
        return st

    def _not_on_login_node(self) -> dict[str, Any]:
        """The login node has no such run: still on its way, never launched, or deleted there."""
        rec = self.registry.get(self.id)
        if rec.state in (LAUNCHING, "unlaunched"):
            age = time.time() - rec.submitted
            if rec.state == LAUNCHING and age < launch_grace():
                return {"state": LAUNCHING,
                        "detail": f"the launch was sent {age:.0f} s ago and has not reached the login node yet",
                        "hint": "a pending task waits for the endpoint's worker; ask again in a while"}
            return {"state": "unlaunched",
                    "detail": f"the login node never received the launch of run {self.id} "
                              "(the client stopped before it was sent, or the task was lost)",
                    "hint": "nothing runs; submit the workflow again"}
        pruned = json.loads(rec.extra or "{}").get("pruned")
        if pruned:
            kept = self.local_results()
            raise RunNotFound(f"run {self.id} was pruned from the login node of {self.endpoint} on "
                              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(pruned))} (`gcbundle prune`)",
                              f"its results are in {kept}" if kept else "its results were not kept on this machine")
        self.registry.update(self.id, state="gone")
        raise RunNotFound(f"run {self.id} is gone: the login node of {self.endpoint} no longer has its directory",
                          "nothing of it is left there; "
                          f"`gcbundle list --endpoint {self.endpoint}` shows the runs it has")

    def _remember(self, st: dict[str, Any]) -> None:
        self.last_state = st
        if st.get("state"):
            self.registry.update(self.id, state=st["state"])

    def wait(self, timeout: float | None = None, poll: float | None = None,
             progress: OnProgress | None = None) -> dict[str, Any]:
        """Poll until the run ends; the interval grows from 0.5 s to ``poll`` (default 10 s).

        Where the transport allows it (``Transport.status_wait``), each status
        task waits on the login node for the state to change, up to the
        interval, so the end of a run is seen at once and no time is spent
        sleeping here; a login node that does not wait gets the sleeps.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval, cap = 0.5, poll or float(os.environ.get("GCBUNDLE_POLL_SECONDS", "10"))
        long_poll = float(getattr(self.transport, "status_wait", 0.0))
        while True:
            hold = min(long_poll, cap, max(0.0, deadline - time.monotonic()) if deadline is not None else cap)
            st = self.status(wait=hold)
            if progress:
                tasks = st.get("tasks") or {}
                done = int(tasks.get("exec_done", 0) + tasks.get("memo_done", 0))
                progress(f"run {st.get('state')}", done, int(tasks.get("total", 0)))
            if st.get("state") in TERMINAL:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise RunStateError(f"run {self.id} is still {st.get('state')} after {timeout:g} s",
                                    "wait longer, or look at `gcbundle logs`")
            if hold > 0 and "waited" in st:
                continue  # the login node did the waiting
            time.sleep(interval)
            interval = min(cap, interval * 1.5)

    def logs(self, name: str = "driver", *, follow: bool = False, tail: bool = False,
             poll: float = 1.0) -> Iterator[str]:
        """The log's text in pieces; with ``follow``, until the run ends."""
        offset = 0
        first = True
        while True:
            request = LogsRequest(run_id=self.id, name=name, offset=offset, tail=tail and first)
            reply = self.transport.send(request).to_json()
            first = False
            if reply["data"]:
                yield reply["data"].decode("utf-8", "replace")
            offset = reply["next_offset"]
            if reply["state"] != self.last_state.get("state"):
                self._remember({"state": reply["state"]})
            more = offset < reply["size"]
            if more and not reply["data"]:
                raise MalformedReply(f"the login node sent a logs reply with no bytes "
                                     f"at offset {offset} of {reply['size']}",
                                     "the log may have been replaced while it was read: run `gcbundle logs` again")
            if more:
                continue
            if not follow or reply["state"] in TERMINAL:
                return
            time.sleep(poll)

    def results(self, dest: str | Path = "results", progress: OnProgress | None = None) -> Fetched:
        """Fetch the verified results package into ``dest/<run_id>`` (resumable)."""
        fetched = fetch(self.transport, self.id, Path(dest), progress)
        self._remember(fetched.state)
        self.registry.update(self.id, results_path=str(fetched.path.resolve()), results_sha=fetched.manifest_sha256)
        return fetched

    def local_results(self) -> Path | None:
        """Where the results already are on this machine, if complete."""
        rec = self.record
        if rec.results_path and (Path(rec.results_path) / ".gcbundle-results.json").is_file():
            return Path(rec.results_path)
        return None

    def result(self, dest: str | Path | None = None) -> Any:
        """main()'s return value (fetching the results first if needed), unpickled from ``result.pkl``.

        What this trusts: ``result.pkl`` is unpickled (cloudpickle), which can
        run code, exactly as the Globus Compute SDK unpickles every task
        result it receives; it holds what your own workflow returned on the
        login node you chose. The CLI never unpickles: it shows ``result.json``.
        """
        path = self.local_results() if dest is None else None
        if path is None or self.record.state not in TERMINAL:
            path = self.results(dest or default_results_dir()).path
        state = read_json_file(path / "state.json", "the results' state.json")
        if not isinstance(state, dict) or not isinstance(state.get("state"), str):
            raise ResultsError(f"the results' state.json of run {self.id} holds no state",
                               "run `gcbundle results` again; check the login node with `gcbundle doctor`")
        if state.get("state") != "succeeded":
            err = state.get("error")
            err = err.get("message", "") if isinstance(err, dict) else ""
            raise RunStateError(f"run {self.id} {state.get('state')}" + (f": {err}" if err else ""),
                                "see `gcbundle logs` and the results' logs/")
        if (path / "result.pkl").is_file():
            import pickle  # stdlib, here only: the CLI never unpickles, so its start-up does not import it

            try:
                return pickle.loads((path / "result.pkl").read_bytes())  # noqa: S301 - see the docstring
            except Exception as exc:  # noqa: BLE001 - whatever unpickling raises (a missing class, a cut file)
                raise ResultsError(f"result.pkl of run {self.id} cannot be unpickled here: "
                                   f"{type(exc).__name__}: {str(exc)[:120]}",
                                   "install the packages main()'s return value needs, or read result.json") from None
        return None

    def cancel(self, grace: int = 30) -> dict[str, Any]:
        try:
            reply = self.transport.send(CancelRequest(run_id=self.id, grace=grace)).to_json()
        except RunNotFound:
            st = self._not_on_login_node()  # gone: raises; else still on its way, or never launched
            self._remember(st)
            if st["state"] == LAUNCHING:
                raise RunStateError(f"the launch of run {self.id} has not reached the login node yet: {st['detail']}",
                                    f"cancel it once `gcbundle status {self.id}` shows it there") from None
            return {"state": st, "already": True}
        self._remember(reply["state"])
        return reply


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file of a results package (it came from the login node): a ResultsError when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{what} is missing from {path.parent}", "run `gcbundle results` again") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ResultsError(f"{what} is not JSON: {str(exc)[:120]}",
                           "the login node sent a damaged file; check it with `gcbundle doctor`") from None


def default_results_dir() -> Path:
    """Where results land when no directory is given: ``results/`` in the user's data dir (XDG)."""
    return Path(platformdirs.user_data_dir("gcbundle")) / "results"
