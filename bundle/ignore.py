"""The rules that leave files out of a bundle, and the reason each gives.

In the order they are asked:

1. never bundled: compiled Python, ``.DS_Store``, a ``gcbundle.json`` (the
   manifest's own name);
2. default excludes: tool and cache directories, virtualenvs (any directory
   holding ``pyvenv.cfg``), conda environments, Parsl's ``runinfo/`` of local runs, results
   packages fetched by ``gcbundle results``;
3. secrets: credential files of every common kind, unless named one by one;
4. ``.gcbundleignore`` at the workflow's root (gitignore syntax); a negated
   pattern (``!data/``) brings back what ``.gitignore`` leaves out;
5. ``.gitignore`` files at every level, read as git reads them: from the top of
   the git work tree that holds the folder (or from the folder, outside git),
   a deeper file overriding a shallower one, the last matching line winning,
   nothing re-included below an excluded directory.

``.gitignore`` semantics come from dulwich (a maintained, pure-Python Git
implementation whose ``IgnoreFilterManager`` follows git's rules, including
nested files); pathspec, which gcbundle used before, matches one file's
patterns but leaves combining nested files to its caller. Only ``.gitignore``
files are read, not ``.git/info/exclude`` or the user's global excludes, so
the same folder gives the same bundle on every machine.
"""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Callable

from dulwich.ignore import IgnoreFilter, IgnoreFilterManager

from bundle.manifest import MANIFEST_NAME

IGNORE_FILE = ".gcbundleignore"
GITIGNORE = ".gitignore"

#: Directories never walked into (tools, caches, version control).
EXCLUDED_DIRS = {
    ".git", ".hg", ".svn", "__pycache__", ".venv", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", ".hypothesis", ".eggs",
    "node_modules", ".idea", ".vscode", ".cache",
}

#: Parsl's default run directory: logs of runs on this machine, not input.
PARSL_RUNINFO = "runinfo"

#: The marker file of a results package (``gcbundle results``).
RESULTS_MARKER = ".gcbundle-results.json"

#: File names (gitignore syntax, no slash) that hold credentials: left out unless named one by one.
#: Matched case-insensitively (``ID_RSA``, ``.ENV`` and ``Credentials.JSON`` are secrets too).
SECRET_NAMES = [
    ".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.keytab", "id_rsa*", "id_dsa*",
    "id_ecdsa*", "id_ed25519*", ".netrc", "_netrc", ".pgpass", ".pypirc", ".git-credentials", ".npmrc",
    ".vault-token", ".s3cfg", ".boto", ".my.cnf", "storage.db", ".globus*", "credentials.json",
    "application_default_credentials.json", "*service-account*.json", "*service_account*.json",
]

#: Folders that hold credentials as a whole (cloud, cluster, container registry, GnuPG,
#: SSH): everything under them is left out; gcloud's lives in ``.config/gcloud``.
SECRET_DIRS = {".aws", ".kube", ".docker", ".gnupg", ".ssh"}
_SECRET_SUBPATHS = (".config/gcloud",)

#: Other files never bundled.
NEVER_NAMES = ["*.pyc", "*.pyo", ".DS_Store", MANIFEST_NAME]

SECRET_REASON = "looks like a secret (name it with --include to bundle it anyway)"
NEVER_REASON = "never bundled"


def _basename_matcher(globs: list[str], flags: int = 0) -> Callable[[str], bool]:
    """One regex for a list of slash-free globs, matched against a file's name.

    A gitignore pattern without a slash matches a name at any depth, which is
    what a glob on the base name does; one compiled alternation checks every
    walked file in one call instead of one call per pattern.
    """
    assert not any("/" in g or g.startswith("!") for g in globs)
    rx = re.compile("|".join(fnmatch.translate(g) for g in globs), flags)
    return lambda name: rx.match(name) is not None


is_secret = _basename_matcher(SECRET_NAMES, re.IGNORECASE)


def in_secret_dir(rel: str) -> bool:
    """Whether ``rel`` (a POSIX path) lies in a folder of credentials, case-insensitively."""
    folded = "/" + rel.casefold().strip("/") + "/"
    return any(f"/{d}/" in folded for d in SECRET_DIRS) or any(f"/{p}/" in folded for p in _SECRET_SUBPATHS)


def secret_target(path: str | Path) -> bool:
    """A symlink is judged by its target too: ``notes.txt -> ~/.aws/credentials`` is a secret."""
    try:
        if not os.path.islink(path):
            return False
        target = os.path.realpath(path)
    except OSError:
        return False
    return is_secret(os.path.basename(target)) or in_secret_dir(target.replace(os.sep, "/"))


is_never = _basename_matcher(NEVER_NAMES)


def excluded_dir_reason(name: str) -> str | None:
    """Why a directory is never walked into, from its name alone, or None."""
    if name in EXCLUDED_DIRS:
        return "tool or cache directory"
    if name == PARSL_RUNINFO:
        return "Parsl's run directory of local runs"
    return None


def excluded_listing_reason(names: set[str]) -> str | None:
    """Why a directory is left out, from the names it holds, or None."""
    if "pyvenv.cfg" in names:
        return "virtualenv"
    if "conda-meta" in names:
        return "conda environment"
    if RESULTS_MARKER in names:
        return "results package fetched by gcbundle"
    return None


def git_top(start: Path) -> Path | None:
    """The top of the git work tree holding ``start``, if any."""
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d
    return None


class Rules:
    """``.gcbundleignore`` and the ``.gitignore`` files that apply under ``root``.

    Paths are relative to ``root``, with ``/`` separators; directories end in ``/``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        ignore = root / IGNORE_FILE
        self.bundle_ignore: IgnoreFilter | None = IgnoreFilter.from_path(ignore) if ignore.is_file() else None
        top = git_top(root) or root
        self.git_top = top
        self.prefix = "" if top == root else root.relative_to(top).as_posix() + "/"
        self.git = IgnoreFilterManager(str(top), [], False)
        self._files: dict[str, IgnoreFilter | None] = {}
        self._chains: dict[str, list[tuple[int, IgnoreFilter]]] = {}

    # .gcbundleignore -------------------------------------------------------------------
    def bundle_prunes(self, rel_dir: str) -> bool:
        return self.bundle_ignore is not None and self.bundle_ignore.may_prune_directory(rel_dir)

    def bundle_verdict(self, rel: str) -> bool | None:
        """True: left out by .gcbundleignore; False: brought back by a negation; None: not named."""
        if self.bundle_ignore is None:
            return None
        return self.bundle_ignore.is_ignored(rel)

    # .gitignore ------------------------------------------------------------------------
    def git_prunes(self, rel_dir: str) -> bool:
        return self.git.may_prune_directory(self.prefix + rel_dir)

    def git_ignores(self, rel: str) -> bool:
        return self.git.is_ignored(self.prefix + rel) is True

    def git_ignores_in_walk(self, rel: str, chain: list[tuple[int, IgnoreFilter]]) -> bool:
        """``git_ignores`` for a file met by a walk that entered its directory only because
        ``git_prunes`` said no for it and every directory above it.

        Then no directory above excludes it (that is what ``may_prune_directory``
        asks), and git's answer is the last pattern matching the file itself,
        from the deepest .gitignore that has one: dulwich's own rule, asked
        through its public ``IgnoreFilter.patterns`` and ``Pattern.matches``
        instead of re-deciding every parent directory for every file (a walk of
        thousands of files spent most of its time there). A folder with no
        .gitignore on the way costs nothing.
        """
        if not chain:
            return False
        full = self.prefix + rel
        for depth, f in reversed(chain):
            name = full[depth:].encode()
            for pattern in reversed(f.patterns):
                if pattern.matches(name, False):
                    return pattern.is_exclude
        return False

    def chain(self, rel_dir: str) -> list[tuple[int, IgnoreFilter]]:
        """The .gitignore files that apply in ``rel_dir`` (from the git top down), each with the
        length of the path prefix its patterns are relative to (for ``git_ignores_in_walk``)."""
        if rel_dir in self._chains:
            return self._chains[rel_dir]
        full = (self.prefix + rel_dir).rstrip("/")
        if rel_dir:
            above = self.chain(rel_dir.rsplit("/", 1)[0] if "/" in rel_dir else "")
        else:
            above = []
            parts = self.prefix.rstrip("/").split("/") if self.prefix else []
            for i in range(len(parts)):  # the .gitignore files between the git top and the folder
                f = self._gitignore("/".join(parts[:i]))
                if f is not None:
                    where = "/".join(parts[:i])
                    above.append((len(where) + 1 if where else 0, f))
        own = self._gitignore(full)
        chain = above + [(len(full) + 1 if full else 0, own)] if own is not None else above
        self._chains[rel_dir] = chain
        return chain

    def bundle_reason(self, rel: str) -> str:
        assert self.bundle_ignore is not None
        return _reason(IGNORE_FILE, self.bundle_ignore, rel)

    def git_reason(self, rel: str) -> str:
        """Which .gitignore, and which of its lines, leaves ``rel`` out (for the report)."""
        full = self.prefix + rel
        parts = full.rstrip("/").split("/")
        for depth in range(len(parts) - 1, -1, -1):
            where = "/".join(parts[:depth])
            f = self._gitignore(where)
            if f is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if full.endswith("/") else "")
            name = f"{where}/{GITIGNORE}" if where else GITIGNORE
            text = _reason(self._shown(name), f, sub, quiet=True)
            if text:
                return text
        return f"matched {GITIGNORE}"

    def _shown(self, name: str) -> str:
        """A .gitignore's path as the user knows it: relative to the folder when inside it."""
        if self.prefix and name.startswith(self.prefix):
            return name[len(self.prefix):]
        if self.prefix:
            return os.path.relpath(self.git_top / name, self.root)
        return name

    def _gitignore(self, where: str) -> IgnoreFilter | None:
        if where not in self._files:
            path = self.git_top / where / GITIGNORE
            # as git (and dulwich's manager): a symlinked .gitignore is not read
            self._files[where] = IgnoreFilter.from_path(path) if path.is_file() and not path.is_symlink() else None
        return self._files[where]


def _reason(name: str, f: IgnoreFilter, rel: str, quiet: bool = False) -> str:
    last = None
    for pattern in f.find_matching(rel.rstrip("/") if not rel.endswith("/") else rel):
        last = pattern
    if last is None:
        parent = rel.rstrip("/").rsplit("/", 1)[0] + "/" if "/" in rel.rstrip("/") else None
        if parent:
            return _reason(name, f, parent, quiet)
        return "" if quiet else f"matched {name}"
    if not last.is_exclude:
        return "" if quiet else f"matched {name}"
    return f"matched {name} ({last.pattern.decode('utf-8', 'replace')})"
