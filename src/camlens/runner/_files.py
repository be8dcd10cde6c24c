"""Finding the images of a run and naming its outputs: what every command over files needs
(``explain``, ``evaluate``, ``audit``, ``labels``).

Folders are walked for images (camlens's own output folders are never read), each image
gets a safe, unique output stem, every written path is checked to stay inside the output
folder, and images are decoded with the failures reported on the run's :class:`Run`."""

from __future__ import annotations

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

from .._errors import UsageError
from .._messages import Sink, to_log
from ._index import INDEX, OPTIONS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# The first bytes of the image formats Pillow reads, for files without an image suffix.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*", b"P3", b"P6", b"P5", b"P2")


@dataclass
class Run:
    """What a run did: the images it skipped and why; its notes go to ``message``."""

    errors: list[dict[str, str]] = field(default_factory=list)
    message: Sink = to_log

    def fail(self, name: str, reason: str, retry: bool = False) -> None:
        """``name`` is skipped for ``reason``; ``retry``: the file was missing or could not
        be read, so a resumed run tries it again."""
        self.errors.append({"file": name, "error": reason})
        self.message(f"skipped {name}: {reason}")


def show_progress(choice: str) -> bool:
    """``progress``: ``auto`` shows bars only when stderr is a terminal."""
    return choice == "always" or (choice == "auto" and sys.stderr.isatty())


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
            _left_out(run.message, raw, "file(s) that are not images", other)
            _left_out(run.message, raw, "hidden file(s) and folder(s)", hidden,
                      "; name a hidden file on the command line to explain it")
            _left_out(run.message, raw, "folder(s) of camlens's own outputs", outputs,
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


def _left_out(message: Sink, raw: str, what: str, names: Sequence[str], why: str = "",
              join: str = ", ") -> None:
    """One note for the ``names`` of a kind a folder walk left out: the first three."""
    if names:
        shown = join.join(names[:3])
        more = f"{join}and {len(names) - 3} more" if len(names) > 3 else ""
        message(f"{raw}: left out {len(names)} {what} ({shown}{more}){why}")


def check_matches(annotations: dict[str, Any], files: Sequence[tuple[Path, str, str]],
                  message: Sink = to_log) -> None:
    """Annotations (keyed by file name) that name none of the images are a mistake, not an
    empty result (a :class:`UsageError`); those that name no image are told to ``message``
    (how many, which)."""
    from .._annotations import match_keys

    try:
        note = match_keys("annotations", annotations, {f[0].name for f in files}, "file name")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if note:
        message(note)


def camlens_output(folder: Path, own: Path | None = None) -> str | None:
    """Which camlens output ``folder`` is (a phrase for the user), or None for any other
    folder: the running command's output folder ``own``, or one holding an earlier run
    (its options and index), an audit (its report data) or pseudo-labels (their summary),
    known by those files."""
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
        raise UsageError(f"refusing to write {target}: outside the output folder {out}")
    return target


@functools.lru_cache(maxsize=64)
def _resolved(out: str) -> Path:  # an absolute path: the same folder whatever the cwd
    return Path(out).resolve()


def output_folder(text: str) -> Path:
    """``--out``: a folder, created if missing; a clear error if it names a file."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {text} is an existing file; name a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {text}: cannot create the folder ({err.strerror})") from None
    return out


def decode(files: Sequence[tuple[Path, str, str]], chunk: range, preprocess: Any,
           max_pixels: int, run: Run) -> list[tuple[int, np.ndarray, Any]]:
    """(index, RGB array, model input) of each image of ``chunk`` that can be read; the
    others are reported on ``run`` and skipped."""
    from ..models import engine_input
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
