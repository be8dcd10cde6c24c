"""Weak labels from class activation maps (split into inputs, rule and writers next)."""

from ._folder import *  # noqa: F403
from ._folder import (  # noqa: F401
    IGNORE,
    MAX_CLASSES,
    __all__,
    good_methods,
    label_folder,
)
