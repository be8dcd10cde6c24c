"""The one registry of CAM methods: it drives ``explain``, the tests and the CLI.

Every option of every method is checked here, against the rules the method declares in
its ``options`` class attribute (:class:`Real`, :class:`Count`, :class:`Flag`,
:class:`Choice`, :class:`Ranks`), before the method is built.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._catalog import summary
from ._errors import unknown_choice

if TYPE_CHECKING:
    from .methods._base import Method

M = TypeVar("M", bound="type[Method]")

_REGISTRY: dict[str, type[Method]] = {}


def _registered() -> dict[str, type[Method]]:
    """The registry with camlens's own methods in it: their modules register them when
    ``camlens.methods`` is first imported (``import camlens`` alone no longer does it)."""
    if "camlens.methods" not in sys.modules:
        from . import methods  # noqa: F401
    return _REGISTRY


# ------------------------------------------------------------------ option rules


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


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_options(cls: type[Method], options: dict[str, Any]) -> None:
    """Check ``options`` against the rules of ``cls.options``: a ``TypeError`` for an
    unknown option or a wrong type, a ``ValueError`` for a value out of range; each
    message names the method, the option, what it accepts and the value given."""
    rules = cls.options
    for key, value in options.items():
        if key not in rules:
            valid = ", ".join(rules) if rules else "none"
            raise TypeError(
                f"method {cls.name!r} has no option {key!r}; its options are: {valid}"
            )
        error = rules[key].problem(value)
        if error is not None:
            shown = _describe(value) if error is TypeError else repr(value)
            raise error(
                f"{cls.name} option {key} must be {rules[key].expected}, got {shown}"
            )


def _init_options(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {
        p: prm for p, prm in params.items()
        if p != "self" and prm.kind in (prm.KEYWORD_ONLY, prm.POSITIONAL_OR_KEYWORD)
    }


# ------------------------------------------------------------------------ registry


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator that registers a :class:`Method` under its canonical ``name``.

    Every ``__init__`` option needs a rule in the class's ``options`` (and its default
    must pass it): ``create_method`` checks what users pass against those rules.
    """

    def decorate(cls: M) -> M:
        if name in _registered():  # camlens's own methods first, as their names are taken
            raise ValueError(f"method {name!r} is registered twice")
        params = _init_options(cls)
        missing = [p for p in params if p not in cls.options]
        extra = [p for p in cls.options if p not in params]
        if missing or extra:
            raise TypeError(
                f"method {name!r}: {cls.__name__}.options must give one rule per __init__ "
                f"option; missing {missing}, unknown {extra}"
            )
        cls.name = name
        defaults = {p: prm.default for p, prm in params.items() if prm.default is not prm.empty}
        check_options(cls, defaults)
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_methods(pattern: str = "*") -> list[str]:
    """Canonical names of the registered methods, in registration order.

    ``pattern`` is a shell-style wildcard, e.g. ``"*gradcam*"``.

    >>> "gradcam" in available_methods()
    True
    """
    return [name for name in _registered() if fnmatch.fnmatchcase(name, pattern)]


def method_class(name: str) -> type[Method]:
    """The registered class for ``name`` (case and ``_`` / ``-`` insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a name such as 'gradcam', got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _registered():
        raise unknown_choice("method", name, _REGISTRY, "See camlens.available_methods()")
    return _REGISTRY[key]


def describe(name: str) -> str:
    """The description of a method: the summary sentence(s) of its docstring, whole (a
    summary that wraps over several lines is joined, never cut mid-sentence)."""
    return summary(inspect.getdoc(method_class(name)) or "")


def create_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method after checking every option against its rules.

    >>> create_method("finercam", alpha=float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: finercam option alpha must be a finite number >= 0, got inf
    """
    cls = method_class(name)
    check_options(cls, options)
    return cls(**options)
