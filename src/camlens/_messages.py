"""Where the library's messages go: a sink the caller chooses.

A sink is any ``Callable[[str], None]``. The command line passes a printer (one line on
stderr, ``camlens: `` first); a Python caller gets :func:`to_log` (the ``camlens`` logger,
level INFO) unless it passes its own callback. The library never writes to stderr itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Sink = Callable[[str], None]

LOGGER = logging.getLogger("camlens")


def to_log(text: str) -> None:
    """The default sink: ``text`` as an INFO record of the ``camlens`` logger."""
    LOGGER.info(text)


def sink_or_log(message: Sink | None) -> Sink:
    """``message``, or :func:`to_log` when the caller chose none."""
    return to_log if message is None else message
