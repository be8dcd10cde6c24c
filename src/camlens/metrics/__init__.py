"""How faithful and how well localised a map is (the split into families follows)."""

from ._localisation import *  # noqa: F403
from ._localisation import (  # noqa: F401
    __all__,
    _component_boxes,
    _confusion,
    _from_confusion,
    box_iou,
    derive_boxes,
    gaussian_blur,
    spearman,
    ssim,
)
