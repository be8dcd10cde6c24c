"""Targets: what score a map explains. Any callable ``f(model_output) -> (B,) or (B, K)`` works.

The classes here also tell the engine which class indices they score (``classes``), so
methods that read the classifier (CAM) and the CLI's labels can use them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BoxTarget",
    "ClassTarget",
    "SegmentationTarget",
    "SimilarityTarget",
    "SoftmaxTarget",
    "TokenTarget",
    "TopK",
    "find_logits",
]


def _find_tensor(output: Any, keys: Sequence[str], what: str) -> Tensor:
    """The tensor inside a model output: itself, the first of ``keys`` found as an attribute
    (Hugging Face ``ModelOutput``) or dict key, else the first tensor of a dict/tuple/list."""
    found: Any = None
    if isinstance(output, Tensor):
        found = output
    else:
        for key in keys:
            value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
            if isinstance(value, Tensor):
                found = value
                break
        else:
            if isinstance(output, Mapping):
                found = next((v for v in output.values() if isinstance(v, Tensor)), None)
            elif isinstance(output, (tuple, list)):
                found = next((v for v in output if isinstance(v, Tensor)), None)
    if not isinstance(found, Tensor):
        raise TypeError(
            f"cannot find {what} in a model output of type {type(output).__name__}; pass "
            "target=callable(output) -> Tensor (B,) that picks the score to explain"
        )
    return found


def find_logits(output: Any) -> Tensor:
    """The (B, num_classes) logits inside a model output.

    Understands a tensor, a tuple/list (first tensor), a dict (``"logits"``, ``"out"``, or
    its first tensor value) and objects with a ``.logits`` attribute (Hugging Face).
    """
    found = _find_tensor(output, ("logits", "out"), "class scores")
    if found.ndim != 2:
        raise ValueError(
            f"class targets need (B, num_classes) scores, but the model output has shape "
            f"{tuple(found.shape)}; pass target=callable(output) -> Tensor (B,) instead"
        )
    return found


def _check_classes(classes: Tensor, num_classes: int) -> None:
    bad = (classes < 0) | (classes >= num_classes)
    if bool(bad.any()):
        wrong = int(classes[bad][0])
        raise ValueError(
            f"target class {wrong} is out of range for a model with {num_classes} outputs; "
            f"use a class index from 0 to {num_classes - 1}"
        )


class ClassTarget:
    """The logit of a class: one index for every image, or one index per image.

    >>> ClassTarget(281)             # tabby cat, for every image
    >>> ClassTarget([281, 285])      # one class per image
    """

    single = True

    def __init__(self, index: int | Sequence[int] | Tensor) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, Sequence, Tensor)):
            raise TypeError(f"class index must be an int or a sequence of ints, got {index!r}")
        if isinstance(index, Tensor):
            index = index.flatten().tolist()
        if isinstance(index, Sequence) and not isinstance(index, (str, bytes)):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
                raise TypeError(f"class indices must be ints, got {list(index)!r}")
            self.index: int | list[int] = [int(i) for i in index]
        elif isinstance(index, int):
            self.index = int(index)
        else:
            raise TypeError(f"class index must be an int or a sequence of ints, got {index!r}")

    def classes(self, output: Any) -> Tensor:
        logits = find_logits(output)
        b = logits.shape[0]
        if isinstance(self.index, list):
            if len(self.index) != b:
                raise ValueError(
                    f"got {len(self.index)} target classes for a batch of {b} images; "
                    "give one class per image, or a single int for all"
                )
            idx = torch.tensor(self.index, device=logits.device).view(b, 1)
        else:
            idx = torch.full((b, 1), self.index, device=logits.device, dtype=torch.long)
        _check_classes(idx, logits.shape[1])
        return idx

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return find_logits(output).gather(1, classes)

    def __call__(self, output: Any) -> Tensor:
        return self.scores(output, self.classes(output))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index!r})"


class SoftmaxTarget(ClassTarget):
    """The softmax probability of a class rather than its logit."""

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return torch.softmax(find_logits(output), dim=1).gather(1, classes)


class TopK:
    """The ``k`` highest-scoring classes of each image: maps of shape (B, k, H, W)."""

    single = False

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopK needs a whole number k >= 1, got {k!r}")
        self.k = k

    def classes(self, output: Any) -> Tensor:
        logits = find_logits(output)
        if self.k > logits.shape[1]:
            raise ValueError(
                f"TopK({self.k}) asks for more classes than the model's {logits.shape[1]}"
            )
        return logits.detach().topk(self.k, dim=1).indices

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return find_logits(output).gather(1, classes)

    def __call__(self, output: Any) -> Tensor:
        return self.scores(output, self.classes(output))

    def __repr__(self) -> str:
        return f"TopK({self.k})"



def bind_target(target: Any, output: Any) -> Any:
    """The target with what it decides on the explained output itself fixed (the default
    segmentation region, predicted tokens, matched detections); others come back as they are.
    """
    bind = getattr(target, "bind", None)
    return bind(output) if callable(bind) else target


def _unmatched(matched: Tensor, what: str) -> None:
    if not bool(matched.all()):
        images = torch.nonzero(~matched).flatten().tolist()
        warnings.warn(
            f"{what} in image(s) {images}: nothing to explain there, so their maps are all "
            "zero", UserWarning, stacklevel=4,
        )


def _rows(target: Any, name: str, owner: Tensor) -> Any:
    """A copy of ``target`` whose per-image tensor attribute ``name`` is taken at the
    images ``owner`` (the scorer's perturbed copies: one owner image per row)."""
    picked = copy.copy(target)
    value = getattr(target, name)
    setattr(picked, name, value[owner.to(value.device)])
    return picked


def _as_float_tensor(value: Any, name: str) -> Tensor:
    t = torch.as_tensor(value)
    if not t.is_floating_point():  # ints, bools
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


class SegmentationTarget:
    """The summed score of one class over a region of a segmentation output.

    ``y = sum_{(i, j) in R} S_c[i, j]`` over the logits ``S`` (B, classes, H, W): with
    ``mask=None`` the region ``R`` is every pixel where class ``c`` wins, taken from the
    explained image's own output (and kept for perturbed copies), as in Vinogradova et al.,
    "Towards interpretable semantic segmentation via gradient-weighted class activation
    mapping", AAAI 2020, https://arxiv.org/abs/2002.11434. ``mask`` is (H, W) or (B, H, W),
    boolean or weights; one of another size than the logits is resized (nearest).
    Reads tensors, torchvision's ``{"out": ...}`` and Hugging Face's ``.logits``.
    An image where the region is empty gets an all-zero map and a warning.
    """

    single = True

    def __init__(self, class_index: int, mask: Any = None) -> None:
        if isinstance(class_index, bool) or not isinstance(class_index, int) or class_index < 0:
            raise ValueError(f"class_index must be an int >= 0, got {class_index!r}")
        self.class_index = class_index
        self.mask: Tensor | None = None if mask is None else _as_float_tensor(mask, "mask")
        self.matched: Tensor | None = None
        self._batched = False

    @property
    def in_pixels(self) -> bool:
        """A user mask is tied to pixel positions (the default region follows the image)."""
        return self.mask is not None and not self._batched

    def _logits(self, output: Any) -> Tensor:
        logits = _find_tensor(output, ("logits", "out"), "segmentation scores")
        if logits.ndim < 3:
            raise ValueError(
                f"SegmentationTarget needs scores (B, classes, H, W), but the model output "
                f"has shape {tuple(logits.shape)}; for (B, classes) use ClassTarget"
            )
        if self.class_index >= logits.shape[1]:
            raise ValueError(
                f"class {self.class_index} is out of range for a segmentation output with "
                f"{logits.shape[1]} classes; use 0 to {logits.shape[1] - 1}"
            )
        return logits

    def _region(self, logits: Tensor) -> Tensor:
        if self.mask is None:
            return (logits.detach().argmax(1) == self.class_index).to(logits.dtype)
        mask = self.mask.to(logits.device, logits.dtype)
        spatial = logits.shape[2:]
        if mask.ndim == len(spatial):
            mask = mask.unsqueeze(0)
        if mask.ndim != len(spatial) + 1 or mask.shape[0] not in (1, logits.shape[0]):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit segmentation scores of "
                f"shape {tuple(logits.shape)}; give (H, W) or (B, H, W)"
            )
        if mask.shape[1:] != spatial:
            mask = F.interpolate(mask.unsqueeze(1), size=tuple(spatial), mode="nearest")[:, 0]
        return mask

    def bind(self, output: Any) -> SegmentationTarget:
        logits = self._logits(output)
        region = self._region(logits).expand(logits.shape[0], *logits.shape[2:])
        bound = copy.copy(self)
        bound.mask, bound._batched = region, True
        bound.matched = region.flatten(1).ne(0).any(1).cpu()
        _unmatched(bound.matched, f"class {self.class_index} covers no pixel of the region")
        return bound

    def for_images(self, owner: Tensor) -> SegmentationTarget:
        if not self._batched or self.mask is None:
            return self
        return _rows(self, "mask", owner)

    def __call__(self, output: Any) -> Tensor:
        logits = self._logits(output)
        region = self._region(logits)
        return (logits[:, self.class_index] * region).flatten(1).sum(1)

    def __repr__(self) -> str:
        mask = "None" if self.mask is None else f"<mask {tuple(self.mask.shape)}>"
        return f"SegmentationTarget({self.class_index}, mask={mask})"


def _iou(boxes: Tensor, box: Tensor) -> Tensor:
    """IoU of boxes (..., 4) with one box (4,) per leading row broadcast, (x1, y1, x2, y2)."""
    lt = torch.maximum(boxes[..., :2], box[..., :2])
    rb = torch.minimum(boxes[..., 2:], box[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)
    area_box = (box[..., 2:] - box[..., :2]).clamp_min(0).prod(-1)
    union = area + area_box - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def _detr_parts(output: Any) -> tuple[Tensor, Tensor] | None:
    """(logits, pred_boxes) of a DETR-style output (Hugging Face DETR, Conditional/
    Deformable DETR, YOLOS, RT-DETR), or None."""
    get = output.get if isinstance(output, Mapping) else lambda k: getattr(output, k, None)
    logits, boxes = get("logits"), get("pred_boxes")
    if isinstance(logits, Tensor) and isinstance(boxes, Tensor) and logits.ndim == 3:
        return logits, boxes
    return None


class BoxTarget:
    """The score of the detection of ``label`` that overlaps ``box`` (x1, y1, x2, y2) most.

    Among detections of ``label`` whose IoU with ``box`` is at least ``iou_threshold``, the
    one with the highest IoU is explained; if there is none the score is 0, and the image
    gets an all-zero map and a warning. ``box`` is (4,) for every image or (B, 4), in the
    input's pixel coordinates. Model outputs understood:

    - one dict per image with ``"boxes"``, ``"labels"`` and ``"scores"`` (torchvision
      Faster R-CNN, RetinaNet, FCOS, SSD, in eval mode);
    - raw YOLO-style predictions (B, N, 5 + classes) = (cx, cy, w, h, objectness, class
      scores), alone or first in a tuple: a detection's label is its best class and its
      score is objectness x class score;
    - DETR-style set predictions with ``logits`` (B, Q, classes + 1, the last "no
      object") and ``pred_boxes`` (B, Q, 4) relative to the image (Hugging Face DETR,
      YOLOS, RT-DETR): the score is the label's softmax probability; give
      ``image_size=(H, W)`` to compare a pixel box with them.

    Detections are matched again on every perturbed copy (perturbation methods), as the
    detector's own post-processing would.
    """

    single = True
    in_pixels = True  # the box is tied to pixel positions

    def __init__(self, label: int, box: Any, iou_threshold: float = 0.5,
                 image_size: tuple[int, int] | None = None) -> None:
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ValueError(f"label must be an int >= 0, got {label!r}")
        b = _as_float_tensor(box, "box")
        if b.shape[-1:] != (4,) or b.ndim not in (1, 2):
            raise ValueError(
                f"box must be (x1, y1, x2, y2) or (B, 4), got shape {tuple(b.shape)}"
            )
        if bool(((b[..., 2] <= b[..., 0]) | (b[..., 3] <= b[..., 1])).any()):
            raise ValueError(f"box needs x2 > x1 and y2 > y1 (x1, y1, x2, y2), got {b.tolist()}")
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) <= 0):
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        self.label, self.box, self.iou_threshold = label, b, float(iou_threshold)
        self.image_size = None if image_size is None else (int(image_size[0]),
                                                           int(image_size[1]))
        self.matched: Tensor | None = None

    def _boxes(self, batch: int, device: torch.device) -> Tensor:
        box = self.box.to(device)
        if box.ndim == 1:
            return box.expand(batch, 4)
        if box.shape[0] != batch:
            raise ValueError(
                f"got {box.shape[0]} boxes for a batch of {batch} images; give one box per "
                "image or a single box (4,) for all"
            )
        return box

    def _match(self, output: Any) -> tuple[Tensor, Tensor]:
        """(scores (B,), matched (B,) bool)."""
        if isinstance(output, (list, tuple)) and output and all(
            isinstance(o, Mapping) for o in output
        ):
            return self._match_dicts(output)
        detr = _detr_parts(output)
        if detr is not None:
            return self._match_detr(*detr)
        pred = _find_tensor(output, ("pred", "predictions"), "detections")
        if pred.ndim != 3 or pred.shape[-1] < 6:
            raise ValueError(
                "BoxTarget understands a list of dicts with 'boxes', 'labels' and 'scores' "
                "(torchvision detectors), YOLO-style (B, N, 5 + classes) predictions and "
                "DETR-style 'logits' + 'pred_boxes'; got a tensor of shape "
                f"{tuple(pred.shape)}. Pass target=callable(output) instead"
            )
        return self._match_yolo(pred)

    def _match_dicts(self, output: Sequence[Mapping[str, Any]]) -> tuple[Tensor, Tensor]:
        missing = {"boxes", "labels", "scores"} - set(output[0])
        if missing:
            raise ValueError(
                f"the detector's outputs lack {sorted(missing)}; BoxTarget needs 'boxes', "
                "'labels' and 'scores' per image"
            )
        boxes = self._boxes(len(output), output[0]["boxes"].device)
        scores, matched = [], []
        for i, det in enumerate(output):
            iou = _iou(det["boxes"].detach().float(), boxes[i])
            ok = (det["labels"] == self.label) & (iou >= self.iou_threshold)
            if bool(ok.any()):
                j = int(torch.where(ok, iou, torch.full_like(iou, -1.0)).argmax())
                scores.append(det["scores"][j])
            else:
                scores.append(det["scores"].sum() * 0.0)
            matched.append(bool(ok.any()))
        return torch.stack(scores), torch.tensor(matched)

    def _match_detr(self, logits: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """DETR-style set predictions: ``logits`` (B, Q, classes + 1), the last column "no
        object", and ``pred_boxes`` (B, Q, 4) as (cx, cy, w, h) relative to the image."""
        classes = logits.shape[-1] - 1
        if self.label >= classes:
            raise ValueError(
                f"label {self.label} is out of range for a DETR-style output with {classes} "
                f"classes; use 0 to {classes - 1}"
            )
        box = self._boxes(logits.shape[0], logits.device)
        if self.image_size is not None:
            h, w = self.image_size
            box = box / torch.tensor([w, h, w, h], dtype=box.dtype, device=box.device)
        elif bool((box > 1.5).any()):
            raise ValueError(
                "DETR-style models predict boxes relative to the image (0 to 1); pass "
                "image_size=(height, width) so that the pixel box can be compared with them"
            )
        probs = torch.softmax(logits, dim=-1)[..., :-1]  # (B, Q, classes)
        rows, j, matched = self._best(boxes, probs, box)
        score = probs[rows, j, self.label]
        return score * matched.to(score.dtype), matched.cpu()

    def _match_yolo(self, pred: Tensor) -> tuple[Tensor, Tensor]:
        classes = pred.shape[-1] - 5
        if self.label >= classes:
            raise ValueError(
                f"label {self.label} is out of range for YOLO-style predictions with "
                f"{classes} classes; use 0 to {classes - 1}"
            )
        box = self._boxes(pred.shape[0], pred.device)
        rows, j, matched = self._best(pred[..., :4], pred[..., 5:], box)
        score = pred[rows, j, 4] * pred[rows, j, 5 + self.label]
        return score * matched.to(score.dtype), matched.cpu()

    def _best(self, cxcywh: Tensor, class_scores: Tensor, box: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, index of the chosen prediction per image, matched) among predictions
        (B, N) whose best class is the label and whose IoU with the box is high enough."""
        d = cxcywh.detach().float()
        xyxy = torch.cat([d[..., :2] - d[..., 2:4] / 2, d[..., :2] + d[..., 2:4] / 2], dim=-1)
        iou = _iou(xyxy, box[:, None, :].float())
        ok = (class_scores.detach().argmax(-1) == self.label) & (iou >= self.iou_threshold)
        j = torch.where(ok, iou, torch.full_like(iou, -1.0)).argmax(1)
        return torch.arange(d.shape[0], device=d.device), j, ok.any(1)

    def bind(self, output: Any) -> BoxTarget:
        _, matched = self._match(output)
        bound = copy.copy(self)
        bound.matched = matched
        _unmatched(matched, f"no detection of label {self.label} overlaps the box enough")
        return bound

    def for_images(self, owner: Tensor) -> BoxTarget:
        return self if self.box.ndim == 1 else _rows(self, "box", owner)

    def __call__(self, output: Any) -> Tensor:
        return self._match(output)[0]

    def __repr__(self) -> str:
        box, iou = self.box.tolist(), self.iou_threshold
        return f"BoxTarget({self.label}, box={box}, iou_threshold={iou})"


class SimilarityTarget:
    """Cosine similarity of the model's embedding with a reference embedding.

    ``y = <e, r> / (|e| |r|)`` for image retrieval, face matching or CLIP-like image
    towers. ``reference`` is (D,) or (B, D). The embedding is the output tensor, flattened
    after the batch dimension, or a Hugging Face output's ``image_embeds``,
    ``pooler_output`` or ``embeddings``.
    """

    single = True

    def __init__(self, reference_embedding: Any) -> None:
        ref = _as_float_tensor(reference_embedding, "reference_embedding")
        if ref.ndim not in (1, 2) or ref.shape[-1] == 0:
            raise ValueError(
                f"reference_embedding must be (D,) or (B, D), got shape {tuple(ref.shape)}"
            )
        if bool((ref.norm(dim=-1) == 0).any()):
            raise ValueError("reference_embedding is all zeros; cosine similarity is undefined")
        self.reference = ref

    def __call__(self, output: Any) -> Tensor:
        emb = _find_tensor(output, ("image_embeds", "pooler_output", "embeddings"),
                           "an embedding").flatten(1)
        ref = self.reference.to(emb.device, emb.dtype)
        if ref.shape[-1] != emb.shape[1]:
            raise ValueError(
                f"the reference embedding has {ref.shape[-1]} values but the model's "
                f"embedding has {emb.shape[1]}"
            )
        if ref.ndim == 2 and ref.shape[0] not in (1, emb.shape[0]):
            raise ValueError(
                f"got {ref.shape[0]} reference embeddings for a batch of {emb.shape[0]}; give "
                "one per image or a single (D,)"
            )
        return F.cosine_similarity(emb, ref.expand_as(emb), dim=1, eps=1e-12)

    def bind(self, output: Any) -> SimilarityTarget:
        with torch.no_grad():
            similarity = self(output)
        same = similarity >= 1 - 1e-6
        if bool(same.any()):
            images = torch.nonzero(same).flatten().tolist()
            warnings.warn(
                f"image(s) {images} already match the reference exactly (cosine 1), so the "
                "gradient is zero and their maps are all zero; compare with another image's "
                "embedding", UserWarning, stacklevel=4,
            )
        return self

    def for_images(self, owner: Tensor) -> SimilarityTarget:
        if self.reference.ndim == 1 or self.reference.shape[0] == 1:
            return self
        return _rows(self, "reference", owner)

    def __repr__(self) -> str:
        return f"SimilarityTarget(<reference {tuple(self.reference.shape)}>)"


def _ints(value: Any, name: str) -> tuple[list[int], bool]:
    """(the ints, whether ``value`` was a single one) from an int, a sequence, a numpy array
    or a tensor; bools and empty sequences are refused."""
    raw = value.tolist() if hasattr(value, "tolist") else value
    scalar = not isinstance(raw, (list, tuple, range))
    items = [raw] if scalar else list(raw)
    if not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
        raise ValueError(f"{name} must be an int or a non-empty sequence of ints, got {value!r}")
    return [int(i) for i in items], scalar


class TokenTarget:
    """The logit of a token at a decoding step, for models returning (B, T, V) logits.

    ``step`` is an int, or a sequence of steps for one map per step (B, K, H, W) from one
    batched pass (one map per generated word). ``token`` is an int, one int per step, or
    ``None``: the token the model predicts at that step (fixed from the explained output).
    Negative steps count from the end. Captioning and VQA as in the Grad-CAM paper,
    https://arxiv.org/abs/1610.02391.
    """

    def __init__(self, step: int | Sequence[int], token: int | Sequence[int] | None = None
                 ) -> None:
        steps, self.single = _ints(step, "step")
        self.steps = steps
        tokens: list[int] | None = None
        if token is not None:
            tokens, one = _ints(token, "token")
            if one:
                tokens = tokens * len(steps)
            elif len(tokens) != len(steps):
                raise ValueError(
                    f"token must be an int, one int per step ({len(steps)}) or None; got "
                    f"{token!r}"
                )
        self.tokens: list[int] | Tensor | None = tokens

    def _logits(self, output: Any) -> Tensor:
        logits = _find_tensor(output, ("logits",), "token logits")
        if logits.ndim != 3:
            raise ValueError(
                f"TokenTarget needs (B, steps, vocabulary) logits, but the model output has "
                f"shape {tuple(logits.shape)}"
            )
        t, v = logits.shape[1:]
        bad = [s for s in self.steps if not -t <= s < t]
        if bad:
            raise ValueError(f"step {bad[0]} is out of range for {t} decoding steps")
        if isinstance(self.tokens, list):
            wrong = [k for k in self.tokens if not 0 <= k < v]
            if wrong:
                raise ValueError(
                    f"token {wrong[0]} is out of range for a vocabulary of {v}; use 0 to {v - 1}"
                )
        return logits

    def _token_ids(self, steps: Tensor) -> Tensor:
        """The explained token per image and step (B, K) for the step logits (B, K, V)."""
        if self.tokens is None:
            return steps.detach().argmax(-1)
        if isinstance(self.tokens, Tensor):
            return self.tokens.to(steps.device)
        return torch.tensor(self.tokens, device=steps.device).expand(steps.shape[0], -1)

    def bind(self, output: Any) -> TokenTarget:
        if self.tokens is not None:
            return self
        bound = copy.copy(self)
        bound.tokens = self._token_ids(self._logits(output)[:, self.steps, :])
        return bound

    def for_images(self, owner: Tensor) -> TokenTarget:
        return _rows(self, "tokens", owner) if isinstance(self.tokens, Tensor) else self

    def __call__(self, output: Any) -> Tensor:
        steps = self._logits(output)[:, self.steps, :]  # (B, K, V)
        scores = steps.gather(2, self._token_ids(steps).unsqueeze(-1)).squeeze(-1)
        return scores[:, 0] if self.single else scores

    def __repr__(self) -> str:
        step = self.steps[0] if self.single else self.steps
        tokens = self.tokens.tolist() if isinstance(self.tokens, Tensor) else self.tokens
        return f"TokenTarget({step!r}, token={tokens!r})"


TargetLike = int | Sequence[int] | ClassTarget | TopK | Callable[[Any], Tensor] | None


class _Top1(TopK):
    single = True

    def __init__(self) -> None:
        super().__init__(1)

    def __repr__(self) -> str:
        return "None (top-1)"


def as_target(target: TargetLike) -> Any:
    """Turn the user's ``target=`` into an object with ``single`` and a ``__call__``."""
    if target is None:
        return _Top1()
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, a sequence of ints, TopK(k) or a callable")
    if isinstance(target, (int, Sequence, Tensor)) and not isinstance(target, (str, bytes)):
        return ClassTarget(target)
    if isinstance(target, str):
        raise TypeError(
            f"target {target!r} is a string; give a class index (int) or a callable"
        )
    if callable(target):
        return target
    raise TypeError(
        f"target must be None, an int, a sequence of ints, TopK(k) or a callable, got "
        f"{type(target).__name__}"
    )
