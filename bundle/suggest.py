"""'Did you mean ...?' for names a user types: --set parameters, --arg names, options.

One place for the difflib cut-off, so that every suggestion reads and
behaves the same.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The known names that look like ``name`` (a typo, a wrong case), best first."""
    choices = list(choices)
    by_lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def did_you_mean(name: str, choices: Iterable[str], spell: str = "{}") -> str:
    """``"did you mean X?"`` (each match written through ``spell``, e.g. ``"--set {}=..."``), or ``""``."""
    found = close_matches(name, choices)
    if not found:
        return ""
    return "did you mean " + " or ".join(spell.format(f) for f in found) + "?"


def unknown_names(unknown: Iterable[str], known: Iterable[str], spell: str = "{}", label: str = "known") -> str:
    """A hint for unknown names: a suggestion for each that has one, then the known names."""
    known = list(known)
    unknown = sorted(unknown)
    tips = []
    for name in unknown:
        tip = did_you_mean(name, known, spell)
        if tip:
            tips.append(tip if len(unknown) == 1 else f"{name}: {tip}")
    listing = f"{label}: {', '.join(known)}" if known else f"{label}: none"
    return "; ".join([*tips, listing])
