"""The client's record of its runs: SQLite under the user's data directory.

One row per run that the login node accepted (a row is written only after the
launch task answered, so a failed submit leaves none), plus which bundles each
endpoint is known to have cached. Runs are found by id or unique id prefix.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bundle.errors import RegistryError, RunNotFound
from bundle.fileio import folder_problem

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


_PLACE_FIX = "make it writable, or set GCBUNDLE_REGISTRY to a file in a folder you can write"


def check_place(path: Path) -> None:
    """The registry's folder exists (made if need be) and this user can write there
    (SQLite writes a journal beside the file) and to the file itself."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise RegistryError(f"cannot create the run registry's folder {str(folder)!r}: {folder_problem(folder, exc)}", _PLACE_FIX) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RegistryError(f"the run registry's folder {str(folder)!r} is not writable", _PLACE_FIX)
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise RegistryError(f"the run registry {str(path)!r} is not writable", f"fix its permissions (chmod u+rw {path}), or set GCBUNDLE_REGISTRY")


class Registry:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_path()
        check_place(self.path)
        try:
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"the run registry {str(self.path)!r} is unreadable: {exc}", "move it aside; gcbundle starts a new one") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

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
            db.execute(f"UPDATE runs SET {cols}, updated = ? WHERE run_id = ?", (*fields.values(), time.time(), run_id))  # noqa: S608 - column names from the allowlist

    def get(self, prefix: str) -> RunRecord:
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise RunNotFound(f"{prefix[:40]!r} is not a run id", "run ids are 12 hex digits; `gcbundle list` shows them (a unique prefix is enough)")
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE run_id LIKE ? ORDER BY submitted", (prefix + "%",)).fetchall()
        if not rows:
            raise RunNotFound(f"no run {prefix!r} in the registry", "`gcbundle list` shows your runs")
        if len(rows) > 1:
            ids = ", ".join(r["run_id"] for r in rows[:5])
            raise RunNotFound(f"{prefix!r} matches {len(rows)} runs ({ids}{', ...' if len(rows) > 5 else ''})", "give more digits of the run id")
        return RunRecord(**dict(rows[0]))

    def list(self, limit: int = 50) -> list[RunRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY submitted DESC LIMIT ?", (limit,)).fetchall()
        return [RunRecord(**dict(r)) for r in rows]

    def mark_cached(self, endpoint: str, digest: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO cached VALUES (?,?,?)", (endpoint, digest, time.time()))

    def is_cached(self, endpoint: str, digest: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM cached WHERE endpoint = ? AND digest = ?", (endpoint, digest)).fetchone() is not None

    def forget_cached(self, endpoint: str, digest: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM cached WHERE endpoint = ? AND digest = ?", (endpoint, digest))
