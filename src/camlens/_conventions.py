"""The conventions the model loaders share: the default model's name and the pixel
conventions (:class:`Preprocess`, by name in ``PREPROCESSING``).

Below :mod:`camlens.models` and the Keras loaders (:mod:`camlens._keras_load`), which both
speak them; ``camlens.models`` re-exports every public name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._catalog import DEFAULT_MODEL, PREPROCESSING  # noqa: F401  (DEFAULT_MODEL re-exported)
from ._errors import unknown_choice

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize``, centre-crop ``crop`` x ``crop``, normalise.

    Call it on an image (path, PIL, array or tensor) to get a float tensor (3, crop, crop).
    :meth:`crop_box` says which part of the original image the model sees, :meth:`view`
    shows it. Maps of the model's input cover that crop, not the whole photo: draw them
    with ``viz.overlay(photo, cam, region=preprocess)`` or on ``preprocess.view(photo)``.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bgr: bool = False  # channels in B, G, R order (Caffe-style models such as Keras's VGG16)
    channels_last: bool = False  # (crop, crop, 3), the layout Keras models take

    def __call__(self, image: Any) -> torch.Tensor:
        """The model's input for ``image``: (3, crop, crop), or (crop, crop, 3) when
        ``channels_last`` (the Keras models ``load_model`` returns: ``model(x[None])``)."""
        x = self.channels_first(image)
        return x.permute(1, 2, 0).contiguous() if self.channels_last else x

    def channels_first(self, image: Any) -> torch.Tensor:
        """The model's input as (3, crop, crop) whatever ``channels_last`` says: the layout
        camlens's engine takes for every model, Keras ones included."""
        x = self._cropped(image)
        if self.bgr:
            x = x.flip(0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def view(self, image: Any) -> np.ndarray:
        """The crop the model sees, as RGB uint8 (crop, crop, 3), before normalisation.

        Pixel (i, j) of a map of the model's input lies on pixel (i, j) of this picture:
        ``viz.grid(preprocess.view("cat.jpg"), maps)``.
        """
        x = self._cropped(image).mul(255).round_().clamp_(0, 255)
        return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()

    def _cropped(self, image: Any) -> torch.Tensor:
        """The resized, centre-cropped image (3, crop, crop) as float, about [0, 1] (the
        antialiased resize may overshoot a little)."""
        from .viz import load_image

        rgb = load_image(image)
        # channels first in memory before the resize: the same values, 20 % faster
        x = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div_(255)[None]
        h, w = rgb.shape[:2]
        scale = self.resize / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        return x[0, :, top : top + self.crop, left : left + self.crop]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in original pixels of the region the crop covers."""
        scale = self.resize / min(height, width)
        size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
        sy, sx = height / size[0], width / size[1]
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        return (
            round(left * sx),
            round(top * sy),
            round((left + self.crop) * sx),
            round((top + self.crop) * sy),
        )


def engine_input(preprocess: Any, image: Any) -> torch.Tensor:
    """``preprocess(image)`` as camlens's engine takes it for every model: channels-first
    (3, H, W), whichever layout the preprocess gives its own model."""
    first = getattr(preprocess, "channels_first", None)
    return first(image) if callable(first) else preprocess(image)


# EfficientNet-Lite was trained in TensorFlow with inputs scaled as (x - 127) / 128.
LITE_PREPROCESS = Preprocess(256, 224, (127 / 255,) * 3, (128 / 255,) * 3)


def preprocessing(name: str, crop: int = 224, resize: int | None = None, *,
                  channels_last: bool = False) -> Preprocess:
    """A :class:`Preprocess` by convention name (see ``PREPROCESSING``); ``channels_last``
    gives (crop, crop, 3) inputs, as Keras models take them."""
    if name not in PREPROCESSING:
        raise unknown_choice("preprocessing", name, PREPROCESSING)
    mean, std, bgr = PREPROCESSING[name]
    return Preprocess(resize or round(crop * 256 / 224), crop, mean, std, bgr,  # type: ignore[arg-type]
                      channels_last)
