"""Checks on the laptop, before anything is sent: mistakes visible here cost a queue wait there.

- ``--arg`` values are parsed strictly (``parse_args``) and their names are
  checked against ``main``'s signature, with a "did you mean" (``check_args``);
- every import of a local module resolves to a file in the bundle, and a name
  imported from one is a submodule or a name it defines (``check_imports``);
- string literals in the workflow that name an existing relative path left
  out of the bundle give a warning naming the path (``literal_paths``).

The same checks run on a bundle made earlier by ``gcbundle pack``
(``check_archive``), reading its files from the verified archive. What only
the login node can answer (are the third-party imports installed there?) is
``login_node.preflight``'s, inside the launch task.
"""
from __future__ import annotations

import ast
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import archive, imports
from bundle.errors import BundleError, UsageError
from bundle.manifest import Manifest
from bundle.suggest import did_you_mean

#: Warnings beyond this many are counted, not listed.
MAX_WARNINGS = 20
#: Largest source file read from an archive for the checks.
MAX_SOURCE_BYTES = 4 * 1024 * 1024
_GLOB = set("*?[")


# -- arguments ---------------------------------------------------------------------------

def parse_value(name: str, text: str) -> Any:
    """A ``--arg`` value: JSON when it parses as JSON; a value that looks like JSON (starts
    with ``[``, ``{`` or ``"``) and does not parse is an error, not a string."""
    stripped = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped[:1] in ("[", "{", '"'):
            raise UsageError(
                f"--arg {name}={text} looks like JSON but does not parse: {exc.msg} at column {exc.colno}",
                f"fix the JSON, or pass a plain string as a JSON string: --arg '{name}=\"...\"'",
            ) from None
        return text


def parse_args(items: Iterable[str]) -> dict[str, Any]:
    """``--arg name=value`` items into a dict (values by ``parse_value``)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--arg {item!r} is not name=value", "write e.g. --arg n=20")
        if name in out:
            raise UsageError(f"--arg {name} is given twice", "give each argument once")
        out[name] = parse_value(name, value)
    return out


def check_args(source: str | bytes, entry: str, mode: str, args: dict[str, Any], complete: bool = True) -> None:
    """``args`` fit ``main``'s signature: known names (or ``**kwargs``), and, when they are
    all a run will get (``complete``), every required one given."""
    if mode != "function":
        return
    tree = imports.parse(source, entry)
    functions = (n for n in (tree.body if tree else []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    main = next((n for n in functions if n.name == "main"), None)
    if main is None:
        return
    a = main.args
    positional = [p.arg for p in a.posonlyargs]
    named = [p.arg for p in (*a.args, *a.kwonlyargs)]
    known = ", ".join(named) or "no arguments"
    for name in args:
        if name in named:
            continue
        if name in positional:
            raise UsageError(f"--arg {name}: main() in {entry} takes {name!r} only by position",
                             f"make it an ordinary parameter: def main({name}, ...)")
        if a.kwarg is not None:
            continue
        tip = did_you_mean(name, named, "--arg {}=...")
        hint = f"{tip} main() takes: {known}" if tip else f"main() takes: {known}"
        raise UsageError(f"--arg {name}: main() in {entry}:{main.lineno} has no parameter {name!r}", hint)
    defaults_from = len(a.posonlyargs) + len(a.args) - len(a.defaults)
    required = [p.arg for i, p in enumerate([*a.posonlyargs, *a.args]) if i < defaults_from]
    required += [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is None]
    missing = [n for n in required if n not in args]
    if missing and complete:
        raise UsageError(f"main() in {entry}:{main.lineno} needs {', '.join(missing)}, which no --arg gives",
                         "pass " + " ".join(f"--arg {n}=..." for n in missing))


# -- the bundle's tree -------------------------------------------------------------------

@dataclass(frozen=True)
class Tree:
    """A bundle's files as the checks see them: their paths and a way to read a source."""

    files: frozenset[str]
    read: Callable[[str], bytes]
    #: Why a path (or a directory above it) is left out, when the folder is known.
    excluded: dict[str, str]

    def why_left_out(self, rel: str) -> str | None:
        rel = rel.rstrip("/")
        if rel in self.excluded:
            return self.excluded[rel]
        parts = rel.split("/")
        for i in range(len(parts), 0, -1):
            key = "/".join(parts[:i]) + "/"
            if key in self.excluded:
                return self.excluded[key] if i == len(parts) else f"{key} {self.excluded[key]}"
        return None


def check_imports(tree: Tree, entry: str, extra: tuple[str, ...] = ()) -> None:
    """Every import of a local module, in the entry and the local modules it reaches, resolves in the bundle."""
    index = imports.ModuleIndex(tree.files)
    todo = [entry, *extra]
    seen: set[str] = set()
    defined: dict[str, set[str] | None] = {}
    while todo:
        rel = todo.pop()
        if rel in seen or rel not in tree.files:
            continue
        seen.add(rel)
        module = imports.parse(tree.read(rel), rel)
        if module is None:
            continue
        for ref in imports.scan(module, rel):
            if not index.is_local(ref.top) and not _left_out_module(tree, ref.top):
                continue
            target, problem = index.resolve(ref.module)
            if problem is None and target is not None:
                todo.append(target)
            if problem is not None:
                if ref.optional:
                    continue
                raise _import_error(tree, ref, ref.module, problem)
            for name in ref.names:
                sub, sub_problem = index.resolve(f"{ref.module}.{name}")
                if sub_problem is None:
                    if sub is not None:
                        todo.append(sub)
                    continue
                if target is None:
                    if ref.optional:
                        continue
                    raise _import_error(tree, ref, f"{ref.module}.{name}", sub_problem)
                if target not in defined:
                    parsed = imports.parse(tree.read(target), target)
                    defined[target] = imports.defined_names(parsed) if parsed else None
                names = defined[target]
                if names is None or name in names or ref.optional:
                    continue
                base = ref.module.replace(".", "/")
                raise _import_error(tree, ref, f"{ref.module}.{name}",
                                    f"the bundle has no {base}/{name}.py and {target} defines no {name}")


def _left_out_module(tree: Tree, top: str) -> bool:
    return tree.why_left_out(f"{top}.py") is not None or tree.why_left_out(f"{top}/") is not None


def _import_error(tree: Tree, ref: imports.ImportRef, what: str, problem: str) -> BundleError:
    parts = what.split(".")
    for i in range(1, len(parts) + 1):  # the outermost package or module left out is what to bring
        path = "/".join(parts[:i])
        for candidate in (f"{path}/", f"{path}.py"):
            reason = tree.excluded.get(candidate)
            if reason:
                return BundleError(
                    f"{ref.where} imports {what}, which is left out of the bundle: {candidate} {reason}",
                    f"bring it along with --include {candidate.rstrip('/')}, or change the rule that leaves it out",
                )
    return BundleError(f"{ref.where} imports {what}, but {problem}",
                       "fix the import, or add the missing module to the workflow's folder")


# -- string literals naming paths --------------------------------------------------------

def literal_paths(tree: Tree, root: Path, sources: Iterable[str], only_imports: bool = False) -> list[str]:
    """Warnings for string literals naming an existing path (relative to the driver's working
    directory, the bundle's root) that does not travel."""
    warnings: list[str] = []
    seen: set[str] = set()
    for rel in sources:
        module = imports.parse(tree.read(rel), rel)
        if module is None:
            continue
        constants = [n for n in ast.walk(module) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        for node in sorted(constants, key=lambda n: (n.lineno, n.col_offset)):
            path = _path_like(node.value)
            if path is None or path in seen:
                continue
            text = _left_out_warning(tree, root, path, f"{rel}:{node.lineno}", node.value, only_imports)
            if text:
                seen.add(path)
                warnings.append(text)
    if len(warnings) > MAX_WARNINGS:
        more = len(warnings) - MAX_WARNINGS
        warnings = warnings[:MAX_WARNINGS] + [f"and {more} more paths named in the workflow that do not travel"]
    return warnings


def _path_like(value: str) -> str | None:
    if not value or len(value) > 255 or any(c in value for c in "\n\r\t\0") or "://" in value:
        return None
    if value.startswith(("/", "~", "$")) or value.strip() != value:
        return None
    cut = next((i for i, c in enumerate(value) if c in _GLOB), None)
    if cut is not None:
        value = value[:cut].rsplit("/", 1)[0] if "/" in value[:cut] else ""
    path = os.path.normpath(value) if value else ""
    if path in ("", ".") or path.startswith("-"):
        return None
    return path.replace(os.sep, "/")


def _left_out_warning(tree: Tree, root: Path, path: str, where: str, literal: str, only_imports: bool) -> str | None:
    full = root / path
    try:
        exists = full.exists()
    except OSError:
        return None
    if not exists:
        return None
    if path == ".." or path.startswith("../"):
        return (f"{where} names {literal!r}, which is outside the workflow's folder and does not travel; "
                "move it into the folder, or stage it on the site and use an absolute path there")
    if full.is_dir():
        if any(f.startswith(path + "/") for f in tree.files):
            return None
    elif path in tree.files:
        return None
    reason = tree.why_left_out(path) or tree.why_left_out(path + "/")
    if reason is None:
        reason = "--only-imports ships only the workflow's imports and named paths" if only_imports else "not selected"
    return (f"{where} names {literal!r}, which exists here but is left out of the bundle ({reason}); "
            f"bring it with --include {path}")


# -- entry points ------------------------------------------------------------------------

def check_selection(sel: Any, args: dict[str, Any] | None, manifest_args: dict[str, Any] | None = None,
                    config_path: str | None = None) -> list[str]:
    """All laptop checks of a fresh selection; raises on an error, returns the warnings.

    ``args`` None: no run is being launched (``gcbundle pack``), so arguments
    may still come at submit time; only the names given are checked.
    """
    files = frozenset(sel.files)
    tree = Tree(files, lambda rel: sel.path(rel).read_bytes(), dict(sel.excluded))
    given = {**(manifest_args or {}), **(args or {})}
    check_args(tree.read(sel.entry), sel.entry, sel.mode, given, complete=args is not None)
    check_imports(tree, sel.entry, (config_path,) if config_path else ())
    outside = {rel for rel, _ in sel.sources}
    sources = [sel.entry, *(m for m in sel.modules if m not in outside)]
    return literal_paths(tree, sel.root, sources, sel.only_imports)


def check_archive(path: Path | str, manifest: Manifest, args: dict[str, Any]) -> list[str]:
    """The laptop checks for a bundle made earlier by ``gcbundle pack`` (already verified)."""
    sources = archive_sources(Path(path), manifest)
    tree = Tree(frozenset(f.path for f in manifest.files), lambda rel: sources.get(rel, b""), {})
    check_args(tree.read(manifest.entry), manifest.entry, manifest.mode, {**manifest.args, **args})
    config = manifest.config
    config_module = (config["path"],) if config.get("kind") == "module" and config.get("path") else ()
    check_imports(tree, manifest.entry, config_module)
    return []


def archive_sources(path: Path, manifest: Manifest) -> dict[str, bytes]:
    """The Python sources of a verified bundle, read in one pass over the archive."""
    wanted = {f.path for f in manifest.files if f.path.endswith(".py")}
    return archive.read_sources(path, wanted, MAX_SOURCE_BYTES)
