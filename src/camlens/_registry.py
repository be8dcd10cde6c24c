"""The one registry of CAM methods: it drives ``explain``, the tests and the CLI.

Every option of every method is checked here, against the rules the method declares in
its ``options`` class attribute (:class:`~camlens._options.Real`, ``Count``, ``Flag``,
``Choice``, ``Ranks`` from :mod:`camlens._options`), before the method is built.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._catalog import METHOD_ORDER, ordered, summary  # noqa: F401  (METHOD_ORDER re-exported)
from ._errors import unknown_choice

if TYPE_CHECKING:
    from .methods._base import Method

M = TypeVar("M", bound="type[Method]")

_REGISTRY: dict[str, type[Method]] = {}


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
        if name in _REGISTRY:  # camlens's own methods first, as their names are taken
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
    """Canonical names of the registered methods, the best known first (``METHOD_ORDER``;
    methods registered elsewhere after them, in registration order).

    ``pattern`` is a shell-style wildcard, e.g. ``"*gradcam*"``.

    >>> available_methods("*gradcam*")[:3]
    ['gradcam', 'gradcam++', 'xgradcam']
    """
    names = ordered(_REGISTRY)
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def method_class(name: str) -> type[Method]:
    """The registered class for ``name`` (case and ``_`` / ``-`` insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a name such as 'gradcam', got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
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
