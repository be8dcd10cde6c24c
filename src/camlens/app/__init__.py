"""A local web page to explore where a model looks: ``camlens app`` (``camlens[app]``).

Drop photos (or pick the bundled samples), see the top classes, click one to explain it,
compare methods of the registry side by side, change the opacity and colormap without
recomputing, read each map's box and its deletion and insertion curves, and download the
maps (``.npy``), the overlays and the grid.

>>> from camlens.app import build
>>> with build() as app:          # the bundled EfficientNet-Lite0, on a free local port
...     print(app.url)            # open it in a browser
>>> camlens.app.launch(port=7860)  # the same in the foreground, until Ctrl-C

The model is loaded once and explained by one worker thread, one request after another
(a queue); each browser tab has its own photos and results. The page is served by the
standard library's HTTP server, binds to 127.0.0.1 unless told otherwise, fetches nothing
from the internet, and never reads a file by a name it is given.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from ..models import DEFAULT_MODEL
from ._server import App
from ._state import Limits
from ._work import Model

__all__ = ["App", "Limits", "build", "launch"]


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available; use 'cpu'")
    return torch.device(name)


def build(
    model: Any = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    *,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
    trust: bool = False,
    device: str = "auto",
    host: str = "127.0.0.1",
    port: int = 0,
    limits: Limits | None = None,
    curve_steps: int = 20,
    log: Any = None,
) -> App:
    """The page for ``model``, bound to ``host:port`` but not yet serving (``start()`` or
    ``serve()`` it, or use it as a context manager, which starts it).

    ``model``: a spec that :func:`camlens.load_model` accepts (the bundled EfficientNet-Lite0
    by default; ``weights``, ``trust`` and ``preprocess`` as there, ``preprocess`` a
    convention name), or a PyTorch or Keras model object with ``preprocess`` (the
    ``Preprocess`` that ``load_model`` returns) and ``labels``. A model object is used where
    it is, never moved; a spec's model goes to ``device`` (``"auto"``: a GPU if there is one).
    ``port=0`` takes a free port (see ``app.url``). ``limits``: upload size, pixels, tabs
    kept (:class:`Limits`). ``curve_steps``: steps of the deletion and insertion curves
    (20: 5 % of the pixels a step, as ``camlens evaluate``). ``log``: a callable that gets
    one line per request (default: quiet).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be a whole number in [0, 65535], got {port!r}")
    if isinstance(model, str):
        from ..models import load_model

        keras = model.startswith("keras:") or model.lower().endswith((".keras", ".h5", ".hdf5"))
        if keras and "keras" not in sys.modules:
            os.environ["KERAS_BACKEND"] = "torch"  # every method works on Keras's torch backend
        if preprocess is not None and not isinstance(preprocess, str):
            raise TypeError("with a model spec, preprocess is a convention name such as "
                            "'imagenet'; pass a model object to give your own Preprocess")
        loaded, pre, names = load_model(model, weights, trust=trust, labels=labels,
                                        preprocess=preprocess)
        holder = Model.wrap(loaded, pre, names, model)
        if not getattr(holder.model, "camlens_adapter", False):  # Keras places its own
            holder.device = _device(device)
            holder.model.to(holder.device)
    else:
        if weights is not None:
            raise ValueError("weights= goes with a model spec; load them into your model first")
        if preprocess is None:
            raise TypeError(
                "a model object needs preprocess=: the Preprocess that camlens.load_model "
                "returns, or camlens.models.preprocessing('imagenet') for torchvision-style "
                "inputs"
            )
        holder = Model.wrap(model, preprocess, labels, type(model).__name__)
    return App(holder, host, port, limits, log, curve_steps)


def launch(
    model: Any = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    **options: Any,
) -> None:
    """Serve the page in the foreground until Ctrl-C (see :func:`build` for the options)."""
    app = build(model, weights, host=host, port=port, **options)
    print(f"camlens app: {app.model.name} at {app.url} (Ctrl-C to stop)", file=sys.stderr)
    try:
        app.serve()
    except KeyboardInterrupt:
        pass
