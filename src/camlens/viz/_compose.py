"""Overlays of a map on its image, and comparison grids of several maps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._colormaps import colormap as apply_colormap
from ._image import Picture, _pil, load_image


def _as_map(cam: Any, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) map as float32 in [0, 1] at ``size`` (bilinear, pixel centres)."""
    t = torch.as_tensor(np.asarray(cam.detach().cpu() if hasattr(cam, "detach") else cam))
    t = t.to(torch.float32)
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"expected one map of shape (H, W), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("the map contains NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:  # raw values: show them min-max normalised
        t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    if tuple(t.shape) != size:
        t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return t.clamp(0, 1).numpy()


def overlay(image: Any, cam: Any, alpha: float = 0.5, colormap: str = "jet") -> Picture:
    """Blend a colour-mapped ``cam`` over ``image``: ``(1 - alpha) * image + alpha * colour``.

    ``image``: path, PIL image, array or tensor (see :func:`load_image`); ``cam``: (H, W)
    tensor or array in [0, 1] (other values are min-max normalised), resized to the image.
    Returns a :class:`Picture` (RGB uint8; shows itself in Jupyter).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = load_image(image)
    heat = apply_colormap(_as_map(cam, rgb.shape[:2]), colormap)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return Picture(np.clip(np.rint(out), 0, 255))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _labelled(panel: np.ndarray, title: str, font_size: int) -> np.ndarray:
    Image = _pil()
    from PIL import ImageDraw

    h, w = panel.shape[:2]
    strip = font_size + 8
    canvas = Image.new("RGB", (w, h + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(panel), (0, strip))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    draw.text((4, 3), _fit(draw, title, font, w - 8), fill=(0, 0, 0), font=font)
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
) -> Picture:
    """A comparison grid: the image, then one labelled overlay panel per map.

    ``maps`` is ``{title: map}`` or a sequence of maps with ``titles``. Panels are scaled
    to ``panel_height`` pixels (``None`` keeps the image's size); ``cols`` defaults to one
    row for up to 7 panels.
    """
    if isinstance(maps, Mapping):
        titles = [str(t) for t in maps]
        cams = list(maps.values())
    else:
        cams = list(maps)
        titles = [str(t) for t in titles] if titles is not None else [""] * len(cams)
    if len(titles) != len(cams):
        raise ValueError(f"{len(cams)} maps but {len(titles)} titles")
    rgb = _scaled(load_image(image), panel_height)
    pictures = [overlay(rgb, cam, alpha, colormap) for cam in cams]
    return compose_grid(rgb, pictures, titles, image_title=image_title, cols=cols,
                        panel_height=panel_height, font_size=font_size)


def _scaled(rgb: np.ndarray, height: int | None) -> np.ndarray:
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
    """Lay out the image and ready-made overlay pictures (same size) with their titles."""
    panels = [_labelled(_scaled(image, panel_height), image_title, font_size)]
    panels += [
        _labelled(_scaled(np.asarray(p), panel_height), t, font_size)
        for p, t in zip(pictures, titles)
    ]
    n = len(panels)
    cols = cols or (n if n <= 7 else math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    ph, pw = panels[0].shape[:2]
    gap = 4
    sheet = np.full((rows * ph + (rows - 1) * gap, cols * pw + (cols - 1) * gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        sheet[r * (ph + gap) : r * (ph + gap) + ph, c * (pw + gap) : c * (pw + gap) + pw] = panel
    return Picture(sheet)
