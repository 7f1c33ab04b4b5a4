"""Which files a workflow needs, found without running it.

The working-directory model: a workflow file brings its whole folder (what
sits beside it, as data read by relative path must), plus the local modules
it imports from outside that folder (found where ``python path/workflow.py``
would find them: on ``PYTHONPATH``), the paths it declares in a module-level
``GCBUNDLE_INCLUDE`` list, and the ``--include`` paths. ``only_imports``
ships the file, its local imports and those paths alone. A workflow directory
is the folder itself.

What the ignore rules leave out (``bundle.ignore``) is reported with its
reason; a folder whose selection grows over the size guard is refused while
it is walked, before anything is hashed or packed.
"""
from __future__ import annotations

import ast
import os
import stat
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle import ignore, imports
from bundle.errors import BundleError, UsageError
from bundle.ignore import IGNORE_FILE
from bundle.output import OnProgress
from bundle.output import size as _size

#: Default size guard: every run unpacks its own copy of the bundle in the
#: login node's $GCBUNDLE_HOME, under home or project quotas of tens of GiB and
#: limited file counts; a workflow folder past these is rarely all code.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_FILES = 5_000
#: Once over the guard, how long the walk goes on counting (to name the largest entries right).
OVER_COUNTING_SECONDS = 2.0
ENV_MAX_BYTES = "GCBUNDLE_MAX_FOLDER_BYTES"
ENV_MAX_FILES = "GCBUNDLE_MAX_FOLDER_FILES"

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str | int, what: str = "size") -> int:
    """``512M``, ``2GiB``, ``1.5g`` or a number of bytes."""
    if isinstance(text, int):
        return text
    raw = str(text).strip().lower().replace(" ", "").replace("_", "").replace(",", "")
    num = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise UsageError(f"{what} {text!r} is not a size", "write e.g. 512M, 2G or a number of bytes")
    return int(value * _UNITS[unit])


@dataclass(frozen=True)
class Limits:
    """The size guard: most bytes and files a workflow folder may bring."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES

    @classmethod
    def resolve(cls, max_bytes: str | int | None = None, max_files: str | int | None = None) -> Limits:
        """Flags first, then the environment, then the defaults."""
        b = max_bytes if max_bytes is not None else os.environ.get(ENV_MAX_BYTES) or DEFAULT_MAX_BYTES
        f = max_files if max_files is not None else os.environ.get(ENV_MAX_FILES) or DEFAULT_MAX_FILES
        try:
            files = int(str(f).replace(",", "").replace("_", ""))
        except ValueError:
            raise UsageError(f"most files {f!r} is not a whole number",
                             f"give --max-files (or {ENV_MAX_FILES}) as e.g. 20000") from None
        return cls(parse_size(b, "most bytes"), files)


@dataclass(frozen=True)
class Selection:
    """The files to pack, as bundle paths, and what was left out and why."""

    root: Path
    entry: str
    mode: str
    files: tuple[str, ...]
    excluded: tuple[tuple[str, str], ...]
    #: Files from outside ``root`` (local modules found on PYTHONPATH): bundle path -> file.
    sources: tuple[tuple[str, str], ...] = ()
    total_bytes: int = 0
    only_imports: bool = False
    #: Directories searched for local modules, in Python's order (``root`` first).
    import_roots: tuple[str, ...] = field(default=())
    #: Bundle paths of the local modules the entry imports, directly or not.
    modules: tuple[str, ...] = ()

    def path(self, rel: str) -> Path:
        """Where the file that travels as ``rel`` is on this machine."""
        if self.sources:
            for bundled, source in self.sources:
                if bundled == rel:
                    return Path(source)
        return self.root / rel

    def summary(self) -> list[str]:
        """What was included and what was left out, a few lines (a big ignored folder is one)."""
        n = len(self.files)
        lines = [f"included {n:,} file{'s' if n != 1 else ''}, {_size(self.total_bytes)}"
                 + (f" ({len(self.sources)} from outside the folder)" if self.sources else "")]
        return lines + describe_excluded(self.excluded)


def describe_excluded(excluded: tuple[tuple[str, str], ...] | list[tuple[str, str]], shown: int = 3) -> list[str]:
    """One line per reason: its entries (directories count as one), the first few named."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, reason in excluded:
        by_reason[reason].append(path)
    lines = []
    for reason, paths in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        names = ", ".join(paths[:shown]) + (f" and {len(paths) - shown:,} more" if len(paths) > shown else "")
        lines.append(f"left out {names}: {reason}")
    return lines


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
           extra_files: tuple[Path, ...] = (), mode: str | None = None, *, only_imports: bool = False,
           limits: Limits | None = None, progress: OnProgress | None = None,
           leave_out: tuple[Path, ...] = ()) -> Selection:
    """Choose the files of a workflow file or directory.

    ``extra_files`` are absolute paths that must come along (a ``--config``
    module); they must lie under the root like every include. ``leave_out``
    are files never to pack (the archive being written, when it is inside
    the folder).
    """
    workflow = Path(workflow)
    if not workflow.exists():
        raise BundleError(f"workflow {str(workflow)!r} does not exist",
                          "give the path of a .py file or of a workflow directory")
    workflow = workflow.resolve()
    if workflow.is_dir():
        root = workflow
        entry = entry or _default_entry(root)
    else:
        if workflow.suffix != ".py":
            raise BundleError(f"workflow {workflow.name!r} is not a .py file",
                              "give the workflow's Python file, or its directory")
        root = workflow.parent
        if entry and entry != workflow.name:
            raise BundleError("--entry is only for workflow directories", "give the entry file itself as the workflow")
        entry = workflow.name
    if mode not in (None, "auto", "function", "script"):
        raise BundleError(f"unknown mode {mode!r}", "use function, script or auto")
    entry_path = root / entry
    if not entry_path.is_file():
        raise BundleError(f"entry point {entry!r} is not a file in {str(root)!r}",
                          "pass --entry with the workflow's main file")
    source = _read_source(entry_path)
    detected = detect_mode(source, entry)
    if mode == "function" and detected != "function":
        raise BundleError(f"{entry} defines no main(), so it cannot run in function mode",
                          "define main(**args) in it, or submit it as a script (--mode script)")
    mode = detected if mode in (None, "auto") else mode

    walker = _Walker(root, limits or Limits.resolve(), progress, leave_out)
    if not only_imports:
        walker.walk(root)
    walker.add_explicit(entry_path)
    for item in (*_declared_includes(source, entry), *includes):
        walker.add_include(item)
    roots = import_roots(root)
    modules = local_modules(roots, entry_path, entry)
    for rel, path in modules:
        walker.add_found(rel, path)
    for path in extra_files:
        walker.add_explicit(Path(path).resolve())
    if entry not in walker.files:
        raise BundleError(f"entry point {entry!r} is excluded by {IGNORE_FILE} or the default excludes",
                          f"remove it from {IGNORE_FILE}")
    walker.done()
    return Selection(
        root=root, entry=entry, mode=mode, files=tuple(sorted(walker.files)),
        excluded=tuple(sorted(walker.excluded.items())),
        sources=tuple(sorted((rel, str(p)) for rel, p in walker.outside.items())),
        total_bytes=sum(walker.files.values()), only_imports=only_imports,
        import_roots=tuple(str(r) for r in roots),
        modules=tuple(sorted({walker.rel_of(rel, path) for rel, path in modules} & set(walker.files))),
    )


def _default_entry(root: Path) -> str:
    for name in ("workflow.py", "main.py"):
        if (root / name).is_file():
            return name
    raise BundleError(f"no workflow.py or main.py in {str(root)!r}", "pass --entry with the workflow's main file")


def _parse(source: str, filename: str) -> ast.Module:
    try:
        return ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise BundleError(f"{filename}:{exc.lineno}: syntax error: {exc.msg}",
                          "fix the workflow before packing it") from None


def _read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{path.name} is not UTF-8 text", "save the workflow as UTF-8") from None


def _declared_includes(source: str, filename: str) -> list[str]:
    """Paths from a module-level ``GCBUNDLE_INCLUDE = [...]`` of string literals."""
    for node in _parse(source, filename).body:
        if not isinstance(node, ast.Assign):
            continue
        if any(isinstance(t, ast.Name) and t.id == "GCBUNDLE_INCLUDE" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise BundleError(f"{filename}: GCBUNDLE_INCLUDE must be a literal list of strings") from None
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise BundleError(f"{filename}: GCBUNDLE_INCLUDE must be a literal list of strings")
            return list(value)
    return []


# -- local modules ---------------------------------------------------------------------

def import_roots(folder: Path) -> list[Path]:
    """Where ``python folder/workflow.py`` finds modules that are not installed: the
    folder, then the ``PYTHONPATH`` entries outside any Python installation."""
    roots = [folder]
    installed = {Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}}
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if not entry:
            continue
        p = Path(entry).expanduser().resolve()
        if not p.is_dir() or p in roots or "site-packages" in p.parts or "dist-packages" in p.parts:
            continue
        if any(p == i or i in p.parents for i in installed):
            continue
        roots.append(p)
    return roots


def module_files(roots: list[Path], dotted: str) -> tuple[Path, list[Path]] | None:
    """The root that provides ``dotted`` (the first one holding its top-level name, as
    Python searches) and the files that importing it executes (packages' ``__init__`` too)."""
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        return None
    for root in roots:
        top = root / parts[0]
        if not (top.is_dir() or top.with_suffix(".py").is_file()):
            continue
        files: list[Path] = []
        for i in range(1, len(parts) + 1):
            base = root.joinpath(*parts[:i])
            if base.is_dir():
                if (base / "__init__.py").is_file():
                    files.append(base / "__init__.py")
                continue  # a package, or a namespace package's portion
            if base.with_suffix(".py").is_file():
                files.append(base.with_suffix(".py"))
            break  # a module; what follows are names inside it
        return root, files
    return None


def local_modules(roots: list[Path], entry: Path, entry_rel: str) -> list[tuple[str, Path]]:
    """(bundle path, file) of every local module ``entry`` imports, directly or through
    each other; a module from another root travels at its path relative to that root."""
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    todo: list[tuple[str, Path]] = [(entry_rel, entry)]
    while todo:
        rel, current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current != entry:
            found.append((rel, current))
        try:
            tree = imports.parse(current.read_bytes(), str(current))
        except OSError:
            continue
        if tree is None:
            continue  # not ours to judge; Python will say it on the login node
        for ref in imports.scan(tree, rel):
            for name in (ref.module, *(f"{ref.module}.{n}" for n in ref.names)):
                hit = module_files(roots, name)
                if hit is None:
                    continue
                root, files = hit
                todo.extend((f.relative_to(root).as_posix(), f) for f in files)
    return found


# -- the walk --------------------------------------------------------------------------

#: A directory still to walk: where it is, its path in the bundle, and whether a
#: .gcbundleignore negation brought it back whole (git's rules then do not apply).
_Subdir = tuple[Path | str, str, bool]

class _Walker:
    """Accumulates the files of one root, their sizes, and the reasons for what is left out."""

    def __init__(self, root: Path, limits: Limits, progress: OnProgress | None, leave_out: tuple[Path, ...]) -> None:
        self.root = root
        self.limits = limits
        self.progress = progress
        self.leave_out = {str(Path(p).resolve()) for p in leave_out}
        self.rules = ignore.Rules(root)
        self.files: dict[str, int] = {}
        self.outside: dict[str, Path] = {}
        self.excluded: dict[str, str] = {}
        self.by_top: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.total = 0
        self.over: float | None = None
        self._shown = 0.0

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            raise BundleError(
                f"{str(path)!r} is outside the workflow directory {str(self.root)!r}",
                "move it under the workflow directory, or pack the parent directory",
            ) from None

    # -- adding one file -------------------------------------------------------------
    def _check_file(self, path: str | Path, rel: str) -> int | None:
        """The file's size when it can travel (a regular file, or a link to one inside the root), else None."""
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
                return None
            if not target.is_file():
                self.excluded[rel] = "symlink to something other than a file"
                return None
            st = target.stat()
        elif not stat.S_ISREG(st.st_mode):
            self.excluded[rel] = "not a regular file"
            return None
        if not os.access(path, os.R_OK):
            raise BundleError(f"cannot read {rel!r}: permission denied",
                              f"make it readable or leave it out with {IGNORE_FILE}")
        return st.st_size

    def _keep(self, rel: str, size: int, source: Path | None = None) -> None:
        self.excluded.pop(rel, None)
        if rel in self.files:
            if source is not None and self.outside.get(rel, source) != source:
                raise BundleError(f"two files would travel as {rel!r}: {self.outside[rel]} and {source}",
                                  "rename one of the modules, or drop one directory from PYTHONPATH")
            return
        if source is not None:
            self.outside[rel] = source
        self.files[rel] = size
        self.total += size
        top = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
        counts = self.by_top[top]
        counts[0] += size
        counts[1] += 1
        if self.over is None and (self.total > self.limits.max_bytes or len(self.files) > self.limits.max_files):
            # Over the guard: nothing will be hashed or packed. Keep counting for a
            # moment only, so that the largest entries can be named with their sizes.
            self.over = time.monotonic() + OVER_COUNTING_SECONDS

    def check_guard(self, finished: bool) -> None:
        """Raise once over the guard: when the walk is done, or when counting took long enough."""
        if self.over is not None and (finished or time.monotonic() > self.over):
            raise self._too_big(finished)

    def _too_big(self, finished: bool) -> BundleError:
        largest = sorted(self.by_top.items(), key=lambda kv: -kv[1][0])[:5]

        def described(name: str, nbytes: int, nfiles: int) -> str:
            count = f" ({nfiles:,} file{'s' if nfiles != 1 else ''})" if name.endswith("/") else ""
            return f"{name} {_size(nbytes)}{count}"

        listing = ", ".join(described(name, b, n) for name, (b, n) in largest)
        biggest = largest[0][0] if largest else "data/"
        counted = "it would bring" if finished else "it would bring at least"
        return BundleError(
            f"the workflow folder {str(self.root)!r} has more to bundle than the size guard allows "
            f"({_size(self.limits.max_bytes)}, {self.limits.max_files:,} files; {counted} {len(self.files):,} files, "
            f"{_size(self.total)}); largest: {listing}",
            f"leave such entries out with a line like `{biggest}` in {IGNORE_FILE}, "
            "put the workflow in a folder of its own, "
            f"ship only what it imports with --only-imports, or raise the guard (--max-size/--max-files, "
            f"{ENV_MAX_BYTES}/{ENV_MAX_FILES})",
        )

    def _reason(self, rel: str, name: str, *, secrets: bool, bundle_ignore: bool, gitignore: bool,
                chain: list[tuple[int, Any]] | None = None, link: bool = True) -> str | None:
        """Why a file is left out, or None; ``link`` False when the walk's listing already
        says it is not a symlink (no need to look at a target)."""
        if ignore.is_never(name):
            return ignore.NEVER_REASON
        if secrets and (
            ignore.is_secret(name)
            or ignore.in_secret_dir(rel)
            or (link and ignore.secret_target(self.root / rel))
        ):
            return ignore.SECRET_REASON
        verdict = self.rules.bundle_verdict(rel) if bundle_ignore else None
        if verdict is True:
            return self.rules.bundle_reason(rel)
        if verdict is None and gitignore:
            if chain is not None:  # met by the walk: no folder above excludes it
                ignored = self.rules.git_ignores_in_walk(rel, chain)
            else:
                ignored = self.rules.git_ignores(rel)
            if ignored:
                return self.rules.git_reason(rel)
        return None

    def add_explicit(self, path: Path) -> None:
        """Named one by one (the entry, --include and GCBUNDLE_INCLUDE files, a --config
        module): no ignore rule or secret check applies, only "never bundled"."""
        rel = self._rel(path)
        if str(Path(path).resolve()) in self.leave_out:
            return
        size = self._check_file(path, rel)
        if size is None:
            return
        reason = self._reason(rel, rel.rsplit("/", 1)[-1], secrets=False, bundle_ignore=False, gitignore=False)
        if reason:
            self.excluded[rel] = reason
            return
        self._keep(rel, size)

    def rel_of(self, rel: str, path: Path) -> str:
        """The bundle path of a found module: under the root, its path there."""
        return self._rel(path) if path.is_relative_to(self.root) else rel

    def add_found(self, rel: str, path: Path) -> None:
        """A local module the workflow imports: it comes along even if .gitignore leaves it
        out (generated modules often are), but not past .gcbundleignore or the secret list."""
        inside = path.is_relative_to(self.root)
        if inside:
            rel = self._rel(path)
        size = self._check_file(path, rel) if inside else path.stat().st_size
        if size is None:
            return
        reason = self._reason(rel, path.name, secrets=True, bundle_ignore=inside, gitignore=False)
        if reason:
            self.excluded[rel] = reason
            return
        self._keep(rel, size, None if inside else path)

    def add_include(self, item: str) -> None:
        path = (self.root / item).absolute()
        rel = self._rel(Path(os.path.normpath(path)))
        path = self.root / rel if rel != "." else self.root
        if path.is_dir() and not path.is_symlink():
            self.walk(path, named=True)
        elif path.exists() or path.is_symlink():
            self.add_explicit(path)
        else:
            raise BundleError(f"include {item!r} does not exist under {str(self.root)!r}",
                              "check the path given to --include or GCBUNDLE_INCLUDE")

    def walk(self, top: Path, named: bool = False) -> None:
        """Every file under ``top`` that the rules let through. A directory given with
        --include (``named``) is not subject to the ignore files, only to the default
        excludes and the secret list.

        One ``scandir`` per directory: whether an entry is a directory or a link
        comes from the listing, and a directory is recognised as a virtualenv,
        conda environment or results package from its own listing, so the walk
        costs about one ``lstat`` per file, as ``tar`` does."""
        todo: list[_Subdir] = [(top, "" if top == self.root else self._rel(top), named)]
        while todo:
            path, prefix, brought_back = todo.pop()
            subdirs = self._walk_dir(path, prefix, named, brought_back)
            todo.extend(reversed(subdirs))

    def _walk_dir(self, path: Path | str, prefix: str, named: bool, brought_back: bool) -> list[_Subdir]:
        """One directory's files; returns the subdirectories to walk."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise BundleError(f"cannot read {prefix or '.'!r}: {exc.strerror}") from None
        names = {e.name for e in entries}
        if prefix:
            why = ignore.excluded_listing_reason(names)
            if why:
                self.excluded[prefix + "/"] = why
                return []
        chain = None if named or brought_back else self.rules.chain(prefix)
        subdirs: list[_Subdir] = []
        for e in entries:
            rel = f"{prefix}/{e.name}" if prefix else e.name
            if e.is_dir(follow_symlinks=False):
                why = ignore.excluded_dir_reason(e.name)
                if why is None and e.name.casefold() in ignore.SECRET_DIRS:
                    why = ignore.SECRET_REASON
                back = brought_back
                if why is None and not named:
                    if self.rules.bundle_prunes(rel + "/"):
                        why = self.rules.bundle_reason(rel + "/")
                    elif self.rules.bundle_verdict(rel + "/") is False:
                        back = True  # a .gcbundleignore negation brought it back, whole
                    elif not brought_back and self.rules.git_prunes(rel + "/"):
                        why = self.rules.git_reason(rel + "/")
                if why:
                    self.excluded[rel + "/"] = why
                else:
                    subdirs.append((e.path, rel, back))
                continue
            if e.is_symlink() and os.path.isdir(e.path):
                self.excluded[rel + "/"] = "symlinked directory (not followed)"
                continue
            if rel in self.files or e.path in self.leave_out:
                continue
            reason = self._reason(rel, e.name, secrets=True, bundle_ignore=not named,
                                  gitignore=chain is not None, chain=chain, link=e.is_symlink())
            if reason:
                self.excluded[rel] = reason
                continue
            size = self._check_file(e.path, rel)
            if size is not None:
                self._keep(rel, size)
        self._tick()
        self.check_guard(finished=False)
        return subdirs

    def _tick(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._shown >= 0.1:
            self._shown = now
            self.progress("scan", len(self.files), 0)

    def done(self) -> None:
        self.check_guard(finished=True)
        if self.progress is not None and self._shown:
            self.progress("scan", len(self.files), 0)
