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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from bundle import archive, delta, preflight, profiles
from bundle.endpoints import submit_defaults as endpoint_defaults
from bundle.errors import BundleError, RunStateError, UsageError
from bundle.limits import CHUNK_BYTES, INLINE_BUNDLE_BYTES
from bundle.manifest import sha256_file
from bundle.pack import PackResult, pack
from bundle.selection import Limits
from bundle.protocol import supports_delta
from bundle.registry import Registry, RunRecord
from bundle.results import Fetched, fetch
from bundle.transport import Transport, get_transport

Progress = Callable[[str, int, int], None]
TERMINAL = ("succeeded", "failed", "cancelled", "lost")


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]




def prepare(workflow: str | Path, out_dir: Path, *, includes: tuple[str, ...] = (), entry: str | None = None,
            config: str | Path | None = None, site: str | None = None, mode: str | None = None,
            progress: Progress | None = None, args: dict[str, Any] | None = None, only_imports: bool = False,
            limits: Limits | None = None) -> PackResult:
    """Pack a workflow, or verify a ready-made bundle (``.tar.gz`` from ``gcbundle pack``) and
    use it as is; either way the laptop's preflight (``bundle.preflight``) runs first."""
    path = Path(workflow)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        given = [flag for flag, value in (("--include", includes), ("--entry", entry), ("--config", config),
                                          ("--mode", mode not in (None, "auto") and mode), ("--only-imports", only_imports)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} cannot change a bundle made earlier ({path.name})",
                             "give them to `gcbundle pack` when making the bundle, or submit the workflow itself")
        manifest = archive.verify(path)
        warnings = preflight.check_archive(path, manifest, dict(args or {}))
        summary = (f"bundle {path.name} made by gcbundle pack: {len(manifest.files):,} files, digest {manifest.digest[:12]}",)
        return PackResult(path, manifest, sha256_file(path), path.stat().st_size, (), summary, tuple(warnings))
    return pack(path, out_dir / "bundle.tar.gz", includes=includes, entry=entry, config_module=config, site=site, mode=mode,
                progress=progress, only_imports=only_imports, limits=limits, run_args=None if args is None else dict(args))


def upload(transport: Transport, packed: PackResult, progress: Progress | None = None) -> int:
    """Stage a bundle on the login node in chunks, skipping chunks already there; return chunks sent.

    When the login node holds an earlier bundle that shares most of this
    one's files, only the files it lacks are sent (``bundle.delta``).
    """
    bases = delta.candidates(packed.manifest)
    info = transport.call("probe", digests=[packed.digest], archive_sha256=packed.archive_sha256,
                          **({"bases": [m.digest for m in bases]} if bases else {}))
    if packed.digest in info["cached"]:
        return 0
    if bases and supports_delta(info):
        d = delta.build(packed.path, packed.manifest, bases, info["bases"], packed.path.parent)
        if d is not None:
            with d:
                try:
                    return _send_chunks(transport, packed.digest, d.path, d.sha256, d.size, set(), progress, base=d.base)
                except BundleError:
                    pass  # e.g. the base left the login node's cache meanwhile: send the whole bundle
    return _send_chunks(transport, packed.digest, packed.path, packed.archive_sha256, packed.size,
                        set(info.get("staged_chunks", [])), progress)


def _send_chunks(transport: Transport, digest: str, path: Path, sha: str, size: int, have: set[int],
                 progress: Progress | None, base: str | None = None) -> int:
    count = max(1, -(-size // CHUNK_BYTES))
    sent = 0
    with open(path, "rb") as f:
        for index in range(count):
            if index in have and index != count - 1:
                continue  # the last chunk is always sent: it completes (or re-completes) the upload
            f.seek(index * CHUNK_BYTES)
            data = f.read(CHUNK_BYTES)
            transport.call("stage", digest=digest, archive_sha256=sha, size=size, index=index, data=data,
                           **({"base": base} if base else {}))
            sent += 1
            if progress:
                progress("upload", min(size, (index + 1) * CHUNK_BYTES), size)
    return sent


def submit(workflow: str | Path, endpoint: str = "local", *, args: dict[str, Any] | None = None,
           includes: tuple[str, ...] = (), entry: str | None = None, site: str | None = None,
           params: dict[str, Any] | None = None, config: str | Path | None = None, mode: str | None = None, wait: bool = False,
           progress: Progress | None = None, registry: Registry | None = None,
           transport: Transport | None = None, resumed_from: str | None = None, inherit: bool = False,
           only_imports: bool = False, limits: Limits | None = None) -> Run:
    """Pack ``workflow`` (or take a bundle made by ``gcbundle pack``), check it, send it to
    ``endpoint`` and start it; return once the driver runs. ``Run.bundle`` says what travelled."""
    site, params = endpoint_defaults(endpoint, site, dict(params or {}), config)  # an alias's site and --set defaults
    registry = registry or Registry()
    site_spec = None
    if site:
        profile = profiles.load(site)
        from bundle.render import check as check_site

        check_site(profile, params)  # required parameters, type names, keywords, values: before anything is sent
        site_spec = profile.to_spec(params)
    elif params and not config:
        raise UsageError("--set needs --site or --config", "name the site profile the parameters are for")
    transport = transport or get_transport(endpoint)
    with tempfile.TemporaryDirectory(prefix="gcbundle-") as tmp:
        packed = prepare(workflow, Path(tmp), includes=includes, entry=entry, config=config, site=site, mode=mode,
                         progress=progress, args=dict(args or {}), only_imports=only_imports, limits=limits)
        run_id = _new_run_id()
        spec = {"args": dict(args or {}), "site": site_spec, "params": params, "resumed_from": resumed_from, "inherit": inherit}
        inline = None
        known = registry.is_cached(endpoint, packed.digest)
        if packed.size <= INLINE_BUNDLE_BYTES and not known:
            inline = packed.path.read_bytes()
        elif not known:
            # Too big to travel inside the launch task: stage it first (upload's
            # probe finds a bundle the login node already has) rather than send
            # a launch that can only answer "missing" (one task less).
            upload(transport, packed, progress)
        reply = transport.call("launch", run_id=run_id, digest=packed.digest, archive_sha256=packed.archive_sha256, bundle=inline, spec=spec)
        if reply.get("missing_bundle"):
            registry.forget_cached(endpoint, packed.digest)
            upload(transport, packed, progress)
            reply = transport.call("launch", run_id=run_id, digest=packed.digest, archive_sha256=packed.archive_sha256, bundle=None, spec=spec)
            if reply.get("missing_bundle"):
                raise BundleError("the login node lost the bundle right after it was uploaded", "submit again")
    registry.mark_cached(endpoint, packed.digest)
    st = reply["state"]
    now = time.time()
    registry.add(RunRecord(
        run_id=run_id, endpoint=endpoint, digest=packed.digest, workflow=str(workflow), site=site,
        state=st.get("state", "staged"), submitted=now, updated=now, resumed_from=resumed_from,
    ))
    run = Run(run_id, endpoint, registry=registry, transport=transport)
    run.last_state = st
    run.bundle = {"digest": packed.digest, "files": len(packed.manifest.files), "bytes": packed.manifest.total_size,
                  "summary": list(packed.summary), "warnings": list(packed.warnings)}
    if wait:
        run.wait(progress=progress)
    return run


def resume(run_id: str, *, allow_changed: bool = False, workflow: str | Path | None = None,
           args: dict[str, Any] | None = None, wait: bool = False, progress: Progress | None = None,
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
    changed_bundle = None
    if source.exists():
        with tempfile.TemporaryDirectory(prefix="gcbundle-") as tmp:
            packed = prepare(source, Path(tmp))
            if packed.digest != rec.digest:
                if not allow_changed:
                    raise RunStateError(
                        f"{source} changed since run {rec.run_id} (bundle {packed.digest[:12]}, the run had {rec.digest[:12]})",
                        "checkpointed results may not match the new code: pass --allow-changed to resume anyway, or submit a new run",
                    )
                changed_bundle = source
    if changed_bundle is not None:
        return submit(changed_bundle, rec.endpoint, args=args, wait=wait, progress=progress, registry=registry,
                      transport=transport, resumed_from=rec.run_id, inherit=True)
    new_id = _new_run_id()
    spec = {"args": dict(args or {}), "site": None, "params": {}, "resumed_from": rec.run_id, "inherit": True}
    reply = transport.call("launch", run_id=new_id, digest=rec.digest, archive_sha256=None, bundle=None, spec=spec)
    if reply.get("missing_bundle"):
        raise BundleError(f"the login node no longer has the bundle of run {rec.run_id}", "submit the workflow again; it will be uploaded once more")
    now = time.time()
    registry.add(RunRecord(
        run_id=new_id, endpoint=rec.endpoint, digest=rec.digest, workflow=rec.workflow, site=rec.site,
        state=reply["state"].get("state", "staged"), submitted=now, updated=now, resumed_from=rec.run_id,
    ))
    run = Run(new_id, rec.endpoint, registry=registry, transport=transport)
    run.last_state = reply["state"]
    if wait:
        run.wait(progress=progress)
    return run


def get_run(run_id: str, registry: Registry | None = None) -> Run:
    """A run of the registry by id or unique prefix."""
    registry = registry or Registry()
    rec = registry.get(run_id)
    return Run(rec.run_id, rec.endpoint, registry=registry)


def list_runs(limit: int = 50, registry: Registry | None = None) -> list[RunRecord]:
    return (registry or Registry()).list(limit)


class Run:
    """A run on an endpoint: ask its state, follow its logs, fetch its results, cancel it."""

    def __init__(self, run_id: str, endpoint: str, *, registry: Registry | None = None, transport: Transport | None = None) -> None:
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
        st = self.transport.call("status", run_id=self.id, **({"wait": wait} if wait > 0 else {}))
        self._remember(st)
        return st

    def _remember(self, st: dict[str, Any]) -> None:
        self.last_state = st
        if st.get("state"):
            self.registry.update(self.id, state=st["state"])

    def wait(self, timeout: float | None = None, poll: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
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
                progress(f"run {st.get('state')}", int(tasks.get("exec_done", 0) + tasks.get("memo_done", 0)), int(tasks.get("total", 0)))
            if st.get("state") in TERMINAL:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise RunStateError(f"run {self.id} is still {st.get('state')} after {timeout:g} s", "wait longer, or look at `gcbundle logs`")
            if hold > 0 and "waited" in st:
                continue  # the login node did the waiting
            time.sleep(interval)
            interval = min(cap, interval * 1.5)

    def logs(self, name: str = "driver", *, follow: bool = False, tail: bool = False, poll: float = 1.0) -> Iterator[str]:
        """The log's text in pieces; with ``follow``, until the run ends."""
        offset = 0
        first = True
        while True:
            reply = self.transport.call("logs", run_id=self.id, name=name, offset=offset, tail=tail and first)
            first = False
            if reply["data"]:
                yield reply["data"].decode("utf-8", "replace")
            offset = reply["next_offset"]
            if reply["state"] != self.last_state.get("state"):
                self._remember({"state": reply["state"]})
            more = offset < reply["size"]
            if more:
                continue
            if not follow or reply["state"] in TERMINAL:
                return
            time.sleep(poll)

    def results(self, dest: str | Path = "results", progress: Progress | None = None) -> Fetched:
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
        """main()'s return value (fetching the results first if needed)."""
        path = self.local_results() if dest is None else None
        if path is None or self.record.state not in TERMINAL:
            path = self.results(dest or _default_results_dir()).path
        state = json.loads((path / "state.json").read_text())
        if state.get("state") != "succeeded":
            err = (state.get("error") or {}).get("message", "")
            raise RunStateError(f"run {self.id} {state.get('state')}" + (f": {err}" if err else ""), "see `gcbundle logs` and the results' logs/")
        if (path / "result.pkl").is_file():
            import pickle

            return pickle.loads((path / "result.pkl").read_bytes())  # noqa: S301 - the user's own run
        return None

    def cancel(self, grace: int = 30) -> dict[str, Any]:
        reply = self.transport.call("cancel", run_id=self.id, grace=grace)
        self._remember(reply["state"])
        return reply


def _default_results_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("gcbundle")) / "results"
