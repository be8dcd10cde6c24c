"""camlens's errors, and small helpers that turn bad values into errors that say what to do.

Every error camlens raises on purpose is a :class:`CamlensError`; a bad argument or option
(what the command line answers with one line and exit code 2) is a :class:`UsageError`,
also a ``ValueError`` so that ``except ValueError`` around the Python API keeps working."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CamlensError(Exception):
    """The base of every error camlens raises on purpose."""


class UsageError(CamlensError, ValueError):
    """A bad argument, option or input folder: the message names the value and the fix
    (the command line prints it as one line, exit code 2)."""


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` of ``choices``, the ones most like ``name`` first."""
    pool = list(dict.fromkeys(choices))
    best = difflib.get_close_matches(name, pool, n=n, cutoff=0.0)
    return best


def unknown_choice(kind: str, name: str, choices: Iterable[str], hint: str = "") -> ValueError:
    """A ``ValueError`` for an unknown name that lists the closest valid ones."""
    near = closest(name, choices)
    listed = ", ".join(repr(c) for c in near) if near else "(none)"
    msg = f"unknown {kind} {name!r}; closest valid choices: {listed}"
    if hint:
        msg += f". {hint}"
    return ValueError(msg)
