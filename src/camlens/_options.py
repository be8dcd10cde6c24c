"""The rules a method's options follow: each method declares one per ``__init__`` option in
its ``options`` class attribute, and the registry checks what users pass against them
(:func:`camlens._registry.create_method`) before the method is built.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


class Rule:
    """What one method option accepts. ``problem(value)`` names the error class to raise
    (``TypeError`` for a wrong type, ``ValueError`` for a value out of range), or
    ``None`` when the value is fine; ``expected`` says what is accepted."""

    expected: str = "a valid value"

    def problem(self, value: Any) -> type[Exception] | None:
        raise NotImplementedError


def _is_real(value: Any) -> bool:
    """A real number, not a bool (``True`` is an ``int`` in Python) and not a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _bound(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _inside(x: float, low: float | None, high: float | None, low_open: bool,
            high_open: bool) -> bool:
    if low is not None and (x < low or (low_open and x == low)):
        return False
    return high is None or not (x > high or (high_open and x == high))


@dataclass(frozen=True)
class Real(Rule):
    """A finite real number (ints too; not bools, strings, NaN or inf) within bounds;
    ``none=True`` also accepts ``None`` (the method then picks the value itself)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none: bool = False

    @property
    def expected(self) -> str:  # type: ignore[override]
        bound = _bound(self.low, self.high, self.low_open, self.high_open)
        return f"a finite number{bound}" + (" or None" if self.none else "")

    def problem(self, value: Any) -> type[Exception] | None:
        if value is None and self.none:
            return None
        if not _is_real(value):
            return TypeError
        x = float(value)
        if not math.isfinite(x):
            return ValueError
        ok = _inside(x, self.low, self.high, self.low_open, self.high_open)
        return None if ok else ValueError


@dataclass(frozen=True)
class Count(Rule):
    """A whole number (``int``, not ``bool``, not ``1.0``) of at least ``low``."""

    low: int = 1

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a whole number >= {self.low}"

    def problem(self, value: Any) -> type[Exception] | None:
        if not _is_whole(value):
            return TypeError
        return None if value >= self.low else ValueError


@dataclass(frozen=True)
class Flag(Rule):
    """``True`` or ``False`` (not 0, 1 or a string)."""

    expected = "True or False"

    def problem(self, value: Any) -> type[Exception] | None:
        return None if isinstance(value, bool) else TypeError


@dataclass(frozen=True, init=False)
class Choice(Rule):
    """One of a few names."""

    choices: tuple[str, ...]

    def __init__(self, *choices: str) -> None:
        object.__setattr__(self, "choices", choices)

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def problem(self, value: Any) -> type[Exception] | None:
        if not isinstance(value, str):
            return TypeError
        return None if value in self.choices else ValueError


@dataclass(frozen=True)
class Ranks(Rule):
    """A non-empty tuple (or list) of distinct whole numbers >= 1, e.g. ``(1, 2, 3)``."""

    expected = "a non-empty tuple of distinct whole numbers >= 1, such as (1, 2, 3)"

    def problem(self, value: Any) -> type[Exception] | None:
        if not isinstance(value, (tuple, list)) or not all(_is_whole(r) for r in value):
            return TypeError
        if not value or min(value) < 1 or len(set(value)) != len(value):
            return ValueError
        return None
