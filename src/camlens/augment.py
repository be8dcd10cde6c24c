"""CAM-guided augmentation: batch transforms steered by a model's class activation maps.

Each transform takes a model (the one being trained, or a fixed one) and a batch of
images (B, C, H, W) with labels, and returns new images and soft labels (B, num_classes):

- :class:`CamErase`: Cutout / Random Erasing whose rectangle lies only where the map of the
  image's class is low, so the object stays whole (KeepAugment's "selective cut").
- :class:`AttentiveCutMix`: the top-k grid cells of *another* image's map pasted into this
  one, labels mixed by the pasted area (Walawalkar et al. 2020).
- :class:`SaliencyMix`: a CutMix box of Beta-drawn size centred on the other image's map
  peak, pasted at the same place, labels mixed by area (Uddin et al. 2021).

Maps come from :class:`camlens.Explainer` (Grad-CAM of the label's class by default), so
the model is left exactly as it was: a model in train mode is explained in eval mode
(its BatchNorm running statistics and dropout untouched) and put back in train mode; no
parameter's ``.grad``, ``requires_grad`` or hook changes, and the global random state is
not used. The returned tensors carry no autograd graph. Every random draw comes from the
object's own ``torch.Generator``: the same seed, inputs and model give the same output.

>>> aug = camlens.augment.SaliencyMix(model, num_classes=10, seed=0)
>>> for x, y in loader:                 # y: class indices (B,) or soft labels (B, 10)
...     x, y = aug(x, y)                # y: (B, 10) soft labels
...     loss = torch.nn.functional.cross_entropy(model(x), y)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._derive import masks as derive_masks
from ._explainer import Explainer
from ._layers import LayerSpec

__all__ = ["AttentiveCutMix", "AugmentRecord", "CamErase", "SaliencyMix"]

_TARGETS = ("label", "predicted")


@dataclass
class AugmentRecord:
    """What the last call did, image by image (for pictures and checks), on the images'
    device.

    ``applied`` (B,) bool: the image was changed (drawn with probability ``p``, and not
    an erasing that found no free place nor a mix whose partner is the image itself);
    ``partner`` (B,) long: the image its pasted pixels came from (itself for erasing and
    for images left as they were); ``region`` (B, H, W) bool: the pixels erased or pasted;
    ``share`` (B,) float: the partner's weight in the soft label (the pasted area share);
    ``maps`` (B, H, W): the map that decided the region (the image's own for erasing, the
    partner's for the mixes), in [0, 1]; all zero for the images left as they were (for
    erasing: those not drawn).
    """

    applied: Tensor
    partner: Tensor
    region: Tensor
    share: Tensor
    maps: Tensor


class _CamAugment:
    """Shared part: argument checks, labels, the maps, the generator."""

    def __init__(
        self,
        model: nn.Module,
        *,
        p: float,
        method: str,
        layer: LayerSpec,
        target: str,
        num_classes: int | None,
        seed: int,
        method_options: dict[str, Any],
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be a whole number, got {seed!r}")
        self.p = _probability(p)
        if target not in _TARGETS:
            raise ValueError(
                f"target must be 'label' (the map of each image's labelled class) or "
                f"'predicted' (its top-1 class), got {target!r}"
            )
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive whole number, got {num_classes!r}")
        if "eval_mode" in method_options:
            raise ValueError(
                "camlens.augment always explains the model in eval mode (a model in train "
                "mode would update its BatchNorm statistics and draw dropout); drop eval_mode"
            )
        self.explainer = Explainer(model, method, layer, seed=seed, **method_options)
        if self.explainer.model is not model:  # a Keras model, seen through its adapter
            raise ValueError(
                "camlens.augment works on PyTorch models with channels-first batches "
                "(B, C, H, W); explain a Keras model with camlens.explain instead"
            )
        self.model = model
        self.target = target
        self.num_classes = num_classes
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.last: AugmentRecord | None = None
        self._worker_seed: int | None = None

    def manual_seed(self, seed: int) -> None:
        """Restart the random stream, as if the object had been made with ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be a whole number, got {seed!r}")
        self.seed = seed
        self.generator.manual_seed(seed)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Augmented images (B, C, H, W) (a new tensor; ``images`` is not changed) and soft
        labels (B, num_classes), both without autograd history.

        ``labels``: class indices (B,) (then ``num_classes`` is needed) or one-hot / soft
        labels (B, num_classes). The map of each image is taken for its labelled class
        (the largest entry of a soft label) unless ``target="predicted"``.
        """
        images, soft, classes = self._check(images, labels)
        self._reseed_in_worker()
        out, mixed, record = self._apply(images.detach(), soft, classes)
        self.last = record
        return out.detach(), mixed.detach()

    def maps(self, images: Tensor, classes: Tensor) -> Tensor:
        """Maps (n, H, W) in [0, 1] at the images' size, of ``classes`` (n,) (or of the
        top-1 classes with ``target="predicted"``); the model is left as it was."""
        target = classes.tolist() if self.target == "label" else None
        try:
            maps = self.explainer(images, target=target)
        finally:
            self.explainer.last_output = None  # hold no logits between calls
            self.explainer.last_classes = None
        return maps.detach().to(images.dtype)

    def _own_maps(self, images: Tensor, classes: Tensor, needed: Tensor) -> Tensor:
        """(B, H, W): the maps of the images ``needed`` (B,) bool, zero elsewhere."""
        b, _, h, w = images.shape
        out = images.new_zeros(b, h, w)
        idx = needed.nonzero().flatten()
        if len(idx):
            out[idx] = self.maps(images[idx], classes[idx])
        return out

    def _apply(self, images: Tensor, soft: Tensor,
               classes: Tensor) -> tuple[Tensor, Tensor, AugmentRecord]:
        raise NotImplementedError

    def _check(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(images, soft labels (B, C) float, classes (B,) long on the images' device)."""
        if not isinstance(images, Tensor):
            raise TypeError(
                f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}"
            )
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape (B, C, H, W), got {tuple(images.shape)}"
                + ("; add a batch dimension with images.unsqueeze(0)" if images.ndim == 3 else "")
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images must be floating point, got {images.dtype}; use images.float() "
                "(and scale uint8 images the way the model expects)"
            )
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch (B = 0)")
        if not isinstance(labels, Tensor):
            raise TypeError(
                f"labels must be a torch.Tensor: class indices (B,) or soft labels (B, C), "
                f"got {type(labels).__name__}; use torch.as_tensor(labels)"
            )
        b = images.shape[0]
        if labels.ndim not in (1, 2) or labels.shape[0] != b:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not fit {b} images: give class "
                f"indices ({b},) or soft labels ({b}, num_classes)"
            )
        if labels.ndim == 1:
            if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
                raise TypeError(
                    f"class indices must be integers, got {labels.dtype}; use labels.long(), "
                    "or give one-hot / soft labels (B, num_classes)"
                )
            if self.num_classes is None:
                raise ValueError(
                    "labels are class indices (B,): give num_classes=... so the soft labels "
                    "have a width, or pass one-hot labels (B, num_classes)"
                )
            bad = (labels < 0) | (labels >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(
                    f"class index {int(labels[bad][0])} is outside 0..{self.num_classes - 1} "
                    f"(num_classes={self.num_classes})"
                )
            soft = F.one_hot(labels.long(), self.num_classes).float()
            classes = labels.long()
        else:
            if not labels.is_floating_point():
                raise TypeError(
                    f"soft labels (B, C) must be floating point, got {labels.dtype}; use "
                    "labels.float()"
                )
            if self.num_classes is not None and labels.shape[1] != self.num_classes:
                raise ValueError(
                    f"soft labels have {labels.shape[1]} columns but num_classes is "
                    f"{self.num_classes}; give (B, {self.num_classes}) labels"
                )
            if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()):
                raise ValueError("soft labels must be finite and >= 0 (one-hot or probabilities)")
            soft = labels.detach().clone()
            classes = labels.argmax(1)
        return images, soft, classes.to(images.device)

    def _reseed_in_worker(self) -> None:
        """In a DataLoader worker, derive the stream from the seed and the worker's seed
        (different per worker and epoch, reproducible under torch.manual_seed)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.generator.manual_seed((self.seed * 0x9E3779B1 + info.seed) % (2**63))

    def _options(self) -> str:
        return f"p={self.p}, target={self.target!r}, seed={self.seed}"

    def __repr__(self) -> str:
        model = type(self.model).__name__
        return (f"{type(self).__name__}({model}, method={self.explainer.method.name!r}, "
                f"{self._options()})")


class CamErase(_CamAugment):
    """Cutout / Random Erasing restricted to where the map does not activate.

    With probability ``p`` per image, a rectangle of area ``s * H * W`` and aspect ratio
    ``r = h / w`` is drawn (``s ~ U(area)``, ``log r ~ U(log ratio)``, as Random Erasing:
    h = round(sqrt(s H W r)), w = round(sqrt(s H W / r))), and placed uniformly among the
    positions inside the image where it holds no pixel of the protected region

        P = {(y, x) : m(y, x) >= threshold * max m and m(y, x) > 0},

    ``m`` being the image's map for its class (:func:`camlens.masks` of the map). Its
    pixels are set to ``fill``. When no position is free, a new size is drawn (up to
    ``tries`` sizes); after that the image is left as it is. The label is unchanged (an
    all-zero map protects nothing: plain Random Erasing). This is the "selective cut" of
    KeepAugment (Gong et al. 2021, https://arxiv.org/abs/2011.11778) with the CAM as the
    saliency and an exact draw among the free positions instead of rejection sampling.
    Cutout: https://arxiv.org/abs/1708.04552; Random Erasing:
    https://arxiv.org/abs/1708.04896.

    Args:
        model: the classifier whose maps guide the erasing (it is never changed).
        p: probability that an image is erased.
        area: (lo, hi) share of the image's area, 0 < lo <= hi <= 1.
        ratio: (lo, hi) aspect ratio h / w, 0 < lo <= hi.
        threshold: share of the map's maximum at or above which pixels are protected.
        fill: a number, or ``"random"``: uniform noise between the image's min and max.
        tries: sizes drawn before an image is left as it is.
        method, layer: the CAM method and layer (see :func:`camlens.explain`).
        target: ``"label"`` (the map of each image's labelled class) or ``"predicted"``.
        num_classes: the soft labels' width; needed when labels are class indices.
        seed: seed of the object's ``torch.Generator``.
        **method_options: the method's own options.

    >>> erase = CamErase(model, p=0.5, num_classes=10, seed=0)
    >>> x, y = erase(images, labels)          # y: (B, 10) one-hot, x: erased off the object
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        p: float = 0.5,
        area: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        threshold: float = 0.3,
        fill: float | str = "random",
        tries: int = 10,
        method: str = "gradcam",
        layer: LayerSpec = "auto",
        target: str = "label",
        num_classes: int | None = None,
        seed: int = 0,
        **method_options: Any,
    ) -> None:
        self.area = _pair("area", area, upper=1.0)
        self.ratio = _pair("ratio", ratio)
        self.threshold = _probability(threshold, "threshold")
        if isinstance(fill, str):
            if fill != "random":
                raise ValueError(f"fill must be a number or 'random', got {fill!r}")
        elif isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(
            fill
        ):
            raise TypeError(f"fill must be a finite number or 'random', got {fill!r}")
        self.fill = fill
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ValueError(f"tries must be a whole number >= 1, got {tries!r}")
        self.tries = tries
        super().__init__(model, p=p, method=method, layer=layer, target=target,
                         num_classes=num_classes, seed=seed, method_options=method_options)

    def _apply(self, images: Tensor, soft: Tensor,
               classes: Tensor) -> tuple[Tensor, Tensor, AugmentRecord]:
        b, c, h, w = images.shape
        g = self.generator
        # every draw has a fixed size, so the stream never depends on the data
        chosen = torch.rand(b, generator=g) < self.p
        lo, hi = self.area
        areas = lo + (hi - lo) * torch.rand(b, self.tries, generator=g, dtype=torch.float64)
        areas = areas * (h * w)
        llo, lhi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratios = torch.exp(llo + (lhi - llo) * torch.rand(b, self.tries, generator=g,
                                                           dtype=torch.float64))
        places = torch.rand(b, self.tries, generator=g, dtype=torch.float64)
        noise = torch.rand(b, c, h, w, generator=g) if self.fill == "random" else None

        maps = self._own_maps(images, classes, chosen.to(images.device))
        protected = derive_masks(maps, self.threshold)
        dev = images.device
        bh = torch.round(torch.sqrt(areas * ratios)).long().to(dev)
        bw = torch.round(torch.sqrt(areas / ratios)).long().to(dev)
        table = _summed_area(protected)
        placed = torch.zeros(b, 4, dtype=torch.long, device=dev)  # y0, x0, bh, bw
        todo = chosen.to(dev).nonzero().flatten()
        u = places.float().to(dev)
        for t in range(self.tries):  # the first drawn size with a free place wins
            if not len(todo):
                break
            spot = _free_spots(table[todo], bh[todo, t], bw[todo, t], u[todo, t])
            found = spot >= 0
            placed[todo[found]] = torch.stack(
                [spot // w, spot % w, bh[todo, t], bw[todo, t]], 1)[found]
            todo = todo[~found]
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        y0, x0, hh, ww = (placed[:, k].view(b, 1, 1) for k in range(4))
        region = (ys >= y0) & (ys < y0 + hh) & (xs >= x0) & (xs < x0 + ww)
        applied = region.flatten(1).any(1)
        if noise is None:
            fill = torch.full_like(images, float(self.fill))  # type: ignore[arg-type]
        else:
            low = images.flatten(1).amin(1).view(b, 1, 1, 1)
            high = images.flatten(1).amax(1).view(b, 1, 1, 1)
            fill = low + (high - low) * noise.to(images)
        out = torch.where(region[:, None], fill, images)
        record = AugmentRecord(
            applied=applied, partner=torch.arange(b, device=dev), region=region,
            share=torch.zeros(b, device=dev), maps=maps,
        )
        return out, soft, record

    def _options(self) -> str:
        return (f"p={self.p}, area={self.area}, ratio={self.ratio}, threshold={self.threshold}, "
                f"fill={self.fill!r}, target={self.target!r}, seed={self.seed}")


class _Mix(_CamAugment):
    """Pairs each image with another of the batch (a random permutation, as CutMix) and
    pastes a region of the partner chosen on the partner's map."""

    def _apply(self, images: Tensor, soft: Tensor,
               classes: Tensor) -> tuple[Tensor, Tensor, AugmentRecord]:
        b, _, h, w = images.shape
        g = self.generator
        chosen = torch.rand(b, generator=g) < self.p
        perm = torch.randperm(b, generator=g)
        draws = self._draw(b)
        chosen &= perm != torch.arange(b)  # paired with itself: nothing would change
        partner = torch.where(chosen, perm, torch.arange(b))
        needed = torch.zeros(b, dtype=torch.bool)
        needed[partner[chosen]] = True
        own = self._own_maps(images, classes, needed.to(images.device))
        dev = images.device
        maps = own[partner.to(dev)] * chosen.to(dev, own.dtype).view(b, 1, 1)
        region = self._region(maps, draws) & chosen.to(dev).view(b, 1, 1)
        out = torch.where(region[:, None], images[partner.to(dev)], images)
        share = region.flatten(1).float().mean(1)
        lab = share.to(soft.device, soft.dtype).view(b, 1)
        mixed = (1 - lab) * soft + lab * soft[partner.to(soft.device)]
        record = AugmentRecord(applied=chosen.to(dev), partner=partner.to(dev), region=region,
                               share=share, maps=maps)
        return out, mixed, record

    def _draw(self, b: int) -> Tensor:
        raise NotImplementedError

    def _region(self, maps: Tensor, draws: Tensor) -> Tensor:
        raise NotImplementedError


class AttentiveCutMix(_Mix):
    """Attentive CutMix: paste the most activated grid cells of another image.

    Each image i is paired with image j = perm(i) of the batch (a random permutation; with
    probability ``1 - p`` image i is left as it is). The image is cut into a ``grid x grid``
    lattice (cell rows ``{y : floor(y * grid / H) = r}``, columns likewise); the cells are
    ranked by the mean of j's map ``m_j`` over them (ties in a random order, so an all-zero
    map gives random cells), and the top ``cells`` cells M of image j replace those of
    image i:

        x~_i = 1_M * x_j + (1 - 1_M) * x_i,   y~_i = (1 - a) y_i + a y_j,   a = |M| / (H W),

    ``a`` being the exact pasted pixel share (``cells / grid**2`` when the grid divides
    the image). Walawalkar et al. 2020, https://arxiv.org/abs/2003.13048, with 7 x 7 cells
    and the top 6; the paper ranks cells by a pretrained extractor's last feature map,
    here by the CAM of j's labelled class (``method``, ``target``) at the image's size.

    Args:
        model: the classifier whose maps rank the cells (never changed).
        cells: how many cells to paste, 1 <= cells <= grid**2.
        grid: cells per side; H and W must be >= grid.
        p: probability that an image receives cells.
        method, layer, target, num_classes, seed, **method_options: as :class:`CamErase`.

    >>> mix = AttentiveCutMix(model, cells=6, grid=7, num_classes=10, seed=0)
    >>> x, y = mix(images, labels)            # y: (B, 10), 6/49 of it the partner's class
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cells: int = 6,
        grid: int = 7,
        p: float = 1.0,
        method: str = "gradcam",
        layer: LayerSpec = "auto",
        target: str = "label",
        num_classes: int | None = None,
        seed: int = 0,
        **method_options: Any,
    ) -> None:
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a whole number >= 1, got {grid!r}")
        if isinstance(cells, bool) or not isinstance(cells, int) or not 1 <= cells <= grid**2:
            raise ValueError(
                f"cells must be a whole number in 1..{grid**2} (grid={grid}), got {cells!r}"
            )
        self.cells = cells
        self.grid = grid
        super().__init__(model, p=p, method=method, layer=layer, target=target,
                         num_classes=num_classes, seed=seed, method_options=method_options)

    def _check(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = super()._check(images, labels)
        h, w = images.shape[2:]
        if h < self.grid or w < self.grid:
            raise ValueError(
                f"images of {h} x {w} pixels cannot be cut into {self.grid} x {self.grid} "
                f"cells; use grid <= {min(h, w)}"
            )
        return out

    def _region(self, maps: Tensor, draws: Tensor) -> Tensor:
        b, h, w = maps.shape
        g = self.grid
        rows = F.one_hot(torch.arange(h, device=maps.device) * g // h, g).to(maps.dtype)
        cols = F.one_hot(torch.arange(w, device=maps.device) * g // w, g).to(maps.dtype)
        sums = torch.einsum("bhw,hr,wc->brc", maps, rows, cols)
        means = (sums / (rows.sum(0)[:, None] * cols.sum(0)[None, :])).flatten(1)
        # rank by mean, ties (an all-zero map: every cell) in the drawn random order
        shuffle = torch.argsort(draws, dim=1).to(maps.device)
        ranked = torch.argsort(means.gather(1, shuffle), dim=1, descending=True, stable=True)
        order = shuffle.gather(1, ranked)
        pick = torch.zeros(b, g * g, dtype=maps.dtype, device=maps.device)
        pick.scatter_(1, order[:, : self.cells], 1.0)
        pixels = torch.einsum("hr,brc,wc->bhw", rows, pick.view(b, g, g), cols)
        return pixels > 0.5

    def _draw(self, b: int) -> Tensor:
        return torch.rand(b, self.grid**2, generator=self.generator, dtype=torch.float64)

    def _options(self) -> str:
        return (f"cells={self.cells}, grid={self.grid}, p={self.p}, target={self.target!r}, "
                f"seed={self.seed}")


class SaliencyMix(_Mix):
    """SaliencyMix with the CAM as saliency: a CutMix box centred on the partner's peak.

    Each image i is paired with j = perm(i) (a random permutation; with probability
    ``1 - p`` image i is left as it is). Per image, ``lam ~ Beta(alpha, alpha)`` gives the
    box size ``bh = floor(H sqrt(1 - lam))``, ``bw = floor(W sqrt(1 - lam))`` (as CutMix);
    the box's centre pixel ``(y0 + bh // 2, x0 + bw // 2)`` is the peak of j's map (its
    first maximum in raster order; a uniform random pixel when the map is all zero, as
    CutMix), the box is clipped to the image, and j's pixels in it are pasted at the same
    place of image i:

        x~_i = 1_B * x_j + (1 - 1_B) * x_i,   y~_i = (1 - a) y_i + a y_j,   a = |B| / (H W),

    with ``a`` the clipped box's true area share. Uddin et al. 2021,
    https://arxiv.org/abs/2006.01791 (their saliency is a bottom-up saliency detector; here
    the CAM of j's labelled class); CutMix: Yun et al. 2019, https://arxiv.org/abs/1905.04899.
    One ``lam`` per image (CutMix draws one per batch).

    Args:
        model: the classifier whose maps place the boxes (never changed).
        alpha: the Beta distribution's parameter (1: lam uniform in [0, 1]).
        p: probability that an image receives a box.
        method, layer, target, num_classes, seed, **method_options: as :class:`CamErase`.

    >>> mix = SaliencyMix(model, num_classes=10, seed=0)
    >>> x, y = mix(images, labels)            # y: (B, 10) mixed by the box's area
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 1.0,
        p: float = 1.0,
        method: str = "gradcam",
        layer: LayerSpec = "auto",
        target: str = "label",
        num_classes: int | None = None,
        seed: int = 0,
        **method_options: Any,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            math.isfinite(alpha) and alpha > 0
        ):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        super().__init__(model, p=p, method=method, layer=layer, target=target,
                         num_classes=num_classes, seed=seed, method_options=method_options)

    def _draw(self, b: int) -> Tensor:
        lam = _beta(self.alpha, b, self.generator)
        centre = torch.rand(b, 2, generator=self.generator, dtype=torch.float64)
        return torch.cat([lam[:, None], centre], 1)

    def _region(self, maps: Tensor, draws: Tensor) -> Tensor:
        b, h, w = maps.shape
        cut = torch.sqrt(1 - draws[:, 0])  # float64 on the CPU, then whole pixels
        sizes = torch.stack([torch.floor(h * cut), torch.floor(w * cut),
                             torch.floor(draws[:, 1] * h), torch.floor(draws[:, 2] * w)], 1)
        bh, bw, ry, rx = sizes.long().to(maps.device).unbind(1)
        flat = maps.flatten(1)
        peak = flat.argmax(1)
        py, px = peak // w, peak % w
        empty = flat.amax(1) <= 0  # nothing for the class: a random centre, as CutMix
        py, px = torch.where(empty, ry, py), torch.where(empty, rx, px)
        y0, x0 = py - bh // 2, px - bw // 2
        ys = torch.arange(h, device=maps.device).view(1, h, 1)
        xs = torch.arange(w, device=maps.device).view(1, 1, w)
        inside_y = (ys >= y0.view(b, 1, 1)) & (ys < (y0 + bh).view(b, 1, 1))
        inside_x = (xs >= x0.view(b, 1, 1)) & (xs < (x0 + bw).view(b, 1, 1))
        return inside_y & inside_x

    def _options(self) -> str:
        return f"alpha={self.alpha}, p={self.p}, target={self.target!r}, seed={self.seed}"


def _summed_area(mask: Tensor) -> Tensor:
    """(B, H + 1, W + 1) int64: entry (y, x) counts the True pixels of ``mask[:, :y, :x]``."""
    b, h, w = mask.shape
    table = torch.zeros(b, h + 1, w + 1, dtype=torch.int64, device=mask.device)
    table[:, 1:, 1:] = mask.long().cumsum(1).cumsum(2)
    return table


def _free_spots(table: Tensor, bh: Tensor, bw: Tensor, u: Tensor) -> Tensor:
    """For each image, the flat index ``y0 * W + x0`` of a ``bh x bw`` box (sizes (B,))
    inside the image holding no protected pixel: the ``floor(u * n)``-th of the n free
    top-left positions in raster order; -1 where n = 0 or the size does not fit.

    ``table`` is the protected masks' summed-area table (:func:`_summed_area`), so each
    box's protected pixels are counted with four look-ups, all images and places at once.
    """
    b, h, w = table.shape[0], table.shape[1] - 1, table.shape[2] - 1
    ys = torch.arange(h, device=table.device).view(1, h, 1)
    xs = torch.arange(w, device=table.device).view(1, 1, w)
    y1, x1 = ys + bh.view(b, 1, 1), xs + bw.view(b, 1, 1)
    inside = (y1 <= h) & (x1 <= w) & (bh >= 1).view(b, 1, 1) & (bw >= 1).view(b, 1, 1)
    y1, x1 = y1.clamp(max=h), x1.clamp(max=w)
    flat = table.flatten(1)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        index = (yy * (w + 1) + xx).expand(b, h, w).reshape(b, -1)
        return flat.gather(1, index).view(b, h, w)

    count = at(y1, x1) - at(ys, x1) - at(y1, xs) + at(ys, xs)
    free = (inside & (count == 0)).flatten(1)
    n = free.sum(1)
    k = torch.minimum(torch.floor(u * n).long(), n - 1)
    index = (free.cumsum(1) <= k.view(b, 1)).sum(1)  # the position of the k-th free one
    return torch.where(n > 0, index, torch.full_like(index, -1))


def _beta(alpha: float, n: int, generator: torch.Generator) -> Tensor:
    """n draws of Beta(alpha, alpha) from ``generator``: X / (X + Y) with X, Y ~ Gamma(alpha)
    (Marsaglia & Tsang 2000; for alpha < 1, Gamma(alpha + 1) * U^(1 / alpha)); alpha = 1
    is U(0, 1) directly."""
    if alpha == 1.0:
        return torch.rand(n, generator=generator, dtype=torch.float64)
    x = _gamma(alpha, n, generator)
    y = _gamma(alpha, n, generator)
    return x / (x + y)


def _gamma(alpha: float, n: int, generator: torch.Generator) -> Tensor:
    boost = alpha < 1
    a = alpha + 1 if boost else alpha
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while len(todo):
        z = torch.randn(len(todo), generator=generator, dtype=torch.float64)
        u = torch.rand(len(todo), generator=generator, dtype=torch.float64)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        out = out * u ** (1 / alpha)
    return out


def _probability(value: Any, name: str = "p") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and 0 <= value <= 1
    ):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _pair(name: str, value: Any, upper: float = math.inf) -> tuple[float, float]:
    ok = (
        isinstance(value, (tuple, list)) and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    if not ok or not (0 < value[0] <= value[1] <= upper):
        bound = f" <= {upper:g}" if math.isfinite(upper) else ""
        raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi{bound}, got {value!r}")
    return float(value[0]), float(value[1])
