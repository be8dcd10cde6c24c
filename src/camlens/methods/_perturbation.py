"""Perturbation methods: channel weights (or maps) from extra forwards of changed inputs.

The engine's :class:`~camlens._scorer.Scorer` runs those forwards in chunks of
``batch_size`` without autograd. Exact shortcuts only: identical masked inputs are scored
once (a channel that is zero everywhere, or two channels with the same normalised map,
give the same input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._options import Choice, Count, Flag, Real
from .._postprocess import _MODES
from .._registry import register_method
from ._base import LayerData, Method, minmax


def _upsample(x: Tensor, size: tuple[int, ...], align_corners: bool) -> Tensor:
    return F.interpolate(x, size=size, mode=_MODES[len(size)], align_corners=align_corners)


def score_masks(acts: Tensor, size: tuple[int, ...], order: str, align_corners: bool) -> Tensor:
    """Masks (B, C, *size) in [0, 1] from activations (B, C, *S).

    ``order="upsample"``: upsample, then min-max each channel (the Score-CAM paper, and
    pytorch-grad-cam with ``align_corners=True``); ``"normalize"``: min-max at the layer's
    resolution, then upsample (torchcam, ``align_corners=False``).
    """
    if order == "upsample":
        return minmax(_upsample(acts, size, align_corners), 2)
    if order == "normalize":
        return _upsample(minmax(acts, 2), size, align_corners)
    raise ValueError(f"mask_order must be 'upsample' or 'normalize', got {order!r}")


def _unique_channels(acts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Channels whose normalised maps are identical give identical masked inputs.

    Returns (owner image, channel, inverse): the representative (image, channel) pairs and,
    for every (image, channel), the index of its representative. Keys are the min-max
    normalised maps at the layer's resolution: equal keys give equal masks whichever way
    the masks are made (upsampling is linear), so merging them is exact.
    """
    b, c = acts.shape[:2]
    keys = minmax(acts, 2).flatten(2)  # (B, C, P): equal keys <=> equal masks (exact)
    owners, channels, inverse = [], [], torch.empty(b, c, dtype=torch.long)
    offset = 0
    for i in range(b):
        uniq, inv = torch.unique(keys[i], dim=0, return_inverse=True)
        first = torch.full((uniq.shape[0],), c, dtype=torch.long, device=inv.device)
        first.scatter_reduce_(0, inv, torch.arange(c, device=inv.device), reduce="amin")
        owners.append(torch.full_like(first, i))
        channels.append(first)
        inverse[i] = inv.cpu() + offset
        offset += uniq.shape[0]
    return torch.cat(owners), torch.cat(channels), inverse.to(acts.device)


class _ScoreBase(Method):
    needs_gradients = False
    needs_scorer = True

    options = {"batch_size": Count(1), "mask_order": Choice("upsample", "normalize"),
               "align_corners": Flag()}

    def __init__(self, batch_size: int = 32, mask_order: str = "upsample",
                 align_corners: bool = False) -> None:
        self.batch_size = batch_size
        self.mask_order = mask_order
        self.align_corners = bool(align_corners)

    def _masks(self, data: LayerData, owners: Tensor | None = None,
               channels: Tensor | None = None) -> Tensor:
        """Masks (B, C, H, W), or (N, H, W) for the given (image, channel) pairs only."""
        assert data.inputs is not None
        size = tuple(data.inputs.shape[2:])
        if owners is None or channels is None:
            return score_masks(data.activations, size, self.mask_order, self.align_corners)
        picked = data.activations[owners, channels].unsqueeze(1)  # (N, 1, *S)
        return score_masks(picked, size, self.mask_order, self.align_corners)[:, 0]

    def forwards(self, data: LayerData) -> int:
        """One forward per distinct masked input: per image, its channels with distinct
        normalised maps (a dead channel, or two equal maps, cost one forward)."""
        return len(_unique_channels(data.activations)[0]) * getattr(self, "num_samples", 1)

    def _channel_scores(self, data: LayerData, scale: float = 1.0,
                        unique: tuple[Tensor, Tensor, Tensor] | None = None,
                        check: bool = True) -> Tensor:
        """Scores (B, K, C) of ``scale * masks[b, c] * x[b]`` for every image and channel.

        The masks of a chunk are made when the chunk runs: memory follows ``batch_size``.
        ``unique``: ``_unique_channels(data.activations)``, when the caller has it.
        ``check=False``: NaN and inf are left for the caller to find (``Scorer.finite``).
        """
        assert data.scorer is not None and data.inputs is not None
        x = data.inputs
        owners, channels, inverse = unique or _unique_channels(data.activations)

        def make(part: slice) -> Tensor:
            o, ch = owners[part], channels[part]
            return x[o] * (scale * self._masks(data, o, ch)).unsqueeze(1)

        scorer = data.scorer
        scorer.batch_size = self.batch_size
        scores = scorer.scores(make, owners, check=check)  # (U, K)
        if data.counterfactual:  # channels whose masks lower the score weigh most
            scores = -scores
        return scores[inverse].permute(0, 2, 1)  # (B, K, C)


@register_method("scorecam")
class ScoreCAM(_ScoreBase):
    """Score-CAM: each channel weighted by the score of the input masked with it.

    ``H_k = s(Up(A_k))`` (min-max per channel), ``w_k = softmax_k(y(X * H_k))``,
    ``M = ReLU(sum_k w_k A_k)``. Wang et al., CVPRW 2020, https://arxiv.org/abs/1910.01279
    (the softmax over channels is step 9 of the paper's algorithm).

    ``align_corners=True`` upsamples the masks as pytorch-grad-cam does (its
    ``UpsamplingBilinear2d``); ``mask_order="normalize"`` normalises before upsampling,
    as torchcam does. Identical masks are scored once (exact).
    """

    def channel_weights(self, data: LayerData) -> Tensor:
        return torch.softmax(self._channel_scores(data), dim=-1)


@register_method("sscam")
class SSCAM(_ScoreBase):
    """Smoothed Score-CAM: Score-CAM weights averaged over masks with Gaussian noise.

    ``w_k = softmax_k(1/N sum_i y(X * (H_k + n_i)))``, ``n_i ~ N(0, std^2)`` per pixel.
    Wang et al. 2020, https://arxiv.org/abs/2006.14255. Defaults follow torchcam
    (N = 35, std = 2.0, masks normalised before upsampling); seeded by ``seed``. Channels
    whose masks are equal (dead channels) share their noise, so they run once (exact).
    Heavy: ``N`` forwards per distinct channel and image (35 x 1280 at most on
    EfficientNet-Lite0's last layer).
    """

    heavy = True

    options = {**_ScoreBase.options, "num_samples": Count(1), "std": Real(0)}

    def __init__(self, batch_size: int = 32, num_samples: int = 35, std: float = 2.0,
                 mask_order: str = "normalize", align_corners: bool = False) -> None:
        super().__init__(batch_size, mask_order, align_corners)
        self.num_samples = int(num_samples)
        self.std = float(std)

    def channel_weights(self, data: LayerData) -> Tensor:
        assert data.scorer is not None and data.inputs is not None
        x = data.inputs
        b, c = data.activations.shape[:2]
        # Channels with equal masks share their noise draws too (each channel still gets
        # N(mask, std^2) per pixel), so their noisy inputs are equal and run once (exact).
        owners, channels, inverse = _unique_channels(data.activations)
        masks = self._masks(data, owners, channels)  # (U, *S)
        g = torch.Generator(device="cpu").manual_seed(data.seed)
        total = None
        data.scorer.batch_size = self.batch_size
        for _ in range(self.num_samples):  # one draw per channel mask, shared by the images
            noise = torch.randn((c, *masks.shape[1:]), generator=g).to(masks)[channels] * self.std

            def make(part: slice, noise: Tensor = noise) -> Tensor:
                return x[owners[part]] * (masks[part] + noise[part]).unsqueeze(1)

            s = data.scorer.scores(make, owners, check=False)  # (U, K)
            total = s if total is None else total + s
        assert total is not None
        data.scorer.finite(total, owners)  # once: a NaN or inf of any draw stays in the sum
        scores = (total / self.num_samples)[inverse].permute(0, 2, 1)  # (B, K, C)
        return torch.softmax(-scores if data.counterfactual else scores, dim=-1)


@register_method("iscam")
class ISCAM(_ScoreBase):
    """Integrated Score-CAM: Score-CAM scores summed along a path of growing masks.

    ``w_k = softmax_k(1/N sum_{i=1..N} y(X * (sum_{j<=i} j/N) H_k))``.
    Naidu et al. 2020, https://arxiv.org/abs/2010.03023. Defaults follow torchcam
    (N = 10, masks normalised before upsampling). Heavy: ``N`` forwards per distinct
    channel and image.
    """

    heavy = True

    options = {**_ScoreBase.options, "num_samples": Count(1)}

    def __init__(self, batch_size: int = 32, num_samples: int = 10,
                 mask_order: str = "normalize", align_corners: bool = False) -> None:
        super().__init__(batch_size, mask_order, align_corners)
        self.num_samples = int(num_samples)

    def channel_weights(self, data: LayerData) -> Tensor:
        total = None
        coeff = 0.0
        unique = _unique_channels(data.activations)  # the same masks at every step
        for i in range(self.num_samples):
            coeff += (i + 1) / self.num_samples
            s = self._channel_scores(data, scale=coeff, unique=unique, check=False)
            total = s if total is None else total + s
        assert total is not None
        assert data.scorer is not None  # once: a NaN or inf of any step stays in the sum
        b, k, c = total.shape
        data.scorer.finite(total.permute(0, 2, 1).reshape(b * c, k),
                           torch.arange(b, device=total.device).repeat_interleave(c))
        return torch.softmax(total / self.num_samples, dim=-1)


@register_method("ablationcam")
class AblationCAM(Method):
    """Ablation-CAM: the drop in score when a channel is set to zero.

    ``w_k = (y - y_k) / y`` with ``y_k`` the score when ``A_k = 0``; ``M = ReLU(sum w_k A_k)``.
    Desai & Ramaswamy, WACV 2020, https://doi.org/10.1109/WACV45572.2020.9093360.
    Only the part of the model after the layer runs once per ablation: the part before it
    runs once per chunk (exact; the image is repeated instead where a model cannot run
    that way). A channel that is zero everywhere is not run: zeroing it changes nothing,
    so its weight is exactly 0. pytorch-grad-cam ablates with a very negative value when a
    layer can be negative; we zero, as the paper does.
    """

    needs_gradients = False
    needs_scorer = True
    partial = True  # its forwards run the model after the layer only (when it can)

    options = {"batch_size": Count(1)}

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size

    def forwards(self, data: LayerData) -> int:
        """Per image: the unablated layer output and one ablation per channel that is not
        all zero (zeroing a zero channel changes nothing: its weight is exactly 0)."""
        live = data.activations.flatten(2).ne(0).any(dim=-1)  # (B, C)
        return int(live.sum()) + data.activations.shape[0]

    def channel_weights(self, data: LayerData) -> Tensor:
        assert data.scorer is not None and data.inputs is not None and data.layer is not None
        if data.activations.ndim != data.inputs.ndim:
            raise ValueError("ablationcam needs a layer whose output is (B, C, *spatial)")
        scorer = data.scorer
        scorer.batch_size = self.batch_size
        acts = data.activations
        b, c = acts.shape[:2]
        live = acts.flatten(2).ne(0).any(dim=-1)  # (B, C): channels whose ablation matters
        weights = []
        for i in range(b):
            channels = torch.nonzero(live[i]).flatten()

            # item 0 is the layer output itself, item j ablates channels[j - 1]: the score
            # y and the y_k come from the very same computation, rounding included
            def make(part: slice, i: int = i, channels: Tensor = channels) -> Tensor:
                out = acts[i].expand(part.stop - part.start, *acts.shape[1:]).clone()
                idx = torch.arange(max(part.start, 1), part.stop, device=acts.device)
                out[idx - part.start, channels[idx - 1]] = 0  # row indices known on the host
                return out

            scores = scorer.with_layer_output(data.layer[1], data.inputs[i : i + 1], make, i,
                                              len(channels) + 1, call=data.layer_call)
            base, ablated = scores[0], scores[1:]
            w = scores.new_zeros(c, scores.shape[1])  # (C, K); zero channels weigh 0
            w[channels] = (base - ablated) / base
            weights.append(w)
        w = torch.stack(weights).permute(0, 2, 1)
        return -w if data.counterfactual else w


@register_method("rise")
class RISE(Method):
    """RISE: the average of random masks, each weighted by the score of the masked input.

    ``S = 1 / (N p) sum_i f(X * M_i) M_i``; ``M_i``: a random ``grid`` x ``grid`` binary
    grid (keep probability ``p``), upsampled bilinearly and shifted at random by up to one
    cell. ``f`` is the class probability for class targets (softmax), else the target's
    score. Petsiuk et al., BMVC 2018, https://arxiv.org/abs/1806.07421. Seeded by ``seed``.
    Needs no layer; the map has the input's resolution.
    """

    needs_gradients = False
    needs_scorer = True
    needs_layer = False
    heavy = True

    def forwards(self, data: LayerData) -> int:
        assert data.inputs is not None
        return data.inputs.shape[0] * self.n_masks

    options = {"n_masks": Count(1), "grid": Count(1), "p": Real(0, 1, low_open=True),
               "batch_size": Count(1)}

    def __init__(self, n_masks: int = 4000, grid: int = 7, p: float = 0.5,
                 batch_size: int = 32) -> None:
        self.n_masks, self.grid, self.p = int(n_masks), int(grid), float(p)
        self.batch_size = batch_size

    def masks(self, size: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
        """The N masks (N, *size), generated on the CPU from ``seed``.

        Images get a ``grid`` x ``grid`` grid; signals (L,) a grid of ``grid`` cells;
        videos (T, H, W) ``min(grid, T)`` cells in time and ``grid`` x ``grid`` in space.
        """
        if self.grid > min(size[-2:]):
            dims = " x ".join(map(str, size))
            raise ValueError(
                f"rise grid {self.grid} x {self.grid} is larger than the {dims} input; use grid <= "
                f"{min(size[-2:])}"
            )
        cells_per_dim = [self.grid] * len(size)
        if len(size) == 3:
            cells_per_dim[0] = min(self.grid, size[0])
        g = torch.Generator(device="cpu").manual_seed(seed)
        cell = [-(-n // c) for n, c in zip(size, cells_per_dim)]
        up = tuple((c + 1) * k for c, k in zip(cells_per_dim, cell))
        cells = (torch.rand(self.n_masks, 1, *cells_per_dim, generator=g) < self.p).float()
        big = F.interpolate(cells, size=up, mode=_MODES[len(size)], align_corners=False)[:, 0]
        shifts = [torch.randint(0, k, (self.n_masks,), generator=g) for k in cell]
        index: list[Tensor] = [torch.arange(self.n_masks).view(-1, *([1] * len(size)))]
        for d, (n, shift) in enumerate(zip(size, shifts)):
            pos = (shift[:, None] + torch.arange(n)[None]).clamp_max(up[d] - 1)
            shape = [self.n_masks] + [1] * len(size)
            shape[d + 1] = n
            index.append(pos.view(shape))
        return big[tuple(index)].to(device)

    def compute(self, data: LayerData) -> Tensor:
        assert data.scorer is not None and data.inputs is not None
        x = data.inputs
        masks = self.masks(tuple(x.shape[2:]), data.seed, x.device)  # (N, *S)
        scorer = data.scorer
        scorer.batch_size = self.batch_size
        b, n = x.shape[0], self.n_masks
        owners = torch.arange(b, device=x.device).repeat_interleave(n)

        def make(part: slice) -> Tensor:
            idx = torch.arange(part.start, part.stop, device=x.device)
            return x[owners[part]] * masks[idx % n].unsqueeze(1)

        scores = scorer.scores(make, owners, softmax=True)  # probabilities, as in the paper
        scores = scores.view(b, n, -1)  # (B, N, K)
        sal = torch.einsum("bnk,n...->bk...", scores, masks.to(scores.dtype))
        sal = sal / (n * self.p)
        return -sal if data.counterfactual else sal

