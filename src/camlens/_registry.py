"""The one registry of CAM methods: it drives ``explain``, the tests and the CLI."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import unknown_choice

if TYPE_CHECKING:
    from .methods._base import Method

M = TypeVar("M", bound="type[Method]")

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator that registers a :class:`Method` under its canonical ``name``."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_methods(pattern: str = "*") -> list[str]:
    """Canonical names of the registered methods, in registration order.

    ``pattern`` is a shell-style wildcard, e.g. ``"*gradcam*"``.

    >>> "gradcam" in available_methods()
    True
    """
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def method_class(name: str) -> type[Method]:
    """The registered class for ``name`` (case and ``_`` / ``-`` insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a name such as 'gradcam', got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise unknown_choice("method", name, _REGISTRY, "See camlens.available_methods()")
    return _REGISTRY[key]


def describe(name: str) -> str:
    """The one-line description of a method (the first line of its docstring)."""
    doc = inspect.getdoc(method_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


def create_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method, with a clear error for unknown options."""
    cls = method_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [
        p
        for p, prm in params.items()
        if p != "self" and prm.kind in (prm.KEYWORD_ONLY, prm.POSITIONAL_OR_KEYWORD)
    ]
    for key in options:
        if key not in accepted:
            valid = ", ".join(accepted) if accepted else "none"
            raise TypeError(
                f"method {cls.name!r} has no option {key!r}; its options are: {valid}"
            )
    return cls(**options)
