"""Reading images safely into RGB uint8 arrays, and writing pictures atomically."""

from __future__ import annotations

import functools
import io
import os
import secrets
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import CamlensError

DEFAULT_MAX_PIXELS = 64_000_000
"""Images with more pixels than this are refused (decompression bombs); 64 megapixels."""

_QUIET_OPEN = threading.Lock()  # see load_image


class ImageError(CamlensError, ValueError):
    """An image that cannot be used, with the reason (unreadable, truncated, too large...)."""


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading and writing images needs Pillow: pip install 'camlens[cli]'"
        ) from None
    return Image


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image into an RGB uint8 array (H, W, 3).

    Accepts a path, a PIL image, a numpy array (HWC or HW; uint8, uint16 or float in
    [0, 1]) or a tensor (CHW, HWC or HW; float in [0, 1] or uint8; channels-first when the
    first axis is 1, 3 or 4, else channels-last). EXIF orientation is applied,
    transparency is composited on white, grayscale is repeated, 16-bit is scaled to 8-bit.
    Raises :class:`ImageError` for unreadable, non-image, truncated or too large files.
    """
    Image = _pil()
    if isinstance(source, (str, os.PathLike)):
        return _from_pil(_open(Path(source), max_pixels), max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels)
    if type(source).__module__.startswith("torch"):
        return from_array(_tensor_to_hwc(source))
    if isinstance(source, np.ndarray):
        return from_array(source)
    raise TypeError(
        f"cannot read an image from {type(source).__name__}; give a path, a PIL image, a "
        "numpy array (H, W, 3) or a tensor (3, H, W) or (H, W, 3)"
    )


_CHANNELS = (1, 3, 4)


def _tensor_to_hwc(tensor: Any) -> np.ndarray:
    """A tensor (H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4 -> numpy (H, W[, C]).

    The channel axis is the first one when its size is 1, 3 or 4 (torch's layout wins when
    both fit: a (3, 4, 3) tensor is a 4 x 3 picture), else the last one when its size is.
    """
    import torch

    t = tensor.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # numpy has no bfloat16
    shape = tuple(t.shape)
    if t.ndim == 3 and shape[0] in _CHANNELS:
        return t.permute(1, 2, 0).numpy()
    if t.ndim == 2 or (t.ndim == 3 and shape[2] in _CHANNELS):
        return t.numpy()
    if t.ndim == 4:
        hint = "that is a batch; pass one image, e.g. x[0]"
    elif t.ndim == 3:
        hint = "no axis of size 1, 3 or 4 at either end holds the channels"
    else:
        hint = f"{t.ndim} dimensions"
    raise ValueError(
        f"expected an image tensor (3, H, W) or (H, W, 3) (1 or 4 channels, or (H, W) "
        f"grey, also work), got {shape}: {hint}"
    )


def _open(path: Path, max_pixels: int) -> Any:
    Image = _pil()
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image")
    try:
        # the pixel limit below says it in our words. catch_warnings swaps the process's
        # filters, so two decoding threads inside it at once can restore each other's and
        # let the warning through: one at a time (opening reads only the header)
        with _QUIET_OPEN, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: refused as a decompression bomb ({err})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (Pillow cannot identify it)") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err})") from None
    _check_pixels(image.size, max_pixels, str(path))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: truncated or corrupt image ({err})") from None
    return image


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,}; "
            "raise max_pixels (--max-pixels) if you trust this file"
        )
    if w == 0 or h == 0:
        raise ImageError(f"{name}: empty image ({w}x{h})")


def _from_pil(image: Any, max_pixels: int) -> np.ndarray:
    from PIL import ImageOps

    _check_pixels(image.size, max_pixels, "image")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not lose the picture
        pass
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode != "F" else max(float(arr.max()), 1e-12)
        gray = np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = _pil().new("RGBA", image.size, (255, 255, 255, 255))
        image = _pil().alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def from_array(arr: np.ndarray) -> np.ndarray:
    """An array (H, W), (H, W, 1|3|4) in uint8, uint16 or float [0, 1] -> RGB uint8."""
    a = np.asarray(arr)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return a if a.flags.writeable else a.copy()  # already RGB uint8
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image array (H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        out = a.astype(np.float64) / 255
    elif a.dtype == np.uint16:
        out = a.astype(np.float64) / 65535
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("the image array contains NaN or inf")
        if a.min() < -1e-6 or a.max() > 1 + 1e-6:
            raise ValueError(
                f"a float image must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]; "
                "undo the model's normalisation first"
            )
        out = a.astype(np.float64)
    else:
        raise TypeError(f"unsupported image dtype {a.dtype}; use uint8, uint16 or float")
    if out.shape[2] == 4:
        alpha = out[..., 3:4]
        out = out[..., :3] * alpha + (1 - alpha)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _plain(value: Any) -> Any:
    """``value`` with every :class:`Picture` in it (also in lists, tuples) as a plain array."""
    if isinstance(value, Picture):
        return value.view(np.ndarray)
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    return value


class Picture(np.ndarray):
    """An RGB uint8 array (H, W, 3) that shows itself as a picture in Jupyter.

    ``size`` is ``(width, height)`` as in PIL (``shape`` stays numpy's); :meth:`save` writes
    it atomically, :meth:`to_pil` gives a PIL image. Anything computed from it (slices,
    arithmetic, comparisons, numpy functions, ``reshape``, ``astype``) is a plain array, so
    numpy never meets the PIL-style ``size``.

    >>> pic = Picture(np.zeros((300, 451, 3), np.uint8))
    >>> pic.size, pic.shape
    ((451, 300), (300, 451, 3))
    """

    def __new__(cls, array: Any) -> Picture:
        arr = np.asarray(array, dtype=np.uint8)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"a picture is (H, W, 3) or (H, W), got shape {arr.shape}")
        return arr.view(cls)

    @property  # type: ignore[override]
    def size(self) -> tuple[int, int]:  # type: ignore[override]
        """(width, height) in pixels, as PIL's ``Image.size``; ``np.asarray(p).size``
        counts the elements."""
        return int(self.shape[1]), int(self.shape[0])

    @property
    def width(self) -> int:
        return int(self.shape[1])

    @property
    def height(self) -> int:
        return int(self.shape[0])

    def to_pil(self) -> Any:
        """A PIL image (a copy) of this picture."""
        return _pil().fromarray(np.ascontiguousarray(self.view(np.ndarray)))

    def _repr_png_(self) -> bytes:
        return encode_png(np.asarray(self))

    def save(self, path: str | os.PathLike[str], compress_level: int = 1) -> Path:
        """Write a PNG (or any format by suffix) atomically: whole, or not at all."""
        return save_image(np.asarray(self), path, compress_level=compress_level)

    # Results are plain arrays: a slice or a reshaped copy is not a picture any more.
    def __getitem__(self, key: Any) -> Any:
        return self.view(np.ndarray)[key]

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _plain(out)
        result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        if out is not None and method == "__call__":  # in place: keep the caller's object
            return out[0] if len(out) == 1 else out
        return result

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})

    def reshape(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).reshape(*args, **kwargs)

    def astype(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).astype(*args, **kwargs)

    def ravel(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).ravel(*args, **kwargs)

    def flatten(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).flatten(*args, **kwargs)

    def transpose(self, *axes: Any) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).transpose(*axes)

    def squeeze(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).squeeze(*args, **kwargs)

    @property
    def T(self) -> Any:  # type: ignore[override]
        return self.view(np.ndarray).T


_PNG_COLOUR = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 1-4) image (uint8, or values clipped to 0..255).

    Written here rather than by Pillow because it is 1.4-1.9x faster for our pictures, which
    dominate a dataset run's writing time, at about the same size: one PNG filter for the
    picture (None, Sub or Up, chosen on a sample of rows by libpng's heuristic, see
    ``_pick_filter``), computed by whole-image subtractions; then deflate at
    ``compress_level``. Level 1 (the default) uses ISA-L's level 1 when the
    ``isal`` package is installed (it is with ``camlens[cli]``): 3-4x faster than zlib's
    level 1 on our overlays, and a few per cent smaller; other levels use zlib. Either way
    the stream is standard zlib. PNG spec, sections 7.3 and 9 (filters) and 11.2.2 (IHDR):
    https://www.w3.org/TR/png-3/
    """
    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in _PNG_COLOUR or 0 in a.shape:
        raise ValueError(f"encode_png: expected (H, W) or (H, W, 1-4) pixels, got {a.shape}")
    h, w, c = a.shape
    rows = np.ascontiguousarray(a).reshape(h, w * c)
    pick = _pick_filter(rows, c)
    filtered = np.empty((h, w * c + 1), np.uint8)
    filtered[:, 0] = pick
    out = filtered[:, 1:]
    if pick == 0:  # None
        out[:] = rows
    elif pick == 1:  # Sub: minus the pixel to the left (0 for the first), modulo 256
        out[:, :c] = rows[:, :c]
        np.subtract(rows[:, c:], rows[:, :-c], out=out[:, c:])
    else:  # Up: minus the row above (0 above the first row)
        out[0] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=out[1:])
    idat = deflate(filtered.data, int(compress_level))
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOUR[c], 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", idat),
                     _chunk(b"IEND", b"")])


def _pick_filter(rows: np.ndarray, c: int) -> int:
    """The PNG filter (0 None, 1 Sub, 2 Up) for the whole picture whose bytes, read as
    signed, have the smallest sum of absolute values (libpng's heuristic) on every 8th
    row. On photos and our overlays one filter per picture is within 1-3 % of libpng's
    choice per row, and costs a tenth of it."""
    h = rows.shape[0]
    at = np.arange(1, h, 8) if h > 1 else np.zeros(1, np.intp)
    below = rows[at]
    above = rows[at - 1] if h > 1 else np.zeros_like(below)
    sub = below.copy()
    np.subtract(below[:, c:], below[:, :-c], out=sub[:, c:])
    # |byte read as int8| is min(b, 256 - b), and 256 - b is the byte's uint8 negation
    costs = [int(np.minimum(f, np.negative(f)).sum(dtype=np.uint64))
             for f in (below, sub, below - above)]
    return int(np.argmin(costs))


def deflate(data: Any, level: int = 1) -> bytes:
    """``data`` as a zlib stream: ISA-L at level 1 when installed, else zlib at ``level``."""
    fast = _isal() if level == 1 else None
    if fast is not None:
        return fast.compress(data, 1)
    return zlib.compress(data, level)


@functools.lru_cache(maxsize=1)
def _isal() -> Any:
    """ISA-L's zlib module (3-4x faster than zlib's level 1, as small; the ``cli`` extra
    has it), imported on the first PNG rather than with ``camlens``; None without it."""
    try:
        from isal import isal_zlib
    except ImportError:  # without the extra, zlib does the same job slower
        return None
    return isal_zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)) & 0xFFFFFFFF))


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to ``path`` through a temporary file in the same folder and a rename.

    The temporary name is random and opened exclusively (never through a link), with the
    usual permissions (0666 minus the umask, applied by the system)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
        try:
            fd = os.open(tmp, _CREATE, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"could not create a temporary file next to {target}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def save_image(
    array: np.ndarray, path: str | os.PathLike[str], compress_level: int = 1
) -> Path:
    """Save an RGB uint8 array atomically; PNG unless the suffix names another format."""
    target = Path(path)
    if target.suffix.lower() in ("", ".png"):
        return atomic_write(target, encode_png(array, compress_level))
    buf = io.BytesIO()
    _pil().fromarray(np.ascontiguousarray(array)).save(buf, format=_format(target))
    return atomic_write(target, buf.getvalue())


def _format(path: Path) -> str:
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".gif": "GIF"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image format {path.suffix!r}; use .png, .jpg or .webp")
    return fmt
