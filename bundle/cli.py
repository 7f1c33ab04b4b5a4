"""The ``gcbundle`` command: each command parses, calls one library function, prints."""
from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bundle import __version__, api, archive, endpoints, profiles, tempdirs
from bundle import doctor as doc
from bundle import prune as pruning
from bundle import render as site_render
from bundle.errors import ChecksFailed, GcbundleError, RunFailed, UsageError
from bundle.output import ProgressMeter, envelope, local_time, printable, size
from bundle.pack import pack as pack_workflow
from bundle.preflight import parse_args
from bundle.selection import Limits, config_source


class CommandError(click.ClickException):
    """A GcbundleError on its way out: one line, and its exit code."""

    def __init__(self, exc: GcbundleError) -> None:
        super().__init__(str(exc))
        self.exit_code = exc.exit_code

    def show(self, file: Any = None) -> None:
        # One line, whatever the message holds: text from the login node may carry escape sequences.
        click.echo(f"gcbundle: error: {printable(self.format_message())}", err=True)


def command(
    name: str | None = None, group: click.Group | None = None, **kwargs: Any
) -> Callable[[Callable[..., Any]], click.Command]:
    """A subcommand (of ``group``, default the top level) with ``--json`` and
    ``--debug``; its function returns ``(data, human_text)`` and raises
    GcbundleError on failure."""

    def decorate(fn: Callable[..., Any]) -> click.Command:
        cmd_name = name or fn.__name__.replace("_", "-")
        full_name = cmd_name if group is None else f"{group.name} {cmd_name}"

        @click.option("--json", "as_json", is_flag=True, help="Print one JSON envelope on stdout.")
        @click.option("--debug", is_flag=True, help="Show tracebacks.")
        @functools.wraps(fn)
        def wrapper(as_json: bool, debug: bool, **kw: Any) -> None:
            ctx = click.get_current_context()
            ctx.meta["gcbundle.json"] = as_json
            progress = ProgressMeter(enabled=None)
            ctx.meta["gcbundle.progress"] = progress
            try:
                data, human = fn(progress=progress, **kw)
            except GcbundleError as exc:
                progress.close()
                if debug:
                    traceback.print_exc()
                if as_json:
                    click.echo(envelope(full_name, exc.data, [exc.to_json()]))
                    if not debug:
                        sys.stderr.write(f"gcbundle: error: {printable(exc)}\n")
                    sys.exit(exc.exit_code)
                if exc.human:
                    click.echo(exc.human)  # e.g. doctor's table, above the one-line error
                raise CommandError(exc) from None
            except KeyboardInterrupt:
                progress.close()
                _interrupted(full_name, as_json, ctx.meta.get("gcbundle.run"))
            except click.ClickException:
                progress.close()
                raise
            except Exception as exc:  # a bug: still one line (and the envelope); --debug shows the traceback
                progress.close()
                if debug:
                    raise
                err = {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}",
                       "hint": "this is a gcbundle bug: rerun with --debug for the traceback, and report it"}
                if as_json:
                    click.echo(envelope(full_name, None, [err]))
                click.echo(f"gcbundle: error: {printable(err['message'])}; {err['hint']}", err=True)
                sys.exit(1)
            progress.close()
            if as_json:
                click.echo(envelope(full_name, data))
            elif human:
                click.echo(human)

        return (main if group is None else group).command(cmd_name, **kwargs)(wrapper)

    return decorate


def _interrupted(command: str, as_json: bool, run: Any) -> None:
    """Ctrl-C: exit 130, and say where a run that was already started can be found."""
    data = None
    line = "gcbundle: interrupted"
    if run is not None:
        data = {"run_id": run.id, "endpoint": run.endpoint}
        line += (f"; run {run.id} keeps going on endpoint {run.endpoint}: `gcbundle status {run.id}` shows it, "
                 f"`gcbundle cancel {run.id}` stops it")
    if as_json:
        err = {"type": "Interrupted", "message": line.removeprefix("gcbundle: "), "hint": None}
        click.echo(envelope(command, data, [err]))
    click.echo(line, err=True)
    sys.exit(130)


def _usage_error(exc: click.ClickException, argv: list[str]) -> None:
    """Click's own errors (unknown option, missing argument, bad choice) as one line,
    and under ``--json`` as the envelope on stdout too, like every other error."""
    words: list[str] = []
    group: Any = main  # the command named in argv (click leaves exc.ctx unset for some errors)
    for arg in argv:
        if not isinstance(group, click.Group) or arg not in group.commands:
            break
        words.append(arg)
        group = group.commands[arg]
    command = " ".join(words)
    path = f"gcbundle {command}".strip()
    message = exc.format_message().rstrip(".")
    hint = f"see `{path} --help`"
    if "--json" in (argv[: argv.index("--")] if "--" in argv else argv):
        click.echo(envelope(command, None, [{"type": "UsageError", "message": message, "hint": hint}]))
    click.echo(f"gcbundle: error: {printable(message)}; {hint}", err=True)
    sys.exit(exc.exit_code)


class Gcbundle(click.Group):
    """The top-level group: click's usage errors go out like gcbundle's own."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # bare `gcbundle`: the help text
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            _usage_error(exc, argv)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("gcbundle: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=Gcbundle, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gcbundle")
def main() -> None:
    """gcbundle: run a whole Parsl workflow on an HPC login node through Globus Compute."""
    tempdirs.sweep()  # what a killed client left behind


_workflow_options = [
    click.option("--include", "includes", multiple=True, help="Extra file or directory to bundle (repeatable)."),
    click.option("--entry", help="Entry file inside a workflow directory (default workflow.py or main.py)."),
    click.option("--arg", "args", multiple=True,
                 help="Argument for main(), name=value; JSON values are parsed (repeatable)."),
    click.option("--config", type=click.Path(exists=True, dir_okay=False),
                 help="Python module with make_config(**params) -> Config."),
    click.option("--mode", type=click.Choice(["auto", "function", "script"]), default="auto", show_default=True,
                 help="function: call main(**args); script: run as __main__; auto: function if main() exists."),
    click.option("--only-imports", is_flag=True,
                 help="Ship only the workflow file, its local imports and the named paths, not its folder."),
    click.option("--max-size",
                 help="Size guard: most bytes the folder may bring, e.g. 1G "
                      "(default 256M, or $GCBUNDLE_MAX_FOLDER_BYTES)."),
    click.option("--max-files", type=int,
                 help="Size guard: most files the folder may bring (default 5000, or $GCBUNDLE_MAX_FOLDER_FILES)."),
]


def _bundle_notes(summary: Any, warnings: Any) -> None:
    """What travelled and the preflight's warnings, on stderr (data keeps them for --json)."""
    for line in summary:
        click.echo(line, err=True)
    for line in warnings:
        click.echo(f"warning: {line}", err=True)


def workflow_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_workflow_options):
        fn = option(fn)
    return fn


@command()
@click.argument("workflow", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default="bundle.tar.gz", show_default=True, help="Archive to write.")
@workflow_options
def pack(workflow: str, output: str, includes: tuple[str, ...], entry: str | None, args: tuple[str, ...],
         config: str | None, mode: str, only_imports: bool, max_size: str | None, max_files: int | None,
         progress: ProgressMeter) -> tuple[Any, str]:
    """Pack a workflow (its folder, or with --only-imports its imports) into a deterministic bundle archive."""
    res = pack_workflow(
        workflow, output, includes=includes, entry=entry, args=parse_args(args), config_module=config, mode=mode,
        progress=progress, only_imports=only_imports, limits=Limits.resolve(max_size, max_files),
    )
    progress.close()
    _bundle_notes(res.summary, res.warnings)
    lines = [
        f"{res.path}: {len(res.manifest.files)} files, {size(res.manifest.total_size)} -> {size(res.size)}",
        f"digest {res.digest}",
    ]
    return res.to_json(), "\n".join(lines)


def _config_source(bundle_file: str, manifest: Any) -> str:
    """Where a run of this bundle takes its Parsl Config from, in words."""
    kind = manifest.config.get("kind")
    if kind == "module":
        return f"make_config() of {manifest.config['path']}"
    if kind == "site":
        return "the site profile given to submit (--site)"
    if manifest.mode == "script":
        return f"whatever {manifest.entry} passes to parsl.load()"
    source = archive.read_text(bundle_file, manifest.entry)
    found = config_source(source, manifest.entry) if source is not None else None
    if found == "make_config":
        return f"make_config() of {manifest.entry}, unless submit gives --site or --config"
    if found == "config":
        return f"`config` of {manifest.entry}, unless submit gives --site or --config"
    return (f"the `local` profile ({manifest.entry} defines no make_config() or config), "
            "unless submit gives --site or --config")


@command()
@click.argument("bundle_file", type=click.Path())
def inspect(bundle_file: str, progress: ProgressMeter) -> tuple[Any, str]:
    """Show a bundle's manifest after checking every member."""
    manifest = archive.verify(bundle_file)
    data = manifest.to_json()
    data["config_source"] = _config_source(bundle_file, manifest)
    lines = [
        f"digest  {manifest.digest}",
        f"entry   {manifest.entry} ({manifest.mode} mode)",
        f"config  {data['config_source']}",
        f"args    {json.dumps(manifest.args)}",
        f"created {manifest.created}",
        "client  " + ", ".join(f"{k} {v}" for k, v in sorted(manifest.client.items())),
        f"files   {len(manifest.files)} ({size(manifest.total_size)})",
    ]
    lines += [f"  {oct(f.mode)[2:]} {f.size:>10} {f.sha256[:12]} {f.path}" for f in manifest.files]
    return data, "\n".join(lines)


def _track(run: Any) -> None:
    """Remember the run this command works on: Ctrl-C then says how to reach it."""
    click.get_current_context().meta["gcbundle.run"] = run


def _wait_and_fetch(run: Any, data: dict[str, Any], progress: ProgressMeter) -> tuple[Any, str]:
    """``--wait`` of submit and resume alike: wait for the run's end; on success
    fetch its results and print main()'s result, else fail with exit code 11."""
    st = run.wait(progress=progress)
    progress.close()
    data["state"] = st
    human = [f"run {run.id} {st.get('state')}"]
    if st.get("state") == "succeeded":
        fetched = run.results(api.default_results_dir(), progress=progress)
        data["results"] = fetched.to_json()
        result_json = fetched.path / "result.json"
        if result_json.is_file():
            # never result.pkl: the CLI does not unpickle
            data["result"] = api.read_json_file(result_json, "result.json")
            human.append(f"result: {printable(json.dumps(data['result']))}")
        human.append(f"results in {fetched.path}")
        return data, "\n".join(human)
    err = st.get("error")
    err = (err.get("message") if isinstance(err, dict) else None) or st.get("detail") or ""
    raise RunFailed(f"run {run.id} {st.get('state')}" + (f": {err}" if err else ""),
                    f"`gcbundle logs {run.id}` and `gcbundle results {run.id}` show what happened", data=data)


_WAIT_HELP = ("Wait for the run to end; on success fetch its results into gcbundle's results dir "
              "(on Linux $XDG_DATA_HOME/gcbundle/results/<run_id>/, by default ~/.local/share/...; "
              "`gcbundle results RUN -o DIR` puts them elsewhere) and print main()'s result; "
              "a run that does not succeed exits 11.")


@command(epilog="Without --wait it prints the run id as soon as the driver runs on the login node.")
@click.argument("workflow", type=click.Path())
@click.option("-e", "--endpoint", default="local", show_default=True, help="`local`, an endpoint UUID, or an alias.")
@click.option("--site", help="Site profile: a built-in name (`gcbundle sites`) or a YAML file.")
@click.option("--set", "sets", multiple=True, help="Site profile parameter, name=value (repeatable).")
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
@workflow_options
def submit(workflow: str, endpoint: str, site: str | None, sets: tuple[str, ...], wait: bool, includes: tuple[str, ...],
           entry: str | None, args: tuple[str, ...], config: str | None, mode: str, only_imports: bool,
           max_size: str | None, max_files: int | None, progress: ProgressMeter) -> tuple[Any, str]:
    """Pack WORKFLOW (its folder; or take a bundle made by `gcbundle pack`), check it and start it on an endpoint."""
    run = api.submit(
        workflow, endpoint, args=parse_args(args), includes=includes, entry=entry, site=site,
        params=profiles.parse_sets(sets), config=config, mode=mode, progress=progress,
        only_imports=only_imports, limits=Limits.resolve(max_size, max_files),
    )
    _track(run)
    progress.close()
    _bundle_notes(run.bundle.get("summary", ()), run.bundle.get("warnings", ()))
    progress.note(f"submitted run {run.id} to {endpoint}")
    data: dict[str, Any] = {"run_id": run.id, "endpoint": endpoint, "state": run.last_state, "bundle": run.bundle}
    if not wait:
        return data, run.id
    return _wait_and_fetch(run, data, progress)


@command("list")
@click.option("-n", "--limit", default=50, show_default=True, help="How many runs, newest first (0: all).")
@click.option("-e", "--endpoint",
              help="List the runs that exist on this endpoint's login node, and adopt them into the registry.")
@click.option("--offline", is_flag=True, help="Do not ask the login nodes; show the states last recorded.")
def list_(limit: int, endpoint: str | None, offline: bool, progress: ProgressMeter) -> tuple[Any, str]:
    """List runs: this client's registry, unfinished ones refreshed (one task per endpoint).

    With --endpoint, the runs that exist on that login node, wherever they were
    submitted from; they join the registry, so status, results and cancel work
    on them (this also rebuilds a lost or damaged registry).
    """
    listing = api.listing(limit, endpoint=endpoint, refresh=not offline)
    for note in listing.notes:
        click.echo(f"gcbundle: note: {printable(note)}", err=True)
    if listing.adopted:
        plural = "s" if len(listing.adopted) != 1 else ""
        click.echo(f"adopted {len(listing.adopted)} run{plural} into the registry: {', '.join(listing.adopted)}",
                   err=True)
    runs = listing.runs
    lines = [f"{'RUN':<12}  {'STATE':<10}  {'ENDPOINT':<12}  {'SUBMITTED':<19}  WORKFLOW"]
    lines += [f"{r.run_id:<12}  {printable(r.state):<10}  {printable(r.endpoint[:12]):<12}  "
              f"{local_time(r.submitted):<19}  {printable(r.workflow)}" for r in runs]
    empty = f"no runs on {endpoint}" if endpoint else "no runs yet"
    return [r.to_json() for r in runs], "\n".join(lines) if runs else empty


def _state_text(run_id: str, st: dict[str, Any]) -> str:
    """The state as lines; every value came from the login node, so control characters are escaped."""
    p = printable
    lines = [f"run      {run_id}", f"state    {p(st.get('state'))}"]
    if st.get("detail"):
        lines.append(f"detail   {p(st['detail'])}")
    if st.get("host"):
        heartbeat = local_time(st.get("updated"))
        lines.append(f"driver   pid {p(st.get('pid'))} on {p(st.get('host'))}, heartbeat {heartbeat}")
    tasks = st.get("tasks") or {}
    if isinstance(tasks, dict) and tasks.get("total"):
        counts = sorted(tasks.items(), key=lambda kv: str(kv[0]))
        parts = ", ".join(f"{p(k)} {p(v)}" for k, v in counts if k not in ("total",) and v)
        lines.append(f"tasks    {p(tasks['total'])} ({parts})")
    job = st.get("driver_job")
    if isinstance(job, dict) and job.get("id"):
        lines.append(f"in job   {p(job['id'])} ({p(job.get('provider'))}, "
                     "placement=batch: the driver and its workers run in it)")
    if st.get("scheduler_job_ids"):
        lines.append("jobs     " + ", ".join(p(j) for j in st["scheduler_job_ids"]))
    for died in st.get("block_failures") or []:
        if isinstance(died, dict):
            lines.append(f"died     {p(died.get('job'))}: {p(died.get('why'))}")
    if st.get("resumed_from"):
        lines.append(f"resumed  from {p(st['resumed_from'])}")
    err = st.get("error") or {}
    if isinstance(err, dict) and err.get("message"):
        lines.append(f"error    {p(err['message'])}")
        if err.get("traceback"):
            lines.append(p(str(err["traceback"]).rstrip(), lines=True))
    if st.get("hint"):
        lines.append(f"hint     {p(st['hint'])}")
    return "\n".join(lines)


@command()
@click.argument("run_id")
@click.option("--wait", is_flag=True, help="Wait until the run ends.")
def status(run_id: str, wait: bool, progress: ProgressMeter) -> tuple[Any, str]:
    """Show a run's state (RUN_ID may be a unique prefix)."""
    run = api.get_run(run_id)
    _track(run)
    st = run.wait(progress=progress) if wait else run.status()
    return {"run_id": run.id, **st}, _state_text(run.id, st)


@command()
@click.argument("run_id")
@click.option("--name", default="driver", show_default=True, help="driver, stdout, stderr or parsl.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--tail", is_flag=True, help="Start from the last MiB.")
def logs(run_id: str, name: str, follow: bool, tail: bool, progress: ProgressMeter) -> tuple[Any, str]:
    """Print one of a run's logs."""
    run = api.get_run(run_id)
    _track(run)
    pieces = []
    stream = follow and not click.get_current_context().meta.get("gcbundle.json")
    for text in run.logs(name, follow=follow, tail=tail):
        if stream:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            pieces.append(text)
    text = "".join(pieces)
    ended = run.last_state.get("state")
    if follow:
        progress.note(f"run {run.id} ended: {ended}")  # --follow stops only when the run does
    return {"run_id": run.id, "name": name, "text": text, "state": ended}, "" if stream else text.rstrip("\n")


@command()
@click.argument("run_id")
@click.option("-o", "--output", "dest", default="results", show_default=True, type=click.Path(),
              help="Directory; results land in OUTPUT/<run_id>.")
def results(run_id: str, dest: str, progress: ProgressMeter) -> tuple[Any, str]:
    """Fetch a finished run's results package, verified (resumes a broken download)."""
    run = api.get_run(run_id)
    fetched = run.results(Path(dest), progress=progress)
    note = "nothing new to fetch" if fetched.fetched_bytes == 0 else f"fetched {size(fetched.fetched_bytes)}"
    line = (f"{fetched.path}: {fetched.files} files, {size(fetched.bytes)} verified ({note}); "
            f"run {fetched.state.get('state')}")
    return fetched.to_json(), line


@command()
@click.argument("run_id")
@click.option("--grace", default=30, show_default=True, help="Seconds before the driver's processes are killed.")
def cancel(run_id: str, grace: int, progress: ProgressMeter) -> tuple[Any, str]:
    """Stop a run: the driver cleans up its DFK and the scheduler's jobs."""
    run = api.get_run(run_id)
    reply = run.cancel(grace=grace)
    st = reply["state"]
    if reply.get("already"):
        return reply, f"run {run.id} had already ended: {st.get('state')}"
    return reply, f"run {run.id} {st.get('state')}"


@command()
@click.argument("run_id")
@click.option("--allow-changed", is_flag=True, help="Resume even though the workflow changed since that run.")
@click.option("--workflow", type=click.Path(exists=True), help="Workflow to compare with (default: the one submitted).")
@click.option("--arg", "args", multiple=True, help="Override an argument, name=value (default: the earlier run's).")
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
def resume(run_id: str, allow_changed: bool, workflow: str | None, args: tuple[str, ...], wait: bool,
           progress: ProgressMeter) -> tuple[Any, str]:
    """Start a new run from RUN_ID's bundle, reusing its checkpointed app results."""
    run = api.resume(run_id, allow_changed=allow_changed, workflow=workflow, args=parse_args(args), progress=progress)
    _track(run)
    progress.note(f"resumed run {run.record.resumed_from} as run {run.id}")
    data: dict[str, Any] = {
        "run_id": run.id,
        "resumed_from": run.record.resumed_from,
        "endpoint": run.endpoint,
        "state": run.last_state,
    }
    if not wait:
        return data, run.id
    return _wait_and_fetch(run, data, progress)


@command()
@click.argument("profile", required=False)
def sites(profile: str | None, progress: ProgressMeter) -> tuple[Any, str]:
    """List the built-in site profiles and their parameters (or only PROFILE: a
    built-in name or the path of a .yaml profile)."""
    out = []
    lines = []
    for name in [profile] if profile else profiles.builtin_names():
        p = profiles.load(name)
        params = p.parameters()
        out.append({"name": p.name, "description": p.description, "parameters": [x.to_json() for x in params.values()]})
        lines.append(f"{p.name}: {p.description}")
        for x in params.values():
            req = "required" if x.required else ("optional" if x.default is None else f"default {x.default!r}")
            lines.append(f"    {x.name} ({req}){': ' + x.help if x.help else ''}")
    return out, "\n".join(lines)


@command(epilog="Nothing is asked before deleting: run with --dry-run first to see what would go.")
@click.option("--older-than", "older_than", metavar="AGE",
              help="Only what ended (or was last used) longer ago: 90s, 30m, 12h, 7d, 2w.")
@click.option("--state", "states", multiple=True, type=click.Choice(list(pruning.TERMINAL)),
              help="Only runs that ended in this state (repeatable; default every ended state).")
@click.option("-e", "--endpoint", "endpoints", multiple=True,
              help="Only this endpoint's login node (repeatable; default every endpoint you have runs on).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, and how much, and delete nothing.")
@click.option("--force", is_flag=True,
              help="Also runs whose results this client has not fetched (never a run that has not ended).")
@click.option("--results", is_flag=True,
              help="Also the results packages in gcbundle's own results dir (where submit --wait puts them).")
@click.option("--no-login-node", is_flag=True, help="Only this machine: send no task.")
@click.option("--no-caches", is_flag=True, help="Keep this machine's pack caches.")
def prune(older_than: str | None, states: tuple[str, ...], endpoints: tuple[str, ...], dry_run: bool, force: bool,
          results: bool, no_login_node: bool, no_caches: bool, progress: ProgressMeter) -> tuple[Any, str]:
    """Reclaim disk: finished runs and unused bundles on the login nodes (one task per
    endpoint), this machine's pack caches and, with --results, fetched results."""
    options = pruning.Options(
        older_than=pruning.parse_age(older_than), states=states or pruning.TERMINAL, force=force, dry_run=dry_run,
        endpoints=endpoints, login_node=not no_login_node, caches=not no_caches, results=results,
    )
    report = pruning.prune(options)
    return report, _prune_text(report)


def _prune_text(report: dict[str, Any]) -> str:
    would = report["dry_run"]
    verb = "would free" if would else "freed"
    action = "prune" if would else "pruned"
    lines = []
    for endpoint, rep in report["endpoints"].items():
        runs = rep.get("runs", [])
        gone = [r for r in runs if r["action"] in ("prune", "pruned")]
        unfetched = [r for r in runs if r["reason"].startswith("results not fetched")]
        bundles = [b for b in rep.get("bundles", []) if b["action"] in ("prune", "pruned")]
        free = f", {size(rep['free_bytes'])} free" if rep.get("free_bytes") is not None else ""
        lines.append(f"endpoint {endpoint} ({rep.get('home')}): {len(gone)} of {len(runs)} runs, "
                     f"{len(bundles)} bundles; {verb} {size(rep['freed_bytes'])}{free}")
        lines += [f"  {action} run {r['run_id']}  {size(r['bytes']):>10}  {r['reason']}" for r in gone]
        lines += [f"  {action} bundle {b['digest'][:12]}  {size(b['bytes']):>10}  {b['reason']}" for b in bundles]
        lines += [f"  kept run {r['run_id']}  {size(r['bytes']):>10}  {r['reason']}"
                  for r in runs if r["state"] not in pruning.TERMINAL]
        if unfetched:
            ids = " ".join(r["run_id"] for r in unfetched[:5]) + (" ..." if len(unfetched) > 5 else "")
            unfetched_bytes = size(sum(r["bytes"] for r in unfetched))
            lines.append(f"  kept {len(unfetched)} runs whose results you have not fetched ({unfetched_bytes}): "
                         f"`gcbundle results ID` first, or --force ({ids})")
    caches = report["client"].get("caches")
    if caches is not None:
        cache_bytes = size(sum(c["bytes"] for c in caches))
        lines.append(f"this machine's pack caches: {len(caches)} entries, {verb} {cache_bytes}")
    res = report["client"].get("results")
    if res is not None:
        lines.append(f"this machine's results: {len(res)} packages, {verb} {size(sum(r['bytes'] for r in res))}")
        lines += [f"  {action} {r['path']}  {size(r['bytes'])}" for r in res]
    dry_note = " (dry run: nothing deleted)" if would else ""
    lines.append(f"{verb} {size(report['freed_bytes'])} in all{dry_note}")
    return "\n".join(lines)


# -- Globus Compute endpoints: aliases, registered functions, login ----------------------

@main.group("endpoints")
def endpoints_group() -> None:
    """Endpoint aliases: a short name for a Globus Compute endpoint, with its default
    site profile, --set values and registered function ids."""


def _alias_line(ep: Any) -> str:
    sets = " ".join(f"{k}={v}" for k, v in sorted(ep.set.items()))
    funcs = f"{len(ep.functions)} registered functions" if ep.functions else ""
    return "  ".join(x for x in (f"{ep.name:<16}", ep.uuid, f"site={ep.site}" if ep.site else "", sets, funcs) if x)


@command("add", group=endpoints_group)
@click.argument("name")
@click.argument("uuid")
@click.option("--site", help="Default site profile for submissions to this endpoint (a built-in name or a YAML file).")
@click.option("--set", "sets", multiple=True,
              help="Default site parameter, name=value (repeatable; --set on submit overrides).")
@click.option("--function", "function_ids", multiple=True,
              help="Registered function id of a task, TASK=ID (repeatable).")
@click.option("--functions", "functions_file", type=click.Path(exists=True, dir_okay=False),
              help="File of registered function ids (what `gcbundle register -o FILE` writes).")
@click.option("--replace", is_flag=True, help="Overwrite an existing alias of that name.")
def endpoints_add(name: str, uuid: str, site: str | None, sets: tuple[str, ...], function_ids: tuple[str, ...],
                  functions_file: str | None, replace: bool, progress: ProgressMeter) -> tuple[Any, str]:
    """Name a Globus Compute endpoint: NAME then works wherever --endpoint does."""
    functions = endpoints.read_function_ids(functions_file) if functions_file else {}
    for item in function_ids:
        task, sep, fid = item.partition("=")
        if not sep:
            raise UsageError(f"--function {item!r} is not TASK=ID", "write e.g. --function status=6d0ba55f-...")
        functions[task] = fid
    ep = endpoints.add(name, uuid, site=site, params=profiles.parse_sets(sets), functions=functions, replace=replace)
    missing = endpoints.missing_required(ep)
    if missing:
        again = " ".join([
            "gcbundle endpoints add", name, ep.uuid, "--site", str(ep.site),
            *[f"--set {k}={v}" for k, v in sorted(ep.set.items())],
            *[f"--set {m}=VALUE" for m in missing],
            "--replace",
        ])
        click.echo(f"gcbundle: note: site {ep.site} needs {', '.join(missing)}, which this alias does not set: "
                   f"every submit to {name} must give {' '.join(f'--set {m}=...' for m in missing)}; "
                   f"to store it: `{again}`", err=True)
    return {**ep.to_json(), "missing_parameters": missing}, f"added {_alias_line(ep)}\n(in {endpoints.config_path()})"


@command("list", group=endpoints_group)
def endpoints_list(progress: ProgressMeter) -> tuple[Any, str]:
    """List the endpoint aliases."""
    aliases = endpoints.load_all()
    if not aliases:
        return [], ("no endpoint aliases yet; add one with `gcbundle endpoints add NAME UUID` "
                    f"(they live in {endpoints.config_path()})")
    return [ep.to_json() for ep in aliases.values()], "\n".join(_alias_line(ep) for ep in aliases.values())


@command("remove", group=endpoints_group)
@click.argument("name")
def endpoints_remove(name: str, progress: ProgressMeter) -> tuple[Any, str]:
    """Forget an endpoint alias (runs submitted through it keep its name in `gcbundle list`)."""
    ep = endpoints.remove(name)
    return ep.to_json(), f"removed {ep.name} ({ep.uuid})"


@command()
@click.option("-e", "--endpoint", required=True, help="An endpoint alias or UUID.")
@click.option("--public", is_flag=True,
              help="Let any Globus user run these function ids (for ids an administrator shares with all users).")
@click.option("--group", "group_id", help="Share the function ids with this Globus group instead.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Also write the ids to this file, for users' `endpoints add --functions`.")
def register(endpoint: str, public: bool, group_id: str | None, output: str | None,
             progress: ProgressMeter) -> tuple[Any, str]:
    """Register gcbundle's login-node task functions once, for endpoints restricted with
    `allowed_functions`; store their ids in the alias and print them for the administrator."""
    # the Globus SDK is heavy: only for the commands that talk to it
    from bundle.transport.globus import require_globus

    transport = require_globus(endpoint)
    ids = transport.register_all(public=public, group=group_id)
    target = endpoints.resolve(endpoint)
    stored = target.name if target.name != target.uuid else None
    if stored:
        endpoints.set_functions(stored, ids)
    if output:
        endpoints.write_function_ids(output, target.uuid, ids)
    data = {
        "endpoint": target.uuid,
        "alias": stored,
        "functions": ids,
        "allowed_functions": list(ids.values()),
        "output": output,
    }
    lines = [f"registered {len(ids)} gcbundle task functions for endpoint {target.label}"]
    lines.append(f"stored in alias {stored}: its tasks are now sent by these ids" if stored else
                 f"not stored: add an alias with `gcbundle endpoints add NAME {target.uuid} --function TASK=ID ...`")
    if output:
        lines.append(f"wrote the ids to {output}: users add them with "
                     f"`gcbundle endpoints add NAME {target.uuid} --functions {output}`")
    lines.append("for the endpoint's config.yaml (administrators), then restart the endpoint:")
    lines.append("allowed_functions:")
    lines += [f"  - {fid}  # gcbundle {task}" for task, fid in ids.items()]
    return data, "\n".join(lines)


@command()
@click.option("--force", is_flag=True, help="Log in again even if the stored login still works.")
def login(force: bool, progress: ProgressMeter) -> tuple[Any, str]:
    """Log in to Globus Compute with the SDK's own flow (or check GLOBUS_COMPUTE_CLIENT_ID/SECRET)."""
    # the Globus SDK is heavy: only for the commands that talk to it
    from bundle.transport.globus import login as globus_login

    info = globus_login(force=force)
    if info["headless"]:
        return info, "the client credentials in GLOBUS_COMPUTE_CLIENT_ID/GLOBUS_COMPUTE_CLIENT_SECRET work"
    return info, f"logged in to Globus Compute; the SDK keeps the tokens in {info['token_storage']}"


# -- site profiles: render and doctor ---------------------------------------------------

@command("render")
@click.option("--site", help="Site profile: a built-in name (`gcbundle sites`) or a YAML file.")
@click.option("--set", "sets", multiple=True, help="Site profile parameter, name=value (repeatable).")
@click.option("-e", "--endpoint", help="Use this endpoint alias's site and --set defaults, as submit would.")
def render_site(site: str | None, sets: tuple[str, ...], endpoint: str | None,
                progress: ProgressMeter) -> tuple[Any, str]:
    """Print the Parsl Config and the exact batch script a site profile gives, submitting nothing."""
    rendered = site_render.for_command(site, profiles.parse_sets(sets), endpoint)
    return rendered.to_json(), rendered.text()


@command()
@click.option("-e", "--endpoint",
              help="Check the login node behind this endpoint (`local`, a UUID or an alias): one short task.")
@click.option("--local", "local_", is_flag=True,
              help="Run the checks in this process, on this machine "
                   "(on a login node: what the Ansible role runs last).")
@click.option("--site", help="Also check this site profile: its scheduler commands, address and worker_init.")
@click.option("--set", "sets", multiple=True, help="Site profile parameter, name=value (repeatable).")
@click.option("--probe", is_flag=True,
              help="With --site: submit one short job per executor that checks a compute node reaches "
                   "the executor's address.")
def doctor(endpoint: str | None, local_: bool, site: str | None, sets: tuple[str, ...], probe: bool,
           progress: ProgressMeter) -> tuple[Any, str]:
    """Check a login node: versions on both sides, scheduler and MPI commands, GCBUNDLE_HOME,
    the profile's address and worker_init. Exits non-zero when a check fails."""
    if probe and not site:
        raise UsageError("--probe needs --site",
                         "the probe job is submitted with the site profile's provider, e.g. `--site polaris --probe`")
    if probe:
        progress.note("doctor: submitting a probe job to a compute node (up to 2 minutes)")
    report = doc.run(endpoint=endpoint, local=local_, site=site, params=profiles.parse_sets(sets), probe=probe)
    human = doc.table(report)
    if not report["ok"]:
        failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
        raise ChecksFailed(f"{len(failed)} doctor check{'s' if len(failed) != 1 else ''} failed: {', '.join(failed)}",
                           "each failing check above says how to fix it", data=report, human=human)
    return report, human


if __name__ == "__main__":
    main()
