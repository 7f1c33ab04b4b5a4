"""Which files a workflow needs, found without running it.

A workflow file brings the local modules it imports (read from its AST,
recursively), the paths it declares in a module-level ``GCBUNDLE_INCLUDE``
list, and the ``--include`` paths. A workflow directory brings everything
under it. Either way ``.gcbundleignore`` (gitignore syntax, read once at the
root) and the default excludes apply, and every file left out is reported
with its reason. Secrets are left out unless named one by one.
"""
from __future__ import annotations

import ast
import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pathspec

from bundle.errors import BundleError
from bundle.manifest import MANIFEST_NAME

IGNORE_FILE = ".gcbundleignore"

#: Directories never walked into.
EXCLUDED_DIRS = {
    ".git", ".hg", ".svn", "__pycache__", ".venv", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", ".hypothesis", ".eggs",
}

#: File names (gitignore syntax) that hold credentials: left out unless named one by one.
_SECRET_NAMES = [
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*",
    "id_ed25519*", ".netrc", "_netrc", ".pgpass", ".pypirc", ".git-credentials",
    "storage.db", ".globus*", "credentials.json",
]
SECRET_PATTERNS = pathspec.GitIgnoreSpec.from_lines(_SECRET_NAMES)

#: Other files never bundled.
_NEVER_NAMES = ["*.pyc", "*.pyo", ".DS_Store", MANIFEST_NAME]
EXCLUDED_FILES = pathspec.GitIgnoreSpec.from_lines(_NEVER_NAMES)


def _basename_matcher(globs: list[str]) -> Callable[[str], bool]:
    """One regex for a list of slash-free gitignore globs, matched against a file's name.

    A gitignore pattern without a slash matches a name at any depth, which is
    what a glob on the base name does; one compiled alternation checks every
    walked file in one call instead of one call per pattern (a re-pack walks
    thousands of files, and this was a third of its time).
    """
    assert not any("/" in g or g.startswith("!") for g in globs)
    rx = re.compile("|".join(fnmatch.translate(g) for g in globs))
    return lambda name: rx.match(name) is not None


_is_secret = _basename_matcher(_SECRET_NAMES)
_is_never = _basename_matcher(_NEVER_NAMES)


@dataclass(frozen=True)
class Selection:
    """The files to pack, relative to ``root``, and what was left out."""

    root: Path
    entry: str
    mode: str
    files: tuple[str, ...]
    excluded: tuple[tuple[str, str], ...]


def detect_mode(source: str, filename: str) -> str:
    """``function`` when the module defines a top-level ``main``, else ``script``."""
    tree = _parse(source, filename)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main":
            return "function"
    return "script"


def config_source(source: str, filename: str) -> str | None:
    """What of a module the driver takes its Config from: ``make_config`` (a
    top-level function, or one imported by that name), ``config``, or None, in
    which case a function-mode run without ``--site``/``--config`` gets the
    ``local`` profile."""
    names: set[str] = set()
    for node in _parse(source, filename).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    for name in ("make_config", "config"):
        if name in names:
            return name
    return None


def select(workflow: Path, includes: tuple[str, ...] = (), entry: str | None = None,
           extra_files: tuple[Path, ...] = (), mode: str | None = None) -> Selection:
    """Choose the files of a workflow file or directory.

    ``extra_files`` are absolute paths that must come along (a ``--config``
    module); they must lie under the root like every include.
    """
    workflow = Path(workflow)
    if not workflow.exists():
        raise BundleError(f"workflow {str(workflow)!r} does not exist", "give the path of a .py file or of a workflow directory")
    workflow = workflow.resolve()
    if workflow.is_dir():
        root = workflow
        entry = entry or _default_entry(root)
    else:
        if workflow.suffix != ".py":
            raise BundleError(f"workflow {workflow.name!r} is not a .py file", "give the workflow's Python file, or its directory")
        root = workflow.parent
        if entry and entry != workflow.name:
            raise BundleError("--entry is only for workflow directories", "give the entry file itself as the workflow")
        entry = workflow.name
    walker = _Walker(root)
    entry_path = root / entry
    if not entry_path.is_file():
        raise BundleError(f"entry point {entry!r} is not a file in {str(root)!r}", "pass --entry with the workflow's main file")
    source = _read_source(entry_path)
    detected = detect_mode(source, entry)
    if mode == "function" and detected != "function":
        raise BundleError(f"{entry} defines no main(), so it cannot run in function mode", "define main(**args) in it, or submit it as a script (--mode script)")
    if mode not in (None, "auto", "function", "script"):
        raise BundleError(f"unknown mode {mode!r}", "use function, script or auto")
    mode = detected if mode in (None, "auto") else mode

    if workflow.is_dir():
        walker.walk(root)
    else:
        walker.add_explicit(entry_path)
        declared = _declared_includes(source, entry)
        for item in (*declared, *includes):
            walker.add_include(item)
        for module in _local_imports(root, entry_path):
            walker.add_found(module)
    for item in includes if workflow.is_dir() else ():
        walker.add_include(item)
    for path in extra_files:
        walker.add_explicit(Path(path).resolve())
    files = tuple(sorted(walker.files))
    if entry not in walker.files:
        raise BundleError(f"entry point {entry!r} is excluded by {IGNORE_FILE} or the default excludes", f"remove it from {IGNORE_FILE}")
    return Selection(root=root, entry=entry, mode=mode, files=files, excluded=tuple(sorted(walker.excluded.items())))


def _default_entry(root: Path) -> str:
    for name in ("workflow.py", "main.py"):
        if (root / name).is_file():
            return name
    raise BundleError(f"no workflow.py or main.py in {str(root)!r}", "pass --entry with the workflow's main file")


def _parse(source: str, filename: str) -> ast.Module:
    try:
        return ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise BundleError(f"{filename}:{exc.lineno}: syntax error: {exc.msg}", "fix the workflow before packing it") from None


def _read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{path.name} is not UTF-8 text", "save the workflow as UTF-8") from None


def _declared_includes(source: str, filename: str) -> list[str]:
    """Paths from a module-level ``GCBUNDLE_INCLUDE = [...]`` of string literals."""
    for node in _parse(source, filename).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GCBUNDLE_INCLUDE" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise BundleError(f"{filename}: GCBUNDLE_INCLUDE must be a literal list of strings") from None
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise BundleError(f"{filename}: GCBUNDLE_INCLUDE must be a literal list of strings")
            return list(value)
    return []


def _local_imports(root: Path, entry: Path) -> list[Path]:
    """Files under ``root`` that ``entry`` imports, directly or through each other."""
    found: list[Path] = []
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current != entry:
            found.append(current)
        try:
            tree = ast.parse(current.read_text(encoding="utf-8"), filename=str(current))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue  # not ours to judge; Python will say it on the login node
        package = _package_of(root, current)
        for node in ast.walk(tree):
            for name in _imported_names(node, package):
                todo.extend(_module_files(root, name))
    return found


def _package_of(root: Path, path: Path) -> list[str]:
    rel = path.relative_to(root).with_suffix("").parts
    return list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])


def _imported_names(node: ast.AST, package: list[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
        else:
            base = []
        module = [*base, *(node.module.split(".") if node.module else [])]
        names = [".".join(module)] if module else []
        names += [".".join([*module, alias.name]) for alias in node.names if alias.name != "*"]
        return names
    return []


def _module_files(root: Path, dotted: str) -> list[Path]:
    """The files under ``root`` that importing ``dotted`` executes (packages' __init__ too)."""
    parts = [p for p in dotted.split(".") if p]
    files: list[Path] = []
    for i in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:i])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file() and i == len(parts):
            files.append(base.with_suffix(".py"))
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
            break
        elif not base.is_dir():
            break
    return files


class _Walker:
    """Accumulates files and exclusion reasons under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: set[str] = set()
        self.excluded: dict[str, str] = {}
        ignore = root / IGNORE_FILE
        lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
        self.ignore = pathspec.GitIgnoreSpec.from_lines(lines)
        self.has_ignore = any(line.strip() and not line.lstrip().startswith("#") for line in lines)

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            raise BundleError(
                f"{str(path)!r} is outside the workflow directory {str(self.root)!r}",
                "move it under the workflow directory, or pack the parent directory",
            ) from None

    def _reason(self, rel: str, explicit: bool) -> str | None:
        name = rel.rsplit("/", 1)[-1]
        if _is_never(name):
            return "never bundled"
        if not explicit and _is_secret(name):
            return "looks like a secret (name it with --include to bundle it anyway)"
        if not explicit and self.has_ignore and self.ignore.match_file(rel):
            return f"matched {IGNORE_FILE}"
        return None

    def _consider(self, path: Path | str, explicit: bool, rel: str | None = None) -> None:
        """``rel`` may be given when the caller knows it (the walk), to spare a path computation per file."""
        rel = rel if rel is not None else self._rel(Path(path))
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise BundleError(f"cannot read {rel!r}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            target = Path(path).resolve()
            try:
                target.relative_to(self.root)
            except ValueError:
                self.excluded[rel] = "symlink pointing outside the workflow directory"
                return
            if not target.is_file():
                self.excluded[rel] = "symlink to something other than a file"
                return
        elif not stat.S_ISREG(st.st_mode):
            self.excluded[rel] = "not a regular file"
            return
        reason = self._reason(rel, explicit)
        if reason:
            self.excluded[rel] = reason
            return
        if not os.access(path, os.R_OK):
            raise BundleError(f"cannot read {rel!r}: permission denied", "make it readable or leave it out with .gcbundleignore")
        self.files.add(rel)
        self.excluded.pop(rel, None)

    def add_explicit(self, path: Path) -> None:
        self._consider(path, explicit=True)

    def add_found(self, path: Path) -> None:
        self._consider(path, explicit=False)

    def add_include(self, item: str) -> None:
        path = (self.root / item).absolute()
        rel = self._rel(Path(os.path.normpath(path)))
        path = self.root / rel if rel != "." else self.root
        if path.is_dir() and not path.is_symlink():
            self.walk(path)
        elif path.exists() or path.is_symlink():
            self._consider(path, explicit=True)
        else:
            raise BundleError(f"include {item!r} does not exist under {str(self.root)!r}", "check the path given to --include or GCBUNDLE_INCLUDE")

    def walk(self, top: Path) -> None:
        base = str(self.root).rstrip(os.sep)
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            prefix = dirpath[len(base):].lstrip(os.sep).replace(os.sep, "/")
            keep = []
            for d in sorted(dirnames):
                full = here / d
                rel = self._rel(full)
                if d in EXCLUDED_DIRS or (full / "pyvenv.cfg").exists():
                    self.excluded[rel + "/"] = "tool or virtualenv directory"
                elif full.is_symlink():
                    self.excluded[rel + "/"] = "symlinked directory (not followed)"
                elif self.ignore.match_file(rel + "/"):
                    self.excluded[rel + "/"] = f"matched {IGNORE_FILE}"
                else:
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                self._consider(os.path.join(dirpath, name), explicit=False, rel=f"{prefix}/{name}" if prefix else name)
