"""The site's part of a run's Parsl Config: ``site-defaults.yaml``, and composing the live Config.

``$GCBUNDLE_HOME/site-defaults.yaml`` is written by the Ansible role
(``gcbundle_site``) and read here only, by the driver and by the doctor
checks alike:

    worker_init:     shell lines first in every batch job (module loads, the environment's activation)
    tmpdir:          a TMPDIR that exists on the compute nodes
    driver_init:     shell lines that make the driver's environment (``login_node.driverenv``),
                     unless the run's site profile gives its own
    profile_params:  site profile parameter defaults (``SiteDefaults.params_for``)

A missing or unreadable file means no site defaults. The live Config is
built on the login node, where address functions must run: from the run's
site profile (with the site's parameter defaults under the run's own
values), else from a config module in the bundle, else from the workflow
module's ``make_config()``/``config``, else the ``local`` profile.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from bundle import placement, prelude, profiles
from bundle.errors import SiteProfileError
from login_node import spawn
from login_node.entry import import_entry
from login_node.rundir import Home, RunPaths, RunRequest

log = logging.getLogger("gcbundle.driver")


@dataclass(frozen=True)
class SiteDefaults:
    """What the site's administrators set for every run on this login node."""

    worker_init: str = ""
    tmpdir: str = ""
    driver_init: str = ""
    profile_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, home: Home) -> SiteDefaults:
        """``home``'s ``site-defaults.yaml``; empty defaults if it is missing or unreadable."""
        try:
            data = yaml.safe_load(home.site_defaults.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        params = data.get("profile_params")
        return cls(
            worker_init=str(data.get("worker_init") or ""),
            tmpdir=str(data.get("tmpdir") or ""),
            driver_init=str(data.get("driver_init") or ""),
            profile_params=dict(params) if isinstance(params, dict) else {},
        )

    def params_for(self, profile: profiles.Profile) -> dict[str, Any]:
        """Parameter defaults for ``profile``: the site's, limited to what the profile declares.

        This is the one place where site-wide parameter defaults enter a run
        (the run's own ``--set`` values and an alias's defaults win over them).
        A site default for a parameter such as ``account`` or ``queue`` belongs
        in ``profile_params``.
        """
        known = profile.parameters()
        return {k: v for k, v in self.profile_params.items() if k in known}

    def prelude(self, run_dir: str | Path, run_id: str, *, driver_init: str = "", bindir: str | None = None) -> str:
        """The lines first in every batch job of a run in ``run_dir`` (``bundle.prelude``).

        The site's ``worker_init`` comes first, then the run's ``driver_init``
        (the workers run in the environment the driver runs in), then gcbundle's
        own lines with ``bindir`` (the driver's ``bin/``; default: this interpreter's).
        """
        init = "\n".join(x for x in (self.worker_init.strip(), driver_init.strip()) if x)
        return prelude.for_run(run_dir, run_id, bindir=bindir, site_init=init, tmpdir=self.tmpdir)


def render_site(home: Home, spec: dict[str, Any]) -> tuple[profiles.Profile, dict[str, Any]]:
    """A site profile spec (``Profile.to_spec``) rendered with the site's parameter defaults under its own values."""
    profile, params = profiles.Profile.from_spec(spec)
    params = {**SiteDefaults.read(home).params_for(profile), **params}
    return profile, profiles.substitute(profile, params)


def compose(home: Home, paths: RunPaths, request: RunRequest, workflow: ModuleType | None = None) -> Any:
    """The run's live Parsl Config (see the module's docstring for the order).

    ``workflow`` is the imported entry module in function mode; a script
    (``None``) makes its own Config or gets the site's or the default.
    """
    return _from_request(home, paths, request) or _from_workflow(workflow) or default_config()


def _from_request(home: Home, paths: RunPaths, request: RunRequest) -> Any:
    """The Config of the run's site profile or of the bundle's config module, or None."""
    if request.site:
        rendered = render_site(home, request.site)[1]
        if spawn.plan(paths).get("placement") == "batch":
            # The driver runs inside a batch job (login_node.driverjob): the
            # executors use this job's nodes and submit no further job.
            rendered, replaced = placement.use_the_jobs_nodes(rendered)
            for line in replaced:
                log.info("placement=batch: %s", line)
        return profiles.build_config(rendered)
    config = request.config
    if config.get("kind") == "module":
        module = import_entry(paths.bundle, config["path"])
        make = getattr(module, "make_config", None)
        if not callable(make):
            raise SiteProfileError(
                f"config module {config['path']} defines no make_config()",
                "define make_config(**params) -> parsl.Config",
            )
        return make(**request.params)
    return None


def _from_workflow(workflow: ModuleType | None) -> Any:
    """The workflow module's ``make_config()`` or ``config``, or None."""
    if workflow is None:
        return None
    make = getattr(workflow, "make_config", None)
    if callable(make):
        return make()
    return getattr(workflow, "config", None)


def default_config() -> Any:
    """The ``local`` profile's Config."""
    return profiles.build_config(profiles.substitute(profiles.load("local"), {}))
