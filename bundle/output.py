"""What the CLI prints: the ``--json`` envelope, one-line errors, progress.

With ``--json`` stdout carries exactly one envelope (also on failure):

    {"version": 1, "command": "status", "status": "success" | "error",
     "data": {...} | null, "errors": [{"type", "message", "hint"}]}

Human text goes to stdout without ``--json``; progress and notes always go to
stderr, and progress only when stderr is a terminal.
"""
from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

ENVELOPE_VERSION = 1

#: C0 and C1 control characters and DEL: what starts a terminal escape sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(m: re.Match[str]) -> str:
    c = m.group(0)
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, f"\\x{ord(c):02x}")


def printable(text: Any, lines: bool = False) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), for a terminal.

    What the login node sends (states, errors, host names, tracebacks) is
    printed through here, so no escape sequence it holds reaches the user's
    terminal (to move the cursor, retitle the window, hide text). With
    ``lines``, newlines and tabs stay (multi-line text such as a traceback).
    """
    text = text if isinstance(text, str) else str(text)
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(_escape, text)


def envelope(command: str, data: Any = None, errors: list[dict[str, Any]] | None = None) -> str:
    return json.dumps(
        {
            "version": ENVELOPE_VERSION,
            "command": command,
            "status": "error" if errors else "success",
            "data": data,
            "errors": errors or [],
        },
        indent=1, sort_keys=True, default=str,
    )


#: progress(phase, done, total): how the library reports progress (packing, upload, a run's tasks, results).
OnProgress = Callable[[str, int, int], None]


class ProgressMeter:
    """The CLI's ``OnProgress``: a one-line progress meter on stderr, drawn only on a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.last = 0.0
        self.label = ""

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if label == self.label and now - self.last < 0.1 and (done < total or not total):
            return
        if label != self.label and self.label:
            sys.stderr.write("\n")
        self.label, self.last = label, now
        if label == "scan":
            text = f"scanning the workflow's folder: {done:,} files to bundle so far"
        elif label.startswith("run "):
            text = f"{label}: {done}/{total} tasks done" if total else label
        elif total:
            text = f"{label}: {_size(done)} / {_size(total)} ({100 * done // max(total, 1)}%)"
        else:
            text = label
        sys.stderr.write("\r\x1b[2K" + text)
        sys.stderr.flush()

    def note(self, text: str) -> None:
        """A line on stderr for the user, after ending the progress line it would otherwise join."""
        self.close()
        sys.stderr.write(f"gcbundle: {printable(text)}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.label:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.label = ""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def size(n: float) -> str:
    return _size(n)


def local_time(ts: Any) -> str:
    """A Unix time as local date and time; ``-`` if there is none (or it is not a plausible time)."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 < ts < 1e11:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
