"""How faithful and how well localised a map is: deletion/insertion, confidence change and
ROAD; pointing games, localisation error, MaxBoxAccV2 and the mIoU of label masks; the
randomisation sanity check.

Everything is torch on the inputs' device; model forwards run batched without autograd in
the model's eval mode, and the model is never modified (``sanity_check`` works on a copy).

One module per family; each imports only from those listed before it: ``_common`` (map
checks, the explained classes, batched probabilities, a Keras model's adapter),
``_segmentation`` (mIoU), ``_localisation`` (pointing games, box IoU, localisation error,
MaxBoxAccV2; on :mod:`camlens._derive`), ``_faithfulness`` (deletion/insertion,
confidence change), ``_road`` (ROAD and its multigrid imputation), ``_sanity`` (the
randomisation test, on :func:`camlens.explain`).
"""

from __future__ import annotations

# the private names are not API: camlens.labels takes its components' boxes and confusion
# matrices from here, camlens.evaluation reads M.derive_boxes (the same as camlens.boxes)
from .._derive import boxes as derive_boxes  # noqa: F401
from ._faithfulness import (
    ConfidenceChange,
    confidence_change,
    deletion,
    gaussian_blur,
    insertion,
    win_rate,
)
from ._localisation import (
    MaxBoxAcc,
    box_iou,
    energy_pointing_game,
    localization_error,
    max_box_acc,
    pointing_game,
)
from ._localisation import _component_boxes as _component_boxes
from ._road import noisy_linear_impute, road
from ._sanity import SanityCheck, sanity_check, spearman, ssim
from ._segmentation import MeanIoU, miou
from ._segmentation import _confusion as _confusion
from ._segmentation import _from_confusion as _from_confusion

__all__ = [
    "ConfidenceChange",
    "MaxBoxAcc",
    "MeanIoU",
    "SanityCheck",
    "box_iou",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion",
    "localization_error",
    "max_box_acc",
    "miou",
    "noisy_linear_impute",
    "pointing_game",
    "road",
    "sanity_check",
    "spearman",
    "ssim",
    "win_rate",
]
