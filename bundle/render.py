"""``gcbundle render``: a site profile's Parsl Config and the exact batch
script each provider would submit, without submitting anything.

Nothing is re-implemented here: the Config is built from the profile by the
same builder the login node uses (``profiles.build_config``), and the batch
script comes from Parsl itself: the executor composes its worker command
(``initialize_scaling``) and launches block 0 (``_launch_block``) exactly as
the DataFlowKernel's first scaling pass would, so the provider fills its own
template and wraps the command with its own launcher. Only the provider's
``execute_wait`` is replaced: it records the submit command (sbatch, qsub)
instead of running it, and answers the probes some providers make when they
are built (SlurmProvider runs ``sacct``). Address functions
(``address_by_interface``) are not run: they must run on the login node.

Values known only when the run starts appear as ``<...>``: ``<run>`` is the
run directory on the login node (``$GCBUNDLE_HOME/runs/<run_id>``), ``<env>``
the login node's Python environment, ``<time>`` the submission time in the
job name, ``<port>`` and ``<addresses>`` what the executor listens on, and an
address function appears as its call.
"""
from __future__ import annotations

import inspect
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from bundle import placement, prelude, profiles, schedulers
from bundle.endpoints import site_choice
from bundle.errors import SiteProfileError, UsageError

RUN = "<run>"
ENV_BIN = "<env>/bin"
#: Parsl's run directory: each gcbundle run has its own runinfo/, so it is always 000.
RUN_DIR = f"{RUN}/runinfo/000"
TIME = "<time>"
PORT = "<port>"
ADDRESSES = "<addresses>"
_ADDRESS_IN_REPR = re.compile(r" at 0x[0-9a-f]+>")
SITE_DEFAULTS_NOTE = ("on the login node, lines from $GCBUNDLE_HOME/site-defaults.yaml (worker_init, tmpdir) "
                      "come first in worker_init when the site sets them")


@dataclass
class BatchScript:
    executor: str
    provider: str
    submit_command: str
    script: str

    def to_json(self) -> dict[str, str]:
        return {"executor": self.executor, "provider": self.provider, "submit_command": self.submit_command,
                "script": self.script}


@dataclass
class Rendered:
    site: str
    params: dict[str, Any]
    config: str
    scripts: list[BatchScript] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site, "params": self.params, "config": self.config,
            "scripts": [s.to_json() for s in self.scripts], "notes": self.notes,
            "placeholders": {"<run>": "the run directory on the login node, $GCBUNDLE_HOME/runs/<run_id>",
                             "<env>": "the login node's Python environment (the driver's)",
                             "<time>": "the submission time in the job name",
                             "<port>": "the port the executor's interchange listens on",
                             "<addresses>": "the login node's addresses the workers try"},
        }

    def text(self) -> str:
        title = f"# Parsl Config of site profile {self.site!r} (values known only at run time appear as <...>)"
        out = [title, self.config, ""]
        for s in self.scripts:
            out += [f"# executor {s.executor}: {s.provider} would submit block 0 with", f"#   {s.submit_command}",
                    s.script.rstrip("\n"), ""]
        out += [f"# {note}" for note in self.notes]
        return "\n".join(out).rstrip("\n")


class _DryRun:
    """One provider's scheduler commands, recorded instead of run."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def __call__(self, cmd: str, timeout: Any = None) -> tuple[int, str, str]:
        self.commands.append(cmd)
        return schedulers.dry_run_answer(cmd)


def _dry_factory(dry_runs: dict[int, _DryRun]) -> profiles.Factory:
    # Parsl is heavy: the CLI imports this module for every command, and only render and submit build a Config.
    from parsl.providers.cluster_provider import ClusterProvider

    def factory(kind: str, target: Any, kwargs: dict[str, Any], where: str) -> Any:
        if kind == "address":
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            return f"<{target.__name__}({args})>"
        if kind == "provider" and isinstance(target, type) and issubclass(target, ClusterProvider):
            dry = _DryRun()
            cls = type(target.__name__, (target,), {"execute_wait": lambda self, cmd, timeout=None: dry(cmd, timeout)})
            cls.__qualname__ = target.__qualname__
            cls.__module__ = target.__module__
            obj = cls(**kwargs)
            dry_runs[id(obj)] = dry
            return obj
        if kind == "executor" and "address" in _keywords(target) and kwargs.get("address") is None:
            # HTEX would list every address of this machine: not the login node's.
            obj = target(**{**kwargs, "address": ADDRESSES})
            obj.address = kwargs.get("address")
            return obj
        return target(**kwargs)

    return factory


def _keywords(target: Any) -> set[str]:
    try:
        return set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return set()


def check(profile: profiles.Profile, params: dict[str, Any]) -> Any:
    """Render the profile and build its Config without running anything on
    this machine: unset required parameters, unknown ``type:`` names, unknown
    keywords and values of the wrong type are errors here, before anything is
    sent. Returns the (dry) Config."""
    rendered = profiles.substitute(profile, params)
    if profile.driver_options(params)["placement"] == "batch":
        placement.batch_provider_node(rendered, f"site profile {profile.name!r}")
    return profiles.build_config(rendered, factory=_dry_factory({}))


def for_command(site: str | None, params: dict[str, Any], endpoint: str | None = None) -> Rendered:
    """``gcbundle render``: the site profile named (or an endpoint alias's), with an alias's defaults filled in."""
    site, params = site_choice(endpoint, site, params)
    if not site:
        raise UsageError("render needs --site",
                         "e.g. `gcbundle render --site slurm --set partition=debug`; "
                         "`gcbundle sites` lists the profiles")
    return render(profiles.load(site), params)


def render(profile: profiles.Profile, params: dict[str, Any]) -> Rendered:
    """The Config and, for each executor with a batch provider, the script of its first block
    (with ``placement=batch``: the driver's job, and the Config as the driver uses it inside)."""
    if profile.driver_options(params)["placement"] == "batch":
        return _render_batch(profile, params)
    dry_runs: dict[int, _DryRun] = {}
    config = profiles.build_config(profiles.substitute(profile, params), factory=_dry_factory(dry_runs))
    config.run_dir = f"{RUN}/runinfo"
    # The Config as built from the profile; the driver then adds its worker_init
    # prelude, the run's run_dir and a checkpointing memoizer (all in the scripts below).
    out = Rendered(profile.name, dict(params), _ADDRESS_IN_REPR.sub(">", repr(config)))
    prelude.prepend(config, prelude.for_run(RUN, "<run_id>", bindir=ENV_BIN))  # as the driver does
    for executor in config.executors:
        provider = getattr(executor, "provider", None)
        dry = dry_runs.get(id(provider))
        if dry is None:
            kind = type(provider).__name__ if provider is not None else "no provider"
            out.notes.append(f"executor {executor.label}: {kind} submits no batch script")
            continue
        if not hasattr(executor, "initialize_scaling") or not hasattr(executor, "_launch_block"):
            kind = type(executor).__name__
            out.notes.append(f"executor {executor.label}: gcbundle cannot render the worker command of {kind}")
            continue
        out.scripts.append(_first_block(executor, provider, dry))
    if out.scripts:
        out.notes.append(SITE_DEFAULTS_NOTE)
    return out


def _first_block(executor: Any, provider: Any, dry: _DryRun) -> BatchScript:
    tmp = tempfile.mkdtemp(prefix="gcbundle-render-")
    try:
        # What the DataFlowKernel and the executor's start() set before the first block.
        executor.run_dir = RUN_DIR
        provider.script_dir = tmp
        executor.worker_port = PORT
        if getattr(executor, "address", None) is None:
            executor.all_addresses = [ADDRESSES]
        encrypted = getattr(executor, "encrypted", False)
        executor.cert_dir = os.path.join(executor.logdir, "certificates") if encrypted else None
        if not hasattr(executor, "logconf_path"):
            executor.logconf_path = None
        executor.initialize_scaling()
        dry.commands.clear()
        try:
            executor._launch_block("0")
        except Exception as exc:  # noqa: BLE001 - a template or launcher that cannot be filled
            raise SiteProfileError(f"executor {executor.label}: {type(provider).__name__} could not write its batch "
                                   f"script: {exc}", "check the provider's parameters") from None
        return _written_script(tmp, dry, provider, executor=executor.label,
                               lead=f"executor {executor.label}: expected one batch script",
                               job_name=f"parsl.{executor.label}.block-0",  # what _launch_block names it
                               shown_dir=f"{RUN_DIR}/submit_scripts")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _written_script(tmp: str, dry: _DryRun, provider: Any, *, executor: str, lead: str, job_name: str,
                    shown_dir: str) -> BatchScript:
    """The one batch script ``provider`` wrote into ``tmp`` and the command that would submit it, with
    ``tmp`` shown as ``shown_dir`` and the submission time the provider adds to ``job_name`` as ``<time>``.
    ``lead`` starts the error when the provider wrote no script or more than one."""
    kind = type(provider).__name__
    scripts = sorted(n for n in os.listdir(tmp) if not n.endswith((".stdout", ".stderr")))
    if len(scripts) != 1:
        raise SiteProfileError(f"{lead}, {kind} wrote {scripts}")
    name = scripts[0]
    with open(os.path.join(tmp, name), encoding="utf-8") as f:
        script = f.read()
    shown = f"{job_name}.{TIME}" if name.startswith(job_name + ".") else name  # the provider adds .<time.time()>
    submit = next((c for c in dry.commands if c.split()[:1] and c.split()[0] in schedulers.SUBMIT_COMMANDS),
                  dry.commands[-1] if dry.commands else "")

    def clean(text: str) -> str:
        text = text.replace(os.path.join(tmp, name), f"{shown_dir}/{shown}")
        return text.replace(tmp, shown_dir).replace(name, shown)

    return BatchScript(executor, kind, " ".join(clean(submit).split()), clean(script))


HOME = "<home>"
LIB = "<home>/lib/<gcbundle>"


def _render_batch(profile: profiles.Profile, params: dict[str, Any]) -> Rendered:
    """``placement=batch``: the one job gcbundle submits for the driver, as the
    profile's own provider writes it, and the Config the driver loads inside it."""
    options = profile.driver_options(params)
    rendered = profiles.substitute(profile, params)
    node = placement.batch_provider_node(rendered, f"site profile {profile.name!r}")
    dry_runs: dict[int, _DryRun] = {}
    provider = profiles._build(node, "provider", "driver job", factory=_dry_factory(dry_runs))
    dry = dry_runs[id(provider)]
    inside, replaced = placement.use_the_jobs_nodes(rendered)
    config = profiles.build_config(inside, factory=_dry_factory({}))
    prelude.prepend(config, prelude.for_run(RUN, "<run_id>", bindir=ENV_BIN))  # as the driver does
    config.run_dir = f"{RUN}/runinfo"
    out = Rendered(profile.name, dict(params), _ADDRESS_IN_REPR.sub(">", repr(config)))
    if options["driver_init"].strip():
        python_lines = prelude.driver_in_user_env(options["driver_init"], LIB, RUN)
    else:
        python_lines = f'export PATH={ENV_BIN}:"$PATH"\nexec {ENV_BIN}/python -I -u -m login_node.driver {RUN}\n'
    command = placement.job_command(run_dir=RUN, bundle_dir=f"{RUN}/bundle", home=HOME, run_id="<run_id>",
                                    exports={}, python_lines=python_lines)
    tmp = tempfile.mkdtemp(prefix="gcbundle-render-")
    try:
        placement.driver_job_provider(provider, node.get("worker_init") or "", tmp)
        placement.submit(provider, command, "<run_id>")
        out.scripts.append(_written_script(tmp, dry, provider, executor="driver",
                                           lead="expected one batch script for the driver's job",
                                           job_name=placement.JOB_NAME.format(run_id="<run_id>"),
                                           shown_dir=f"{RUN}/driver-job"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.notes += [f"inside the driver's job, executor {r}" for r in replaced]
    out.notes.append(SITE_DEFAULTS_NOTE)
    return out
