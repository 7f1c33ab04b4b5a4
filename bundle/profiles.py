"""Site profiles: YAML in the shape of a Globus Compute endpoint's ``engine:`` block.

A profile names Parsl classes with ``type:`` keys (the executor, its
``provider``, the provider's ``launcher``, and ``address`` functions) and may
use ``${name}`` / ``${name:default}`` parameters set with ``--set name=value``.
``type:`` resolves only within Parsl's executors, providers, launchers and
address functions, so a profile cannot name arbitrary code.

The client loads and renders a profile to check it before anything is sent;
the profile text and parameters travel in the launch request, and the login
node builds the live Config (address functions must run there).
"""
from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bundle.errors import SiteProfileError, UsageError
from bundle.suggest import unknown_names

_PARAM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_TOP_KEYS = {"description", "parameters", "engine", "executors", "config", "parsl"}
#: The Parsl every run needs, whatever the profile (``Config(memoizer=...)``); as in pyproject.toml.
MIN_PARSL = "2025.12.1"
#: Config keywords a profile may set (anything else is ours to decide: run_dir, memoizer).
CONFIG_KEYS = {
    "retries", "strategy", "strategy_period", "max_idletime", "app_cache", "initialize_logging", "exit_mode",
    "usage_tracking", "std_autopath",
}
#: Where the driver runs on the login node's site: login (a detached process on the login node) or batch
#: (inside one batch job that gcbundle submits, using that job's nodes).
PLACEMENTS = ("login", "batch")
#: Parameters every profile has, which say how gcbundle starts the driver rather than what Parsl gets;
#: a profile may declare them itself to change their defaults (e.g. ``placement: {default: batch}``).
DRIVER_PARAMETERS = {
    "driver_init": ("", "shell lines run before the driver starts (module load conda; conda activate ENV): "
                        "the driver, its DFK and, first in every batch job, its workers then use that environment, "
                        "which needs only Python 3.10+ and Parsl (unset: the endpoint's own environment)"),
    "placement": ("login", "where the driver runs: login (on the login node) or batch (inside one batch job gcbundle "
                           "submits, whose nodes the workers use)"),
}


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any = None
    required: bool = False
    help: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default, "required": self.required, "help": self.help}


@dataclass(frozen=True)
class Profile:
    name: str
    text: str
    data: dict[str, Any] = field(repr=False)

    @property
    def description(self) -> str:
        return str(self.data.get("description", "")).strip()

    def parameters(self) -> dict[str, Parameter]:
        """Declared parameters plus every placeholder used, with their defaults."""
        declared = self.data.get("parameters") or {}
        found: dict[str, Any] = {}
        for name, default in _placeholders(self.data.get("engine") or self.data.get("executors")):
            if name not in found or found[name] is None:
                found[name] = default
        for name, default in _placeholders(self.data.get("config")):
            found.setdefault(name, default)
        for name, (default, _help) in DRIVER_PARAMETERS.items():
            found.setdefault(name, default)
        out = {}
        for name in sorted(set(found) | set(declared)):
            spec = declared.get(name) or {}
            default = spec.get("default", found.get(name))
            # `required: false` with no default: the parameter renders as null
            # (the Parsl keyword's "not set", e.g. no `-A` for qsub).
            required = default is None and spec.get("required", True) is not False
            helptext = str(spec.get("help", "")) or (DRIVER_PARAMETERS[name][1] if name in DRIVER_PARAMETERS else "")
            out[name] = Parameter(name, default, required=required, help=helptext)
        return out

    def parsl_requirement(self) -> str:
        """The Parsl versions a run with this profile needs (PEP 440): gcbundle's own
        minimum, narrowed by the profile's optional ``parsl: ">=2026.1"`` (a profile that
        names a class or keyword only newer Parsl has)."""
        extra = self.data.get("parsl")
        spec = f">={MIN_PARSL}"
        if extra is None:
            return spec
        from packaging.specifiers import InvalidSpecifier, SpecifierSet  # only then: a driver's environment may lack it

        try:
            return str(SpecifierSet(f"{spec},{extra}"))
        except (InvalidSpecifier, TypeError):
            raise SiteProfileError(f"site profile {self.name!r}: `parsl: {extra}` is not a version specifier",
                                   'write e.g. parsl: ">=2026.1"') from None

    def driver_options(self, params: dict[str, Any]) -> dict[str, Any]:
        """How the driver of a run with these parameters starts: ``driver_init`` and ``placement``."""
        known = self.parameters()
        values = {name: params.get(name, known[name].default) for name in DRIVER_PARAMETERS}
        init = values["driver_init"]
        if init is None:
            init = ""
        if not isinstance(init, str):
            raise SiteProfileError(f"driver_init must be shell lines, not {init!r}",
                                   "e.g. --set driver_init='module load conda; conda activate myenv'")
        placement = values["placement"]
        if placement not in PLACEMENTS:
            raise SiteProfileError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}",
                                   "e.g. --set placement=batch")
        return {"driver_init": init, "placement": placement}

    def to_spec(self, params: dict[str, Any]) -> dict[str, Any]:
        """What travels in a launch request."""
        return {"name": self.name, "text": self.text, "params": dict(params)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> tuple[Profile, dict[str, Any]]:
        if not isinstance(spec, dict) or not isinstance(spec.get("text"), str):
            raise SiteProfileError("the run's site profile is malformed", "submit again with `--site`")
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise SiteProfileError("site parameters must be an object")
        return parse(str(spec.get("name", "site")), spec["text"]), params


def builtin_names() -> list[str]:
    root = importlib.resources.files("bundle") / "sites"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file by path."""
    if name_or_path in builtin_names():
        text = (importlib.resources.files("bundle") / "sites" / f"{name_or_path}.yaml").read_text(encoding="utf-8")
        return parse(name_or_path, text)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return parse(path.stem, path.read_text(encoding="utf-8"))
    raise SiteProfileError(
        f"unknown site profile {name_or_path!r}",
        f"use one of {', '.join(builtin_names())} (`gcbundle sites`), or the path of a .yaml profile",
    )


def parse(name: str, text: str) -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SiteProfileError(f"site profile {name!r} is not valid YAML: {str(exc).splitlines()[0]}",
                               "fix the YAML") from None
    if not isinstance(data, dict):
        raise SiteProfileError(f"site profile {name!r} must be a YAML mapping")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SiteProfileError(f"site profile {name!r} has unknown keys: {', '.join(sorted(unknown))}",
                               f"allowed: {', '.join(sorted(_TOP_KEYS))}")
    if ("engine" in data) == ("executors" in data):
        raise SiteProfileError(f"site profile {name!r} needs exactly one of `engine:` or `executors:`")
    params = data.get("parameters") or {}
    if not isinstance(params, dict) or not all(isinstance(v, (dict, type(None))) for v in params.values()):
        raise SiteProfileError(f"site profile {name!r}: `parameters:` must map names to {{default:, help:}}")
    config = data.get("config") or {}
    if not isinstance(config, dict) or set(config) - CONFIG_KEYS:
        raise SiteProfileError(f"site profile {name!r}: `config:` may only set {', '.join(sorted(CONFIG_KEYS))}")
    profile = Profile(name, text, data)
    if "parsl" in data:
        profile.parsl_requirement()  # a malformed `parsl:` is an error here, on the laptop
    return profile


def _placeholders(node: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for v in node.values():
            out += _placeholders(v)
    elif isinstance(node, list):
        for v in node:
            out += _placeholders(v)
    elif isinstance(node, str):
        for m in _PARAM.finditer(node):
            out.append((m.group(1), _typed(m.group(2)) if m.group(2) is not None else None))
    return out


def _typed(text: str) -> Any:
    """A parameter value as YAML reads it: ``4`` is an int, ``true`` a bool, else a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ":" in text:
        return text  # YAML 1.1 reads 1:00:00 as 3600; a walltime stays a string
    return value if isinstance(value, (int, float, bool, str)) else text


def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set name=value`` pairs into a dict of typed values."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--set {item!r} is not name=value", "write e.g. --set account=myproject")
        out[name] = _typed(value)
    return out


def check_names(profile: Profile, params: dict[str, Any]) -> dict[str, Parameter]:
    """The profile's parameters; a ``--set`` name it does not have is an error that
    suggests the nearest one (``--set partiton=`` -> ``partition``)."""
    known = profile.parameters()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SiteProfileError(f"site profile {profile.name!r} has no parameter {', '.join(unknown)}",
                               unknown_names(unknown, known, "--set {}=...", label="its parameters"))
    return known


def substitute(profile: Profile, params: dict[str, Any]) -> dict[str, Any]:
    """The profile with every parameter substituted; unset required ones are an error."""
    known = check_names(profile, params)
    values = {name: p.default for name, p in known.items()}
    values.update(params)
    missing = sorted(name for name, v in values.items() if v is None and known[name].required)
    if missing:
        raise SiteProfileError(
            f"site profile {profile.name!r} needs {', '.join(missing)}",
            " ".join(f"--set {m}=..." for m in missing) + " (or set defaults for the endpoint)",
        )

    def sub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [sub(v) for v in node]
        if isinstance(node, str):
            whole = _PARAM.fullmatch(node)
            if whole:
                return values[whole.group(1)]
            return _PARAM.sub(lambda m: str(values[m.group(1)]), node)
        return node

    return {k: sub(v) for k, v in profile.data.items() if k in ("engine", "executors", "config")}


# -- building the live Config (login node) -------------------------------------------

def _namespace(kind: str) -> dict[str, Any]:
    import parsl.addresses
    import parsl.executors
    import parsl.launchers
    import parsl.providers

    modules = {
        "executor": parsl.executors,
        "provider": parsl.providers,
        "launcher": parsl.launchers,
        "address": parsl.addresses,
    }
    module = modules[kind]
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    if kind == "address":
        return {n: getattr(module, n) for n in names if n.startswith("address_by") or n.startswith("get_")}
    return {n: getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)}


_KIND_OF_KEY = {"provider": "provider", "launcher": "launcher", "address": "address"}


#: Builds one typed node: (kind, class or function, keyword arguments, where) -> object.
Factory = Callable[[str, Any, "dict[str, Any]", str], Any]


def _construct(kind: str, target: Any, kwargs: dict[str, Any], where: str) -> Any:
    return target(**kwargs)


def _build(node: Any, kind: str, where: str, factory: Factory = _construct) -> Any:
    if isinstance(node, list):
        return [_build(v, kind, f"{where}[{i}]", factory) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if "type" not in node:
        if kind in ("executor", "provider", "launcher"):
            raise SiteProfileError(f"{where} needs a `type:`", f"name one of parsl's {kind}s")
        return {k: _build(v, "value", f"{where}.{k}", factory) for k, v in node.items()}
    kind = kind if kind in ("executor", "provider", "launcher", "address") else "address"
    allowed = _namespace(kind)
    type_name = node["type"]
    if type_name not in allowed:
        raise SiteProfileError(f"{where}: unknown {kind} type {type_name!r}", f"allowed: {', '.join(sorted(allowed))}")
    kwargs = {}
    for key, value in node.items():
        if key == "type":
            continue
        kwargs[key] = _build(value, _KIND_OF_KEY.get(key, "value"), f"{where}.{key}", factory)
    _check_keywords(allowed[type_name], type_name, kwargs, where)
    try:
        return factory(kind, allowed[type_name], kwargs, where)
    except SiteProfileError:
        raise
    except Exception as exc:
        if not isinstance(exc, TypeError) and type(exc).__name__ != "TypeCheckError":  # typeguard's
            raise
        raise SiteProfileError(f"{where}: {type_name}: {exc}",
                               "check the values against parsl's documentation") from None


def _check_keywords(target: Any, type_name: str, kwargs: dict[str, Any], where: str) -> None:
    """Unknown keyword names are an error, found from the signature: nothing runs."""
    import inspect

    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [n for n, p in params.items() if p.kind in by_keyword]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise SiteProfileError(
            f"{where}: {type_name} has no keyword {', '.join(repr(u) for u in unknown)}",
            f"its keywords: {', '.join(accepted)}",
        )


def build_config(rendered: dict[str, Any], *, factory: Factory | None = None, **overrides: Any) -> Any:
    """A parsl ``Config`` from a rendered profile.

    ``factory`` builds each typed node instead of calling it (``bundle.render``
    uses one that runs no address function and no scheduler command)."""
    from parsl.config import Config

    raw = rendered.get("executors") if "executors" in rendered else [rendered["engine"]]
    if not isinstance(raw, list) or not raw:
        raise SiteProfileError("`executors:` must be a non-empty list")
    executors = [_build(e, "executor", f"executors[{i}]", factory or _construct) for i, e in enumerate(raw)]
    kwargs = dict(rendered.get("config") or {})
    kwargs.update(overrides)
    return Config(executors=executors, **kwargs)
