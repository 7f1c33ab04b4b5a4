"""The client's record of its runs: SQLite under the user's data directory.

One row per run, written as ``launching`` before the launch task goes out
(so a client killed mid-launch leaves a row that ``status`` resolves against
the login node, not a run nobody can reach) and removed again when the login
node refuses the launch; plus which bundles each endpoint is known to have
cached. Runs are found by id or unique id prefix. The registry is only an
index: ``gcbundle list --endpoint E`` adopts the runs a login node holds, so
a lost or damaged registry can be rebuilt from the login nodes.

A locked registry is not a damaged one: SQLite waits ``timeout`` seconds for
another gcbundle process to finish, then says which process holds it.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import contracts
from bundle.errors import RegistryError, RegistryLocked, RunNotFound
from bundle.fileio import folder_problem

#: States after which a run in this client's registry changes no more: the login node's
#: (``bundle.contracts.TERMINAL``) and the registry's own for a run the login node never had or no longer has.
TERMINAL = (*contracts.TERMINAL, "gone", "unlaunched")

_PREFIX = re.compile(r"^[0-9a-f]{1,12}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    endpoint     TEXT NOT NULL,
    digest       TEXT NOT NULL,
    workflow     TEXT NOT NULL,
    site         TEXT,
    state        TEXT NOT NULL,
    submitted    REAL NOT NULL,
    updated      REAL NOT NULL,
    results_path TEXT,
    results_sha  TEXT,
    resumed_from TEXT,
    extra        TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS cached (
    endpoint TEXT NOT NULL,
    digest   TEXT NOT NULL,
    seen     REAL NOT NULL,
    PRIMARY KEY (endpoint, digest)
);
PRAGMA user_version = 1;
"""


def default_path() -> Path:
    override = os.environ.get("GCBUNDLE_REGISTRY")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("gcbundle")) / "registry.sqlite3"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    endpoint: str
    digest: str
    workflow: str
    site: str | None
    state: str
    submitted: float
    updated: float
    results_path: str | None = None
    results_sha: str | None = None
    resumed_from: str | None = None
    extra: str = "{}"

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        out["extra"] = json.loads(self.extra or "{}")
        return out


def _timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("GCBUNDLE_REGISTRY_TIMEOUT", "30")))
    except ValueError:
        return 30.0


def holders(path: Path) -> list[str]:
    """Other processes that have ``path`` open, as "pid N (command line)": who holds a lock.

    Read from ``/proc/*/fd`` (this user's processes only); empty where there
    is no ``/proc``.
    """
    target = os.path.realpath(path)
    out = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return out
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    break
            except OSError:
                continue
        else:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"pid {pid} ({cmd[:80]})")
    return out


_PLACE_FIX = "make it writable, or set GCBUNDLE_REGISTRY to a file in a folder you can write"


def check_place(path: Path) -> None:
    """The registry's folder exists (made if need be) and this user can write there
    (SQLite writes a journal beside the file) and to the file itself."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise RegistryError(f"cannot create the run registry's folder {str(folder)!r}: {folder_problem(folder, exc)}",
                            _PLACE_FIX) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RegistryError(f"the run registry's folder {str(folder)!r} is not writable", _PLACE_FIX)
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise RegistryError(f"the run registry {str(path)!r} is not writable",
                            f"fix its permissions (chmod u+rw {path}), or set GCBUNDLE_REGISTRY")


class Registry:
    def __init__(self, path: Path | None = None, timeout: float | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.timeout = _timeout() if timeout is None else timeout
        check_place(self.path)  # an unwritable folder or file: its own error, before SQLite's
        with self._connect() as db:  # damage and locks: ``_error``
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            db.row_factory = sqlite3.Row
            yield db
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            db.close()

    def _error(self, exc: sqlite3.Error) -> RegistryError:
        """The right advice for the case: a lock is another process at work, anything else is damage."""
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            who = holders(self.path)
            by = ", ".join(who) if who else "another gcbundle process"
            return RegistryLocked(
                f"the run registry {str(self.path)!r} is locked by {by} (waited {self.timeout:g} s)",
                "wait for that command to finish, then run this one again; "
                "the registry is not damaged, leave it where it is",
            )
        # damage: a plain DatabaseError, not IntegrityError & co.
        if type(exc) is sqlite3.DatabaseError or "malformed" in text or "not a database" in text:
            return RegistryError(
                f"the run registry {str(self.path)!r} is damaged: {text}",
                f"move it aside (mv {self.path} {self.path}.damaged), "
                "then `gcbundle list --endpoint ENDPOINT` for each endpoint you use rebuilds it from the login node",
            )
        return RegistryError(f"the run registry {str(self.path)!r} cannot be used: {text}",
                             "check the file and its folder (permissions, free disk)")

    def add(self, rec: RunRecord) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.run_id, rec.endpoint, rec.digest, rec.workflow, rec.site, rec.state, rec.submitted,
                 rec.updated, rec.results_path, rec.results_sha, rec.resumed_from, rec.extra),
            )

    def update(self, run_id: str, **fields: Any) -> None:
        allowed = {"state", "results_path", "results_sha", "extra"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update {set(fields) - allowed}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            sql = f"UPDATE runs SET {cols}, updated = ? WHERE run_id = ?"  # noqa: S608 - columns from the allowlist
            db.execute(sql, (*fields.values(), time.time(), run_id))

    def get(self, prefix: str) -> RunRecord:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise RunNotFound(f"{prefix[:40]!r} is not a run id",
                              "run ids are 12 hex digits; `gcbundle list` shows them (a unique prefix is enough)")
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE run_id LIKE ? ORDER BY submitted", (prefix + "%",)).fetchall()
        if not rows:
            raise RunNotFound(f"no run {prefix!r} in the registry", "`gcbundle list` shows your runs")
        if len(rows) > 1:
            ids = ", ".join(r["run_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise RunNotFound(f"{prefix!r} matches {len(rows)} runs ({ids})", "give more digits of the run id")
        return RunRecord(**dict(rows[0]))

    def remove(self, run_id: str) -> None:
        """Drop a row (a launch the login node refused: no run exists)."""
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def adopt(self, rec: RunRecord) -> bool:
        """Add a run found on a login node unless the registry has it; return whether it was new."""
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.run_id, rec.endpoint, rec.digest, rec.workflow, rec.site, rec.state, rec.submitted,
                 rec.updated, rec.results_path, rec.results_sha, rec.resumed_from, rec.extra),
            )
            return cur.rowcount == 1

    def unfinished(self) -> list[RunRecord]:
        """Rows whose last known state is not an end state (what ``list`` refreshes)."""
        with self._connect() as db:
            ended = ", ".join("?" * len(TERMINAL))
            query = f"SELECT * FROM runs WHERE state NOT IN ({ended}) ORDER BY submitted"
            rows = db.execute(query, TERMINAL).fetchall()
        return [RunRecord(**dict(r)) for r in rows]

    def list(self, limit: int = 50) -> list[RunRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY submitted DESC LIMIT ?",
                              (limit if limit > 0 else -1,)).fetchall()
        return [RunRecord(**dict(r)) for r in rows]

    def mark_cached(self, endpoint: str, digest: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO cached VALUES (?,?,?)", (endpoint, digest, time.time()))

    def is_cached(self, endpoint: str, digest: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM cached WHERE endpoint = ? AND digest = ?", (endpoint, digest)).fetchone()
            return row is not None

    def forget_cached(self, endpoint: str, digest: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM cached WHERE endpoint = ? AND digest = ?", (endpoint, digest))
