"""Overlays of a map on its image, and comparison grids of several maps."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import methods as _methods  # noqa: F401  (registers camlens's methods)
from .._registry import method_class
from ._colormaps import blend
from ._image import Picture, _pil, load_image

Box = tuple[int, int, int, int]

_ASPECT_TOLERANCE = 0.02  # relative difference of width / height beyond which maps misfit


def _map_tensor(cam: Any) -> torch.Tensor:
    """One map (H, W) as a float32 tensor in [0, 1] (raw values are min-max normalised).

    The checks run in NumPy: small torch reductions would start an OpenMP team in every
    writer thread of a dataset run."""
    a = np.asarray(cam.detach().cpu() if hasattr(cam, "detach") else cam, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected one map of shape (H, W), got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError("the map contains NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:  # raw values: show them min-max normalised
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _resized(t: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A map tensor (H, W) at ``size`` (bilinear, pixel centres) as numpy in [0, 1]."""
    if tuple(t.shape) != size:
        t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return t.clamp(0, 1).numpy()


def _check_aspect(map_shape: tuple[int, int], height: int, width: int) -> None:
    """Refuse to stretch a map over an image of clearly another shape (a crop's map)."""
    mh, mw = map_shape
    relative = abs((mw / mh) / (width / height) - 1)
    rounding = min(abs(width - height * mw / mh), abs(height - width * mh / mw)) <= 1
    if relative <= _ASPECT_TOLERANCE or rounding:
        return
    raise ValueError(
        f"the map is {mw} x {mh} pixels but the image is {width} x {height} (width x "
        "height): a map of another shape covers a crop of the image (such as a model's "
        "centre crop), and stretching it over the whole image puts it in the wrong place. "
        "Pass region=preprocess (the preprocess from camlens.load_model()) or a box "
        "region=(x0, y0, x1, y1) in the image's pixels, or draw on the crop itself: "
        "preprocess.view(image). region='full' stretches the map over the whole image anyway"
    )


def _region_box(region: Any, height: int, width: int, map_shape: tuple[int, int]) -> Box:
    """The box (x0, y0, x1, y1) of the image that the map covers (x1, y1 exclusive)."""
    if region is None:
        _check_aspect(map_shape, height, width)
        return (0, 0, width, height)
    if isinstance(region, str):
        if region != "full":
            raise ValueError(f"region must be 'full', a box or a preprocess, got {region!r}")
        return (0, 0, width, height)
    box = region.crop_box(height, width) if hasattr(region, "crop_box") else region
    try:
        x0, y0, x1, y1 = (round(float(v)) for v in box)
    except (TypeError, ValueError):
        raise TypeError(
            f"region must be a box (x0, y0, x1, y1), an object with crop_box(height, width) "
            f"such as the preprocess from camlens.load_model(), or 'full'; got {region!r}"
        ) from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"region {(x0, y0, x1, y1)} is empty or outside the {width} x {height} image; "
            "a region is x0, y0, x1, y1 in the image's pixels, x1 and y1 exclusive"
        )
    return (x0, y0, x1, y1)


def _scale_box(box: Box, before: tuple[int, ...], after: tuple[int, ...]) -> Box:
    """``box`` in an image of shape ``before`` -> the same place in one of shape ``after``."""
    sy, sx = after[0] / before[0], after[1] / before[1]
    x0, y0 = round(box[0] * sx), round(box[1] * sy)
    x1, y1 = max(x0 + 1, round(box[2] * sx)), max(y0 + 1, round(box[3] * sy))
    return (x0, y0, min(x1, after[1]), min(y1, after[0]))


def overlay(
    image: Any, cam: Any, alpha: float = 0.5, colormap: str = "jet", *, region: Any = None
) -> Picture:
    """Blend a colour-mapped ``cam`` over ``image``: ``(1 - alpha) * image + alpha * colour``.

    ``image``: path, PIL image, array or tensor (see :func:`load_image`); ``cam``: (H, W)
    tensor or array in [0, 1] (other values are min-max normalised). ``region`` says where
    the map lies: a box ``(x0, y0, x1, y1)`` in the image's pixels, or anything with
    ``crop_box(height, width)``, such as the preprocess from :func:`camlens.load_model`
    (its maps cover the centre crop); the map is resized to the region and the image is
    unchanged outside it. Without ``region`` the map covers the whole image, and a map of
    a clearly different shape is refused; ``region="full"`` stretches it anyway.
    Returns a :class:`Picture` (RGB uint8; shows itself in Jupyter).

    >>> model, preprocess, labels = camlens.load_model()
    >>> cam = camlens.explain(model, preprocess("cat.jpg")[None])[0]
    >>> viz.overlay("cat.jpg", cam, region=preprocess).save("cat_gradcam.png")
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = load_image(image)
    t = _map_tensor(cam)
    x0, y0, x1, y1 = _region_box(region, rgb.shape[0], rgb.shape[1], tuple(t.shape))
    out = rgb.copy()
    out[y0:y1, x0:x1] = blend(rgb[y0:y1, x0:x1], _resized(t, (y1 - y0, x1 - x0)), alpha,
                              colormap)
    return Picture(out)


def class_agnostic(method: str) -> bool:
    """Whether ``method`` gives the same map whatever the class (Eigen-CAM, KPCA-CAM, FEM,
    Random-CAM: ``class_specific = False`` in the registry); an unknown name is not."""
    try:
        return not method_class(method).class_specific
    except (TypeError, ValueError):
        return False


def panel_title(method: str, label: str | None = None, probability: float | None = None,
                *, counterfactual: bool = False, empty: bool = False) -> str:
    """The label of a method's panel in a grid: what its map explains.

    ``gradcam: tiger cat 37.9%`` (``probability`` in [0, 1]), ``gradcam (against): ...``
    for a counterfactual map, ``eigencam: class-agnostic`` for a method whose map does not
    depend on the class, the bare name without a class; `` (empty)`` marks an all-zero map.
    """
    mark = " (empty)" if empty else ""
    if class_agnostic(method):
        return f"{method}: class-agnostic{mark}"
    if label is None:
        return method + mark
    p = f" {probability:.1%}" if probability is not None else ""
    return f"{method}{' (against)' if counterfactual else ''}: {label}{p}{mark}"


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _measure(font: Any) -> Callable[[str], float]:
    """The width in pixels of a text drawn in ``font``."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(_pil().new("RGB", (1, 1)))
    return lambda text: draw.textlength(text, font=font)


def _shorten(text: str, fits: Callable[[str], bool]) -> str:
    if fits(text):
        return text
    while text and not fits(text + "..."):
        text = text[:-1]
    return text + "..."


def _line_end(text: str, fits: Callable[[str], bool]) -> int:
    """Where the first line of ``text`` ends: after the last space, ':' or '-' that keeps
    it fitting; failing that, after as many characters as fit (at least one)."""
    end = 0
    for i, ch in enumerate(text):
        if ch in " :-" and i > 0:
            if not fits(text[: i + 1].rstrip()):
                break
            end = i + 1
    if end:
        return end
    n = 1
    while n < len(text) and fits(text[: n + 1]):
        n += 1
    return n


def _wrap_title(text: str, width: float, font: Any, max_lines: int = 2) -> list[str]:
    """``text`` on up to ``max_lines`` lines of at most ``width`` pixels in ``font``.

    Lines break after a space, ':' or '-' (mid-word only when a word is wider than a
    line); what still does not fit on the last line is shortened with "...".
    """
    measure = _measure(font)
    fits = lambda s: measure(s) <= width  # noqa: E731
    lines: list[str] = []
    rest = " ".join(text.split())
    while rest and len(lines) < max_lines - 1 and not fits(rest):
        end = _line_end(rest, fits)
        lines.append(rest[:end].rstrip())
        rest = rest[end:].lstrip()
    if rest or not lines:
        lines.append(_shorten(rest, fits))
    return lines


def _strip_height(lines: int, font_size: int) -> int:
    return font_size + 8 + (lines - 1) * (font_size + max(2, font_size // 4))


def _strip(
    width: int, lines: Sequence[str], n_lines: int, font: Any, font_size: int
) -> np.ndarray:
    """A white label strip ``width`` pixels wide with room for ``n_lines`` text lines,
    holding ``lines`` in black."""
    Image = _pil()
    from PIL import ImageDraw

    canvas = Image.new("RGB", (width, _strip_height(n_lines, font_size)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    pitch = font_size + max(2, font_size // 4)
    for k, line in enumerate(lines):
        draw.text((4, 3 + k * pitch), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def grid(
    image: Any,
    maps: Mapping[str, Any] | Sequence[Any],
    titles: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    image_title: str = "image",
    cols: int | None = None,
    panel_height: int | None = 256,
    font_size: int = 14,
    region: Any = None,
) -> Picture:
    """A comparison grid: the image, then one labelled overlay panel per map.

    ``maps`` is ``{title: map}`` or a sequence of maps with ``titles``. Panels are scaled
    to ``panel_height`` pixels (``None`` keeps the image's size); ``cols`` defaults to one
    row for up to 7 panels. ``region`` places the maps as in :func:`overlay`: for maps of
    a model's centre crop pass ``region=preprocess``, or give ``preprocess.view(image)``
    as the image.
    """
    if isinstance(maps, Mapping):
        titles = [str(t) for t in maps]
        cams = list(maps.values())
    else:
        cams = list(maps)
        titles = [str(t) for t in titles] if titles is not None else [""] * len(cams)
    if len(titles) != len(cams):
        raise ValueError(f"{len(cams)} maps but {len(titles)} titles")
    full = load_image(image)
    rgb = _scaled(full, panel_height)
    pictures = []
    for cam in cams:
        t = _map_tensor(cam)
        box = _region_box(region, full.shape[0], full.shape[1], tuple(t.shape))
        box = _scale_box(box, full.shape, rgb.shape)
        pictures.append(overlay(rgb, t, alpha, colormap, region=box))
    return compose_grid(rgb, pictures, titles, image_title=image_title, cols=cols,
                        panel_height=panel_height, font_size=font_size)


def _scaled(rgb: np.ndarray, height: int | None) -> np.ndarray:
    rgb = np.asarray(rgb)
    if height is None or rgb.shape[0] == height:
        return rgb
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return np.asarray(_pil().fromarray(rgb).resize((width, height), _pil().BILINEAR))


def compose_grid(
    image: np.ndarray,
    pictures: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    image_title: str = "image",
    cols: int | None = None,
    panel_height: int | None = 256,
    font_size: int = 14,
) -> Picture:
    """Lay out the image and ready-made overlay pictures (same size) with their titles.

    A title too wide for its panel wraps onto two lines (after a space, ':' or '-') before
    it is shortened with "..."; all label strips of a sheet are the same height. ``cols``
    defaults to one row for up to 7 panels. One row per target class: :func:`compose_rows`.
    """
    return compose_rows(image, [(image_title, pictures, titles)], cols=cols,
                        panel_height=panel_height, font_size=font_size)


def compose_rows(
    image: np.ndarray,
    rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]],
    *,
    cols: int | None = None,
    panel_height: int | None = 256,
    font_size: int = 14,
) -> Picture:
    """One row per entry of ``rows = [(row_title, pictures, titles), ...]`` (one per target
    class, say): the image labelled ``row_title``, then that row's titled pictures.

    Every row starts on a new line, so the same method stays in the same column. A row of
    more than ``cols`` panels (image included; default: all of them up to 7, else about
    the square root of their number) continues on the next lines. Titles wrap as in
    :func:`compose_grid`; all label strips are the same height.

    >>> compose_rows(crop, [("top 1: tabby 52.1%", [pic1, pic2], ["gradcam", "layercam"]),
    ...                     ("top 2: tiger cat 31.0%", [pic3, pic4], ["gradcam", "layercam"])])
    """
    if not rows:
        raise ValueError("rows is empty; give at least one (row_title, pictures, titles)")
    base = _scaled(image, panel_height)
    blocks = []
    for row_title, pictures, titles in rows:
        _check_titles(pictures, titles)
        blocks.append([(base, str(row_title))] + [
            (_scaled(p, panel_height), str(t)) for p, t in zip(pictures, titles)
        ])
    n = max(len(cells) for cells in blocks)
    if cols is not None and cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    cols = cols or (n if n <= 7 else math.ceil(math.sqrt(n)))
    lines = [cells[i : i + cols] for cells in blocks for i in range(0, len(cells), cols)]
    return _layout(lines, font_size)


def _check_titles(pictures: Sequence[Any], titles: Sequence[str]) -> None:
    if len(pictures) != len(titles):
        raise ValueError(f"{len(pictures)} pictures but {len(titles)} titles")


def _layout(table: Sequence[Sequence[tuple[np.ndarray, str]]], font_size: int) -> Picture:
    """Labelled panels in rows (4 px gaps); every label strip fits the longest title."""
    font = _font(font_size)
    wrapped = [[_wrap_title(t, max(0, p.shape[1] - 8), font) for p, t in row] for row in table]
    n_lines = max(len(lines) for row in wrapped for lines in row)
    strip = _strip_height(n_lines, font_size)
    # each panel sits under its label strip; panels are copied once, into the sheet
    ph = strip + max(p.shape[0] for row in table for p, _ in row)
    pw = max(p.shape[1] for row in table for p, _ in row)
    cols = max(len(row) for row in table)
    gap = 4
    sheet = np.full((len(table) * ph + (len(table) - 1) * gap, cols * pw + (cols - 1) * gap,
                     3), 255, np.uint8)
    for r, (row, row_lines) in enumerate(zip(table, wrapped)):
        for c, ((panel, _), lines) in enumerate(zip(row, row_lines)):
            y, x = r * (ph + gap), c * (pw + gap)
            h, w = panel.shape[:2]
            if any(lines):
                sheet[y : y + strip, x : x + w] = _strip(w, lines, n_lines, font, font_size)
            sheet[y + strip : y + strip + h, x : x + w] = panel
    return Picture(sheet)
