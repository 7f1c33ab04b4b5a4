"""``gcbundle.json``: what a bundle holds and how to run it.

The manifest is the wire contract between the client and the login node. It is
validated strictly where it enters (``Manifest.from_json``) and trusted inside.
The digest that names a bundle everywhere (cache key, run record) is a sha256
over the canonical file list and the manifest's semantic fields; the creation
time and the client's versions are informative and not part of it.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.errors import ManifestError
from bundle.limits import MAX_MEMBERS, MAX_PATH_BYTES

FORMAT_VERSION = 1
MANIFEST_NAME = "gcbundle.json"
MODES = ("function", "script")
CONFIG_KINDS = ("site", "module", "workflow")
FILE_MODES = (0o644, 0o755)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RESERVED = {MANIFEST_NAME}
#: NUL, other control characters, backslash: one regex, as every packed path passes here.
_BAD_CHARS = re.compile(r"[\x00-\x1f\\]")
#: What to do about a manifest that breaks the rules: gcbundle's own packer writes none.
_REBUILD = "rebuild the bundle with `gcbundle pack`"


def hash_file(path: Path | str, chunk: int = 1024 * 1024) -> tuple[str, int]:
    """The sha256 (hex) and size of a file, as manifests and results listings record them."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def sha256_file(path: Path | str) -> str:
    return hash_file(path)[0]


def listing_sha256(listing: list[dict[str, Any]]) -> str:
    """The identity of a results listing (path, size, sha256 of every file), the same on both sides."""
    canonical = json.dumps(listing, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_path(path: Any, what: str = "path") -> str:
    """Return ``path`` if it is a safe, canonical, relative POSIX path; raise otherwise.

    Canonical means: no empty, ``.`` or ``..`` parts, no backslashes or NUL, no
    leading slash, NFC-normalised Unicode. Every name that reaches the file
    system on the login node passes through here first.
    """
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{what} must be a non-empty string, got {path!r}", _REBUILD)
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError(f"{what} is longer than {MAX_PATH_BYTES} bytes: {path[:60]!r}...",
                            "shorten the file name")
    if _BAD_CHARS.search(path):
        raise ManifestError(f"{what} {path!r} contains a control character or a backslash", "rename the file")
    if path.startswith("/"):
        raise ManifestError(f"{what} {path!r} is absolute",
                            "bundles hold only relative paths; rebuild with `gcbundle pack`")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"{what} {path!r} is not a plain relative path (empty, '.' or '..' part)", _REBUILD)
    if unicodedata.normalize("NFC", path) != path:
        raise ManifestError(f"{what} {path!r} is not NFC-normalised Unicode", "rename the file")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mode: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mode": self.mode, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> FileEntry:
        if not isinstance(data, dict):
            raise ManifestError(f"file entry must be an object, got {type(data).__name__}")
        path = check_path(data.get("path"), "file path")
        if path in _RESERVED:
            raise ManifestError(f"file path {path!r} is reserved for the manifest")
        size, mode, digest = data.get("size"), data.get("mode"), data.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"file {path!r}: size must be a non-negative integer, got {size!r}")
        if mode not in FILE_MODES or isinstance(mode, bool):
            raise ManifestError(f"file {path!r}: mode must be 0o644 or 0o755, got {mode!r}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ManifestError(f"file {path!r}: sha256 must be 64 lowercase hex digits")
        return cls(path, size, mode, digest)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``gcbundle.json``."""

    entry: str
    mode: str
    files: tuple[FileEntry, ...]
    args: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=lambda: {"kind": "workflow"})
    client: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: int = FORMAT_VERSION

    # -- identity ---------------------------------------------------------------
    def _run_fields(self) -> dict[str, Any]:
        """What the bundle runs, besides its files: the same in the digest and in ``gcbundle.json``."""
        return {"format": self.format, "entry": self.entry, "mode": self.mode, "args": self.args, "config": self.config}

    def semantic(self) -> dict[str, Any]:
        """The fields that change what a run does, and so the digest."""
        return {**self._run_fields(), "files": [[f.path, f.mode, f.sha256] for f in self.files]}

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.semantic(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    # -- serialisation ----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            **self._run_fields(),
            "digest": self.digest,
            "files": [f.to_json() for f in self.files],
            "client": self.client,
            "created": self.created,
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def loads(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            # bad UTF-8 or JSON, integers past Python's digit limit, deep nesting
            raise ManifestError(f"{MANIFEST_NAME} is not valid JSON: {str(exc)[:200]}", _REBUILD) from None
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """The manifest in ``data``, or a ``ManifestError``: never another exception.

        Whatever arrives (nesting deep enough to exhaust the stack when hashed,
        lone surrogates that cannot be encoded, values of any type) is the
        sender's fault, and one error class lets every caller clean up alike.
        """
        try:
            return cls._from_json(data)
        except ManifestError:
            raise
        except (ValueError, TypeError, RecursionError, UnicodeError, AttributeError, OverflowError) as exc:
            raise ManifestError(f"{MANIFEST_NAME} is malformed: {type(exc).__name__}: {str(exc)[:160]}",
                                _REBUILD) from None

    @classmethod
    def _from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{MANIFEST_NAME} must hold a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT_VERSION or isinstance(fmt, bool):
            raise ManifestError(
                f"bundle format {fmt!r} is not supported (this gcbundle reads format {FORMAT_VERSION})",
                "pack the bundle with the same gcbundle version as the login node",
            )
        entry = check_path(data.get("entry"), "entry point")
        mode = data.get("mode")
        if mode not in MODES:
            raise ManifestError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        args = data.get("args", {})
        if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
            raise ManifestError("args must be an object whose keys are Python identifiers")
        config = data.get("config", {"kind": "workflow"})
        if not isinstance(config, dict) or config.get("kind") not in CONFIG_KINDS:
            raise ManifestError(f"config.kind must be one of {', '.join(CONFIG_KINDS)}")
        if config["kind"] == "module":
            check_path(config.get("path"), "config module path")
        raw_files = data.get("files")
        if not isinstance(raw_files, list):
            raise ManifestError("files must be a list")
        if len(raw_files) > MAX_MEMBERS:
            raise ManifestError(f"bundle lists {len(raw_files)} files, more than the cap of {MAX_MEMBERS}",
                                "include fewer files (archive many small ones into one)")
        files = tuple(FileEntry.from_json(f) for f in raw_files)
        _check_unique(files)
        paths = {f.path for f in files}
        if entry not in paths:
            raise ManifestError(f"entry point {entry!r} is not among the bundle's files")
        if config["kind"] == "module" and config["path"] not in paths:
            raise ManifestError(f"config module {config['path']!r} is not among the bundle's files")
        client = data.get("client", {})
        if not isinstance(client, dict) or not all(isinstance(v, str) for v in client.values()):
            raise ManifestError("client must be an object of version strings")
        created = data.get("created", "")
        if not isinstance(created, str):
            raise ManifestError("created must be a string")
        manifest = cls(entry=entry, mode=mode, files=files, args=args, config=config, client=client, created=created)
        digest = manifest.digest  # hashes args and config: fails here, not later, on what cannot be encoded
        claimed = data.get("digest")
        if claimed is not None and claimed != digest:
            raise ManifestError("the manifest's digest does not match its contents",
                                "the bundle was altered; rebuild it with `gcbundle pack`")
        return manifest


def _check_unique(files: tuple[FileEntry, ...]) -> None:
    """Refuse duplicates, and names that collide on case-insensitive or
    normalising file systems, and a file that is also another file's directory."""
    seen: dict[str, str] = {}
    for f in files:
        key = unicodedata.normalize("NFKC", f.path).casefold()
        if key in seen:
            raise ManifestError(
                f"file paths {seen[key]!r} and {f.path!r} collide (same name up to case or Unicode form)",
                "rename one of them",
            )
        seen[key] = f.path
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if unicodedata.normalize("NFKC", prefix).casefold() in seen:
                raise ManifestError(f"{prefix!r} is both a file and the directory of {f.path!r}")
