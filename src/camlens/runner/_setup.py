"""What a run does with its model and choices, whatever the command: loading the model
(a spec or an object), reading the methods (``Methods``), the target and the method
options, the fingerprint a resumed run must match, and the cost plan's text."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import methods as _methods  # noqa: F401  (registers camlens's methods)
from .._catalog import METHOD_GROUPS
from .._errors import CamlensError, UsageError, closest, unknown_choice
from .._layers import resolve_layers
from .._messages import Sink, to_log
from .._registry import available_methods, create_method, method_class
from .._validate import check_input_size, check_model
from ..models import load_model
from ..targets import TopK
from ._spec import ModelSettings


def load(args: ModelSettings) -> tuple[torch.nn.Module, Any, list[str], Any, torch.device]:
    """The model, its preprocessing and labels, the checked layer and the device.

    ``args.model`` is a spec for :func:`load_model`; :func:`camlens.run` may instead hand
    a model object in ``args.model_object`` (with ``args.labels`` and ``args.preprocess``).
    """
    given = args.model_object
    if given is None:
        keras = args.model.startswith("keras:") or args.model.lower().endswith(
            (".keras", ".h5", ".hdf5"))
        if keras and "keras" not in sys.modules:
            os.environ["KERAS_BACKEND"] = "torch"  # every method works on Keras's torch backend
    try:
        if given is None:
            model, preprocess, labels = load_model(args.model, args.weights,
                                                   trust=args.trust_model,
                                                   preprocess=args.preprocess)
            model = check_model(model)  # a Keras model: its channels-first adapter
        else:
            model = check_model(given)
            preprocess = object_preprocess(args.preprocess)
            labels = object_labels(model, preprocess, args.labels)
    except CamlensError:  # already camlens's own (a crop too small for the model, ...)
        raise
    except (ValueError, ImportError, TypeError) as err:
        raise UsageError(str(err)) from None
    if args.layer:
        try:
            resolve_layers(model, args.layer)
        except ValueError as err:
            raise UsageError(str(err)) from None
    keras = getattr(model, "camlens_adapter", False)
    if keras or given is not None:  # Keras, or the caller, placed the model: it stays there
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        if args.device not in ("auto", device.type):
            raise UsageError(
                f"--device {args.device}: Keras keeps this model on {device.type} (its torch "
                "backend picks the device when it starts); drop --device" if keras else
                f"device={args.device!r}: the model is on {device.type}; move it there "
                "yourself (model.to(...)) or leave device='auto'"
            )
        return model, preprocess, labels, args.layer or "auto", device
    device = _device(args.device)
    model.to(device)
    return model, preprocess, labels, args.layer or "auto", device


def path_items(paths: Any) -> list[Any]:
    """The Python API's ``paths`` (one path, or a sequence of them) as a non-empty list."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("paths is empty; give image files or folders")
    return items


def model_spec(model: Any, labels: Sequence[str] | None) -> tuple[Any, str]:
    """The Python API's ``model``: ``(object or None, spec)``; an object is named by its
    class for the run's records. ``labels=`` goes only with an object."""
    if not isinstance(model, str):
        return model, f"{type(model).__module__}.{type(model).__qualname__}"
    if labels is not None:
        raise ValueError("labels= is for a model object; a model spec brings its own names")
    return None, model


def object_preprocess(preprocess: Any) -> Any:
    """The pixel convention of a model handed as an object: a ``Preprocess``, a convention
    name (at 224 px), or ImageNet's by default."""
    from ..models import Preprocess, preprocessing

    if isinstance(preprocess, Preprocess):
        return preprocess
    if preprocess is None:
        return Preprocess()
    if isinstance(preprocess, str):
        return preprocessing(preprocess)
    raise TypeError(
        f"preprocess must be a convention name or a camlens.models.Preprocess, got "
        f"{type(preprocess).__name__}; e.g. preprocessing('unit', crop=64, resize=64)"
    )


def object_labels(model: Any, preprocess: Any, labels: Sequence[str] | None) -> list[str]:
    """Class names of a model handed as an object: the given ones (checked against the
    model's output size, found by one forward of a blank image) or numbered names."""
    from .._guard import ModelGuard
    from ..models import default_labels
    from ..targets import find_logits

    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    blank = torch.zeros(1, 3, preprocess.crop, preprocess.crop, dtype=dtype, device=device)
    with ModelGuard(model, eval_mode=True), torch.no_grad():
        try:
            output = model(blank)
        except RuntimeError as err:  # a crop too small for the model: camlens's message
            check_input_size(model, blank, err)
            raise
        logits = find_logits(output)
    num = int(logits.shape[-1])
    if labels is None:
        return default_labels(num)
    names = [str(n) for n in labels]
    if len(names) != num:
        raise ValueError(f"got {len(names)} labels for a model with {num} outputs")
    return names


def model_fingerprint(args: ModelSettings, methods: Methods) -> dict[str, Any]:
    """What every run over a folder (explain, evaluate) must match to be resumed: the
    model (a weights file by size and time, a model object by a digest of its weights),
    its preprocessing, the methods with their options and the layer."""
    import dataclasses
    import json

    weights = args.weights
    stat = Path(weights).stat() if weights and Path(weights).is_file() else None
    preprocess = args.preprocess
    if preprocess is not None and not isinstance(preprocess, str):
        preprocess = json.loads(json.dumps(dataclasses.asdict(preprocess)))
    given = args.model_object
    return {
        "model": args.model if given is None else {"object": args.model,
                                                   "weights": model_digest(given)},
        "weights": [str(weights), stat.st_size, int(stat.st_mtime)] if stat else weights,
        "preprocess": preprocess,
        "methods": methods.names,
        "options": {m: methods.options_for([m]).get(m, {}) for m in methods.names},
        "layer": args.layer,
    }


def model_digest(model: Any) -> str:
    """A fingerprint of a model object's weights (sha256 over its state), so that a resumed
    run refuses a model whose weights changed."""
    import hashlib

    digest = hashlib.sha256(type(model).__qualname__.encode())
    state = model.state_dict() if isinstance(model, torch.nn.Module) else {
        str(i): torch.as_tensor(np.asarray(w)) for i, w in enumerate(model.weights)}
    for name, value in state.items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(str(t.dtype).encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: MPS is not available; use --device cpu")
    return torch.device(name)


def group_members(group: str) -> list[str]:
    names = available_methods()
    heavy = [n for n in names if method_class(n).heavy]
    if group == "all":
        return [n for n in names if n not in heavy]
    if group == "heavy":
        return heavy
    return names


@dataclass
class Methods:
    """The methods a run asked for and what became of them.

    ``named``: the ones named explicitly (not from a group); a refusal of one of those is
    an error of the run (``failed``), of the others a note (``skipped``). A method that
    refused is not run again on the next batches."""

    names: list[str]
    named: set[str]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    quiet: bool = False  # a Ray actor: the driver reports refusals itself

    def live(self) -> list[str]:
        return [m for m in self.names if m not in self.skipped and m not in self.failed]

    def options_for(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {m: o for m, o in self.options.items() if m in names}

    def record(self, result: Any, message: Sink = to_log) -> None:
        """Note the methods of a ``compare`` result that refused, with their reasons (told
        to ``message``)."""
        for name, value in result.items():
            if not isinstance(value, Exception):
                continue
            if name in self.named:
                self.failed[name] = str(value)
                text = f"method {name} failed: {value}; its results are left out"
            else:
                self.skipped[name] = str(value)
                text = f"skipped method {name}: {value}"
            if not self.quiet:
                message(text)


def parse_methods(text: str, options: Sequence[str] | None = None) -> Methods:
    """The methods of ``--method`` (with their ``--option`` values).

    Names and the groups ``all``, ``heavy`` and ``everything`` mix: ``all,sscam``. A method
    that came from a group and cannot apply to the model is skipped with a note; one named
    explicitly that cannot apply is an error of the run (exit code 1).
    """
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise UsageError("--method is empty; see `camlens methods`")
    valid = available_methods()
    out: list[str] = []
    named: set[str] = set()
    for part in parts:
        key = part.lower().replace("_", "-")
        if key in METHOD_GROUPS:
            out += group_members(key)
        elif key in valid:
            out.append(key)
            named.add(key)
        else:
            raise UsageError(str(unknown_choice("method", part, valid + list(METHOD_GROUPS),
                                              "See `camlens methods`")))
    names = list(dict.fromkeys(out))
    return Methods(names, named, _parse_options(options, names))


def _parse_options(items: Sequence[str] | None, methods: Sequence[str]) -> dict[str, dict]:
    """``--option [METHOD.]NAME=VALUE`` -> ``{method: {name: value}}``.

    Without ``METHOD.`` the option goes to every chosen method that has it. Values are
    Python literals (``4``, ``0.5``, ``True``, ``(1, 2)``, ``'nearest'``) or plain words.
    """
    import ast

    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option {item!r}: expected NAME=VALUE or METHOD.NAME=VALUE")
        method, dot, name = key.strip().rpartition(".")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        if dot:
            method = method.lower().replace("_", "-")
            if method not in methods:
                raise UsageError(f"--option {item!r}: method {method!r} is not in --method")
            targets = [method]
        else:
            targets = [m for m in methods if name in method_class(m).options]
            if not targets:
                raise UsageError(f"--option {item!r}: none of the chosen methods has an option "
                               f"{name!r}; see a method's options with help(camlens) or the README")
        for m in targets:
            out.setdefault(m, {})[name] = value
    for m, opts in out.items():  # bad values are usage errors, before any image is read
        try:
            create_method(m, **opts)
        except (TypeError, ValueError) as err:
            raise UsageError(f"--option for {m}: {err}") from None
    return out


def parse_target(text: str, labels: Sequence[str]) -> Any:
    t = text.strip()
    m = re.fullmatch(r"top(\d+)", t.lower())
    if m:
        k = int(m.group(1))
        if not 1 <= k <= len(labels):
            raise UsageError(f"--target {t}: k must be between 1 and {len(labels)}")
        return None if k == 1 else TopK(k)
    if re.fullmatch(r"\d+", t):
        idx = int(t)
        if idx >= len(labels):
            raise UsageError(f"--target {idx} is out of range: the model has {len(labels)} classes")
        return idx
    norm = [lab.lower().replace("_", " ") for lab in labels]
    key = t.lower().replace("_", " ")
    if key in norm:
        return norm.index(key)
    near = closest(t, labels, n=5)
    raise UsageError(
        f"unknown class name {t!r}; closest: {', '.join(repr(n) for n in near)} "
        "(or use top1, top5 or a class id)"
    )


def probabilities(output: Any) -> torch.Tensor | None:
    from ..targets import find_logits

    if output is None:
        return None
    try:
        logits = find_logits(output)
    except (TypeError, ValueError):
        return None
    return torch.softmax(logits.float(), dim=1).cpu()


# ---------------------------------------------------------------- cost
def duration(seconds: float) -> str:
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_plan(rows: Sequence[Any], batch: int, images: int, message: Sink = to_log,
               ) -> None:
    """The cost of each method with extra forwards, for the whole run, before they start,
    told to ``message``."""
    costly = [r for r in rows if r.forwards]
    if not costly:
        return
    per_forward = next((r.seconds / r.forwards for r in costly if r.forwards), 0.0)
    message(f"cost for {images} image(s), from a timed forward of {1000 * per_forward:.1f} ms "
        "(the other methods share one forward and backward pass per batch):")
    width = max(len(r.method) for r in costly)
    for r in costly:
        per_image = r.forwards / batch
        time = duration(r.seconds / batch * images)
        if r.partial:  # only the model after the layer runs: the full forward is a bound
            message(f"  {r.method:<{width}}  {per_image:>8,.0f} forwards per image  <= {time} "
                "(each runs the model after the layer only)")
        else:
            message(f"  {r.method:<{width}}  {per_image:>8,.0f} forwards per image  ~ {time}")
