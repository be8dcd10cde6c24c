"""What the ``camlens`` commands share: finding images, naming outputs, loading the model,
reading ``--method`` and ``--target``, progress and the cost plan."""

from __future__ import annotations

import argparse
import functools
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import methods as _methods  # noqa: F401  (registers camlens's methods)
from .._errors import closest, unknown_choice
from .._layers import resolve_layers
from .._registry import available_methods, create_method, method_class
from .._validate import check_model
from ..models import engine_input, load_model
from ..targets import TopK
from ._args import (  # noqa: F401  (re-exported)
    METHOD_GROUPS,
    CliError,
    library_notes,
    model_options,
    positive,
    say,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# The first bytes of the image formats Pillow reads, for files without an image suffix.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*", b"P3", b"P6", b"P5", b"P2")


@dataclass
class Run:
    """What a run did: for the summary, the messages and the exit code."""

    images: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def fail(self, name: str, reason: str, retry: bool = False) -> None:
        """``name`` is skipped for ``reason``; ``retry``: the file was missing or could not
        be read, so a resumed run tries it again."""
        self.errors.append({"file": name, "error": reason})
        say(f"skipped {name}: {reason}")


def show_progress(choice: str) -> bool:
    """``--progress``: ``auto`` shows bars only when stderr is a terminal."""
    return choice == "always" or (choice == "auto" and sys.stderr.isatty())


# ---------------------------------------------------------------- inputs and outputs
def collect(paths: Sequence[str], run: Run, out: str | os.PathLike[str] | None = None,
            ) -> list[tuple[Path, str, str]]:
    """(file, display name, name relative to its folder argument) for every image.

    Folders are walked recursively. A file with an image suffix is taken; a file without
    one is taken when its first bytes are an image's (a JPEG saved without extension). A
    file named on the command line is always tried (and reported if it is not an image).
    Left out of a walk, each kind counted and named once on stderr: files that are not
    images, hidden images and hidden folders (names starting with "."), and camlens's own
    outputs: the run's output folder ``out`` and any folder that holds an earlier run,
    audit or labels (:func:`camlens_output`), so that a run never explains its pictures.
    """
    own = Path(out).resolve() if out is not None else None
    files: list[tuple[Path, str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            made = camlens_output(p, own)
            if made:
                run.fail(raw, f"{made}: camlens's own outputs, not images to explain "
                              "(name its files to explain them anyway)", retry=True)
                continue
            found, other, hidden, outputs = _walk(p, own)
            _left_out(raw, "file(s) that are not images", other)
            _left_out(raw, "hidden file(s) and folder(s)", hidden,
                      "; name a hidden file on the command line to explain it")
            _left_out(raw, "folder(s) of camlens's own outputs", outputs,
                      ": a run never explains them", join="; ")
            if not found:
                looked = ", ".join(IMAGE_SUFFIXES)
                run.fail(raw, f"no image files in this folder (looked for {looked}, and for "
                              "image contents in files without a suffix)", retry=True)
            files += [(f, str(f), str(f.relative_to(p).with_suffix(""))) for f in found]
        elif p.exists():
            files.append((p, raw, p.stem))
        else:
            run.fail(raw, "no such file or directory", retry=True)
    return files


def _walk(root: Path, own: Path | None) -> tuple[list[Path], list[str], list[str], list[str]]:
    """The images below ``root``, in sorted order, and what was left out (names relative to
    ``root``): other files, hidden images and folders, camlens output folders (why each)."""
    found: list[Path] = []
    other, hidden, outputs = [], [], []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        keep = []
        for d in sorted(dirs):  # pruned here: a hidden or output folder is never read
            sub = here / d
            made = None if d.startswith(".") else camlens_output(sub, own)
            if d.startswith("."):
                hidden.append(f"{sub.relative_to(root)}/")
            elif made:
                outputs.append(f"{sub.relative_to(root)}/: {made}")
            else:
                keep.append(d)
        dirs[:] = keep
        for name in names:
            f = here / name
            if not f.is_file():
                continue
            image = f.suffix.lower() in IMAGE_SUFFIXES or _looks_like_image(f)
            if name.startswith("."):
                if image:  # a hidden file of another kind (.DS_Store) goes without a word
                    hidden.append(str(f.relative_to(root)))
            elif image:
                found.append(f)
            else:
                other.append(str(f.relative_to(root)))
    return sorted(found), sorted(other), sorted(hidden), sorted(outputs)


def _left_out(raw: str, what: str, names: Sequence[str], why: str = "",
              join: str = ", ") -> None:
    """One note for the ``names`` of a kind a folder walk left out: the first three."""
    if names:
        shown = join.join(names[:3])
        more = f"{join}and {len(names) - 3} more" if len(names) > 3 else ""
        say(f"{raw}: left out {len(names)} {what} ({shown}{more}){why}")


def camlens_output(folder: Path, own: Path | None = None) -> str | None:
    """Which camlens output ``folder`` is (a phrase for the user), or None for any other
    folder: the running command's output folder ``own``, or one holding an earlier run
    (its options and index), an audit (its report data) or pseudo-labels (their summary),
    known by those files."""
    from ..runner._index import INDEX, OPTIONS

    if own is not None and folder.resolve() == own:
        return "this run's output folder"
    if (folder / OPTIONS).is_file() and (folder / INDEX).is_file():
        return f"the folder of an earlier camlens run (it holds {OPTIONS} and {INDEX})"
    if (folder / "audit.json").is_file() and (folder / "images.jsonl").is_file():
        return "a camlens audit's folder (it holds audit.json and images.jsonl)"
    try:
        with open(folder / "labels.json", "rb") as f:
            if re.match(rb'\{\s*"camlens"\s*:', f.read(64)):
                return "a camlens labels folder (it holds camlens's labels.json)"
    except OSError:
        pass
    return None


def _looks_like_image(path: Path) -> bool:
    if path.suffix and path.suffix.lower() not in ("", ".jfif", ".jpe", ".img", ".image"):
        return False  # a known other kind of file (.txt, .json, ...)
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def output_names(files: Sequence[tuple[Path, str, str]], taken: set[str] | None = None,
                 ) -> list[str]:
    """A safe, unique file stem per image: letters and digits of any script, '.', '_' and
    '-'; sub-folders become ``__`` so that nothing is written outside the output folder.
    ``taken``: stems already used in the folder (lower case), by a run being resumed."""
    taken = set(taken or ())
    names = []
    for _, _, rel in files:
        parts = [unicodedata.normalize("NFC", part) for part in Path(rel).parts
                 if part not in ("/", "..", ".")]
        stem = "__".join(parts)
        stem = re.sub(r"[^\w.-]+", "_", stem).strip("_").lstrip(".")
        stem = stem[-120:] or "image"
        candidate, n = stem, 2
        while candidate.lower() in taken:  # case-insensitive file systems
            candidate, n = f"{stem}-{n}", n + 1
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def inside(out: Path, name: str) -> Path:
    """``out / name``, refused if it would lead outside ``out`` (``..``, an absolute name,
    a symbolic link). A plain name is checked with one ``lstat`` (a dataset run asks for
    thousands); anything else is resolved in full."""
    base = _resolved(os.path.abspath(out))
    if "/" not in name and "\\" not in name and name not in ("", ".", ".."):
        target = base / name
        try:
            plain = not stat.S_ISLNK(os.lstat(target).st_mode)
        except FileNotFoundError:
            plain = True
        if plain:
            return target
    target = (out / name).resolve()
    if not target.is_relative_to(base):
        raise CliError(f"refusing to write {target}: outside the output folder {out}")
    return target


@functools.lru_cache(maxsize=64)
def _resolved(out: str) -> Path:  # an absolute path: the same folder whatever the cwd
    return Path(out).resolve()


def output_folder(text: str) -> Path:
    """``--out``: a folder, created if missing; a clear error if it names a file."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {text} is an existing file; name a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"--out {text}: cannot create the folder ({err.strerror})") from None
    return out


def decode(files: Sequence[tuple[Path, str, str]], chunk: range, preprocess: Any,
           max_pixels: int, run: Run) -> list[tuple[int, np.ndarray, Any]]:
    """(index, RGB array, model input) of each image of ``chunk`` that can be read; the
    others are reported on ``run`` and skipped."""
    from ..viz import ImageError, load_image

    loaded = []
    for i in chunk:
        path, shown, _ = files[i]
        try:
            rgb = load_image(path, max_pixels=max_pixels)
            loaded.append((i, rgb, engine_input(preprocess, rgb)))
        except ImageError as err:
            run.fail(shown, str(err).removeprefix(f"{path}: "), retry=True)
        except (OSError, ValueError) as err:
            run.fail(shown, f"{type(err).__name__}: {err}", retry=True)
    return loaded


def small_image_note(rgb: np.ndarray, preprocess: Any) -> str | None:
    """A note when an image is far smaller than the model's input: upscaled more than 2x,
    its map mostly shows interpolated pixels (a slight upscale, 218 px to 256, is normal)."""
    h, w = rgb.shape[:2]
    side = preprocess.crop
    scale = getattr(preprocess, "resize", side) / min(h, w)
    if 2 * min(h, w) < side:
        return (f"{w}x{h} is far smaller than the model's {side}x{side} input: it was "
                f"upscaled {scale:.0f}x, so the map shows interpolated pixels")
    return None


# ---------------------------------------------------------------- model and choices
def load(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, list[str], Any, torch.device]:
    """The model, its preprocessing and labels, the checked layer and the device.

    ``args.model`` is a spec for :func:`load_model`; :func:`camlens.run` may instead hand
    a model object in ``args.model_object`` (with ``args.labels`` and ``args.preprocess``).
    """
    given = getattr(args, "model_object", None)
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
            labels = object_labels(model, preprocess, getattr(args, "labels", None))
    except (ValueError, ImportError, TypeError) as err:
        raise CliError(str(err)) from None
    if args.layer:
        try:
            resolve_layers(model, args.layer)
        except ValueError as err:
            raise CliError(str(err)) from None
    keras = getattr(model, "camlens_adapter", False)
    if keras or given is not None:  # Keras, or the caller, placed the model: it stays there
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        if args.device not in ("auto", device.type):
            raise CliError(
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
        logits = find_logits(model(blank))
    num = int(logits.shape[-1])
    if labels is None:
        return default_labels(num)
    names = [str(n) for n in labels]
    if len(names) != num:
        raise ValueError(f"got {len(names)} labels for a model with {num} outputs")
    return names


def model_fingerprint(args: argparse.Namespace, methods: Methods) -> dict[str, Any]:
    """What every run over a folder (explain, evaluate) must match to be resumed: the
    model (a weights file by size and time, a model object by a digest of its weights),
    its preprocessing, the methods with their options and the layer."""
    import dataclasses
    import json

    weights = getattr(args, "weights", None)
    stat = Path(weights).stat() if weights and Path(weights).is_file() else None
    preprocess = getattr(args, "preprocess", None)
    if preprocess is not None and not isinstance(preprocess, str):
        preprocess = json.loads(json.dumps(dataclasses.asdict(preprocess)))
    given = getattr(args, "model_object", None)
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
        raise CliError("--device cuda: no CUDA device is available; use --device cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CliError("--device mps: MPS is not available; use --device cpu")
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

    def record(self, result: Any) -> None:
        """Note the methods of a ``compare`` result that refused, with their reasons."""
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
                say(text)


def parse_methods(text: str, options: Sequence[str] | None = None) -> Methods:
    """The methods of ``--method`` (with their ``--option`` values).

    Names and the groups ``all``, ``heavy`` and ``everything`` mix: ``all,sscam``. A method
    that came from a group and cannot apply to the model is skipped with a note; one named
    explicitly that cannot apply is an error of the run (exit code 1).
    """
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise CliError("--method is empty; see `camlens methods`")
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
            raise CliError(str(unknown_choice("method", part, valid + list(METHOD_GROUPS),
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
            raise CliError(f"--option {item!r}: expected NAME=VALUE or METHOD.NAME=VALUE")
        method, dot, name = key.strip().rpartition(".")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        if dot:
            method = method.lower().replace("_", "-")
            if method not in methods:
                raise CliError(f"--option {item!r}: method {method!r} is not in --method")
            targets = [method]
        else:
            targets = [m for m in methods if name in method_class(m).options]
            if not targets:
                raise CliError(f"--option {item!r}: none of the chosen methods has an option "
                               f"{name!r}; see a method's options with help(camlens) or the README")
        for m in targets:
            out.setdefault(m, {})[name] = value
    for m, opts in out.items():  # bad values are usage errors, before any image is read
        try:
            create_method(m, **opts)
        except (TypeError, ValueError) as err:
            raise CliError(f"--option for {m}: {err}") from None
    return out


def parse_target(text: str, labels: Sequence[str]) -> Any:
    t = text.strip()
    m = re.fullmatch(r"top(\d+)", t.lower())
    if m:
        k = int(m.group(1))
        if not 1 <= k <= len(labels):
            raise CliError(f"--target {t}: k must be between 1 and {len(labels)}")
        return None if k == 1 else TopK(k)
    if re.fullmatch(r"\d+", t):
        idx = int(t)
        if idx >= len(labels):
            raise CliError(f"--target {idx} is out of range: the model has {len(labels)} classes")
        return idx
    norm = [lab.lower().replace("_", " ") for lab in labels]
    key = t.lower().replace("_", " ")
    if key in norm:
        return norm.index(key)
    near = closest(t, labels, n=5)
    raise CliError(
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


def print_plan(rows: Sequence[Any], batch: int, images: int) -> None:
    """The cost of each method with extra forwards, for the whole run, before they start."""
    costly = [r for r in rows if r.forwards]
    if not costly:
        return
    per_forward = next((r.seconds / r.forwards for r in costly if r.forwards), 0.0)
    say(f"cost for {images} image(s), from a timed forward of {1000 * per_forward:.1f} ms "
        "(the other methods share one forward and backward pass per batch):")
    width = max(len(r.method) for r in costly)
    for r in costly:
        per_image = r.forwards / batch
        time = duration(r.seconds / batch * images)
        if r.partial:  # only the model after the layer runs: the full forward is a bound
            say(f"  {r.method:<{width}}  {per_image:>8,.0f} forwards per image  <= {time} "
                "(each runs the model after the layer only)")
        else:
            say(f"  {r.method:<{width}}  {per_image:>8,.0f} forwards per image  ~ {time}")
