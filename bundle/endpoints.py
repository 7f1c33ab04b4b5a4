"""Endpoint aliases: short names for Globus Compute endpoints, and their defaults.

``--endpoint`` takes ``local``, an endpoint UUID, or an alias. Aliases live in
one small YAML file in the user's config dir (``platformdirs.user_config_dir``,
so ``$XDG_CONFIG_HOME/gcbundle/endpoints.yaml`` on Linux; ``GCBUNDLE_CONFIG``
names another file, for tests and for people who keep several set-ups)::

    endpoints:
      polaris:
        uuid: 4b116d3c-1703-4f8f-9f6f-39921e5864df
        site: polaris                 # default --site for submissions
        set: {account: myproj}        # default --set values for that site
        functions: {probe: 6d0b...}   # registered task functions (allowed_functions sites)

The file holds no secrets: authentication stays with the Globus Compute SDK's
own token storage, so nothing here is worth stealing. YAML rather than TOML
because PyYAML is already a dependency (site profiles) and Python's standard
library reads TOML but cannot write it. Writes are atomic (temporary file and
rename), so a crash never leaves half a config behind.
"""
from __future__ import annotations

import os
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bundle import profiles
from bundle.errors import UsageError
from bundle.protocol import TASKS

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_HEADER = "# gcbundle endpoint aliases; edit with `gcbundle endpoints add/remove`.\n"


def config_path() -> Path:
    """Where the aliases live (``GCBUNDLE_CONFIG`` overrides the XDG config dir)."""
    override = os.environ.get("GCBUNDLE_CONFIG")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("gcbundle")) / "endpoints.yaml"


def normalize_uuid(value: str) -> str | None:
    """The canonical form of an endpoint UUID, or None when ``value`` is not one."""
    try:
        return str(uuidlib.UUID(str(value).strip()))
    except ValueError:
        return None


@dataclass(frozen=True)
class Endpoint:
    """One alias: which endpoint, and what a submission to it uses by default."""

    name: str
    uuid: str
    site: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name the endpoint: the alias, or the bare UUID."""
        return self.name if self.name != self.uuid else self.uuid

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "site": self.site,
            "set": dict(self.set),
            "functions": dict(self.functions),
        }

    @classmethod
    def from_json(cls, data: Any, name: str | None = None) -> Endpoint:
        where = f"endpoint alias {name!r} in {config_path()}" if name else "an endpoint alias"
        if not isinstance(data, dict):
            raise UsageError(f"{where} is not a mapping", f"fix or remove {config_path()}")
        alias = name or data.get("name")
        uuid = normalize_uuid(str(data.get("uuid", "")))
        if not isinstance(alias, str) or not _NAME.fullmatch(alias):
            raise UsageError(f"{where} has no valid name", f"fix or remove {config_path()}")
        if uuid is None:
            raise UsageError(f"{where} has no valid uuid: {data.get('uuid')!r}",
                             f"fix it, or re-add it with `gcbundle endpoints add {alias} UUID --replace`")
        site = data.get("site")
        params = data.get("set") or {}
        functions = data.get("functions") or {}
        if site is not None and not isinstance(site, str):
            raise UsageError(f"{where}: `site` must be a profile name or path", f"fix or remove {config_path()}")
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise UsageError(f"{where}: `set` must map parameter names to values", f"fix or remove {config_path()}")
        if not isinstance(functions, dict) or not all(
            isinstance(k, str) and normalize_uuid(str(v)) for k, v in functions.items()
        ):
            raise UsageError(f"{where}: `functions` must map task names to function UUIDs",
                             f"run `gcbundle register --endpoint {alias}` again")
        return cls(alias, uuid, site, dict(params), {k: normalize_uuid(str(v)) or "" for k, v in functions.items()})


def load_all() -> dict[str, Endpoint]:
    """Every alias, by name (an absent file means none)."""
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}",
                         "fix the file, or remove it and add the aliases again") from None
    entries = data.get("endpoints") if isinstance(data, dict) else None
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise UsageError(f"{path}: `endpoints:` must map alias names to endpoints",
                         "fix the file, or remove it and add the aliases again")
    return {str(name): Endpoint.from_json(entry, str(name)) for name, entry in entries.items()}


def save_all(aliases: dict[str, Endpoint]) -> Path:
    """Write every alias atomically; returns the file's path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"endpoints": {name: _entry(ep) for name, ep in sorted(aliases.items())}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_HEADER)
            yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}",
                         "check the directory's permissions, or set GCBUNDLE_CONFIG") from None
    return path


def _entry(ep: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"uuid": ep.uuid}
    if ep.site:
        out["site"] = ep.site
    if ep.set:
        out["set"] = dict(ep.set)
    if ep.functions:
        out["functions"] = dict(sorted(ep.functions.items()))
    return out


def check_name(name: str) -> str:
    if name == "local":
        raise UsageError("`local` names the embedded endpoint and cannot be an alias", "choose another name")
    if normalize_uuid(name):
        raise UsageError(f"alias {name!r} looks like an endpoint UUID", "choose a short name, e.g. the site's")
    if not _NAME.fullmatch(name):
        raise UsageError(f"alias {name!r} is not a valid name",
                         "use letters, digits, '.', '_' or '-', starting with a letter")
    return name


def add(name: str, endpoint_uuid: str, *, site: str | None = None, params: dict[str, Any] | None = None,
        functions: dict[str, str] | None = None, replace: bool = False) -> Endpoint:
    """Add (or with ``replace``, overwrite) an alias after checking what it says."""
    check_name(name)
    uuid = normalize_uuid(endpoint_uuid)
    if uuid is None:
        raise UsageError(f"{endpoint_uuid!r} is not an endpoint UUID",
                         "copy it from `globus-compute-endpoint list` on the login node, "
                         "or from app.globus.org/compute")
    params = dict(params or {})
    if site:
        site = _check_site(site, params)
    elif params:
        raise UsageError("--set needs --site", "name the site profile these defaults are for")
    funcs = {}
    for task, fid in (functions or {}).items():
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}", f"gcbundle's tasks are: {', '.join(TASKS)}")
        norm = normalize_uuid(fid)
        if norm is None:
            raise UsageError(f"function id {fid!r} for {task} is not a UUID", "use the ids `gcbundle register` printed")
        funcs[task] = norm
    aliases = load_all()
    if name in aliases and not replace:
        raise UsageError(f"alias {name!r} already exists ({aliases[name].uuid})", "remove it first, or add --replace")
    ep = Endpoint(name, uuid, site, params, funcs)
    aliases[name] = ep
    save_all(aliases)
    return ep


def _check_site(site: str, params: dict[str, Any]) -> str:
    """A built-in profile name as is, a profile file as an absolute path; unknown parameters refused now."""
    profile = profiles.load(site)
    profiles.check_names(profile, params)
    if site in profiles.builtin_names():
        return site
    return str(Path(site).resolve())


def missing_required(ep: Endpoint) -> list[str]:
    """Required parameters of the alias's site that it gives no value for: each
    submission through it must then bring them with ``--set``."""
    if not ep.site:
        return []
    known = profiles.load(ep.site).parameters()
    return sorted(n for n, p in known.items() if p.required and p.default is None and n not in ep.set)


def remove(name: str) -> Endpoint:
    aliases = load_all()
    if name not in aliases:
        raise UsageError(f"no endpoint alias {name!r}", "see `gcbundle endpoints list`")
    ep = aliases.pop(name)
    save_all(aliases)
    return ep


def set_functions(name: str, functions: dict[str, str]) -> Endpoint:
    """Store registered function ids in an alias (``gcbundle register``)."""
    aliases = load_all()
    if name not in aliases:
        raise UsageError(f"no endpoint alias {name!r}", "see `gcbundle endpoints list`")
    old = aliases[name]
    ep = Endpoint(old.name, old.uuid, old.site, old.set, dict(functions))
    aliases[name] = ep
    save_all(aliases)
    return ep


def resolve(endpoint: str) -> Endpoint:
    """An alias by name, or a UUID (as the alias that names it, if exactly one does)."""
    aliases = load_all()
    if endpoint in aliases:
        return aliases[endpoint]
    uuid = normalize_uuid(endpoint)
    if uuid is None:
        names = ", ".join(sorted(aliases)) or "none yet"
        raise UsageError(
            f"unknown endpoint {endpoint!r}",
            f"use `local`, an endpoint UUID, or an alias from `gcbundle endpoints list` ({names}); "
            "add one with `gcbundle endpoints add NAME UUID`",
        )
    named = [ep for ep in aliases.values() if ep.uuid == uuid]
    if len(named) == 1:
        return named[0]
    return Endpoint(uuid, uuid)


def submit_defaults(endpoint: str, site: str | None, params: dict[str, Any],
                    config: Any = None) -> tuple[str | None, dict[str, Any]]:
    """The site and parameters a submission uses, with the alias's defaults filled in.

    The alias's site applies when neither ``--site`` nor ``--config`` was given;
    its ``set`` values apply when the submission uses that same site, and
    ``--set`` overrides them one by one.
    """
    if endpoint == "local" or (config and not site):
        return site, params
    try:
        ep = resolve(endpoint)
    except UsageError:
        return site, params  # the transport says what is wrong with the name
    if site is None and ep.site:
        site = ep.site
    if ep.set and site is not None and ep.site is not None and _same_site(site, ep.site):
        params = {**ep.set, **params}
    return site, params


def site_choice(endpoint: str | None, site: str | None, params: dict[str, Any], config: Any = None, *,
                with_config: bool = False) -> tuple[str | None, dict[str, Any]]:
    """The site profile and parameters a command uses (submit, resume, render, doctor).

    The one place for the rule: an endpoint alias's site and ``set`` values fill
    in what ``--site``/``--set`` leave open (``submit_defaults``), and ``--set``
    without a site profile (or, where the command takes one, ``--config``) is refused.
    """
    if endpoint:
        site, params = submit_defaults(endpoint, site, params, config)
    if params and not site and not config:
        raise UsageError("--set needs --site or --config" if with_config else "--set needs --site",
                         "name the site profile the parameters are for")
    return site, params


def _same_site(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.suffix in (".yaml", ".yml") and pb.suffix in (".yaml", ".yml") and pa.resolve() == pb.resolve()


def read_function_ids(path: str | Path) -> dict[str, str]:
    """Task name -> function id from a file an administrator shared: what
    ``gcbundle register -o`` writes, its ``--json`` output, or a plain TASK: ID mapping."""
    hint = "give the file `gcbundle register -o FILE` wrote, or a TASK: ID mapping"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read function ids from {path}: {exc}", hint) from None
    for key in ("data", "functions"):  # the --json envelope, then the ids inside it or the -o file
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path} holds no function ids", hint)
    return {str(k): str(v) for k, v in data.items()}


def write_function_ids(path: str | Path, endpoint_uuid: str, functions: dict[str, str]) -> Path:
    """The file an administrator shares with users (``gcbundle register -o``)."""
    out = Path(path)
    text = f"# gcbundle login-node task functions registered for endpoint {endpoint_uuid}\n"
    text += yaml.safe_dump({"endpoint": endpoint_uuid, "functions": dict(functions)}, sort_keys=False)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}", "choose another path with -o") from None
    return out
