"""Finding the layer to explain and turning its output into (B, C, *spatial)."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import unknown_choice

logger = logging.getLogger("camlens")

LayerSpec = str | nn.Module | Sequence[str | nn.Module]
Reshape = Callable[[Tensor], Tensor]

# Names of the usual "good" transformer layer: the first norm of a block.
_TOKEN_LAYER_SUFFIXES = ("ln_1", "norm1", "layernorm_before")

_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def output_tensor(output: Any) -> Tensor | None:
    """The tensor a layer produced: the output itself or the first item of a tuple/list."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def resolve_layers(model: nn.Module, layer: LayerSpec) -> list[tuple[str, nn.Module]] | None:
    """``(name, module)`` pairs for ``layer``; ``None`` means "auto" (found at call time)."""
    if getattr(model, "camlens_adapter", False):  # a Keras model: layers by Keras name
        return model.resolve_layers(layer)  # type: ignore[operator, no-any-return]
    if isinstance(layer, str) and layer == "auto":
        return None
    specs: list[Any] = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not specs:
        raise ValueError("layer is an empty list; give at least one layer name or module")
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for spec in specs:
        if isinstance(spec, str):
            out.append((spec, _get_submodule(model, spec)))
        elif isinstance(spec, nn.Module):
            if id(spec) not in names:
                raise ValueError(
                    f"the layer {type(spec).__name__} given is not part of the model; pass a "
                    "module of this model (e.g. model.layer4) or its dotted name"
                )
            out.append((names[id(spec)] or "<model>", spec))
        else:
            raise TypeError(
                f"layer must be 'auto', a dotted name, a module or a list of these, got "
                f"{type(spec).__name__}"
            )
    return out


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise unknown_choice(
            f"layer of {type(model).__name__}", name, names, "See model.named_modules()"
        ) from None


def find_auto_layer(model: nn.Module, inputs: Tensor) -> tuple[str, nn.Module]:
    """The layer that ``layer="auto"`` explains, found by a probe forward of one image.

    The probe runs under ``no_grad`` once per model and input shape (the result is cached)
    and looks at every module's output. For image inputs (B, C, H, W):

    1. the last block's first norm of a transformer (a module named ``ln_1``, ``norm1`` or
       ``layernorm_before`` whose output is tokens (B, N, C) that form a grid, or a
       channels-last grid (B, H, W, C)): ViT, DeiT, Swin in torchvision, timm and
       Hugging Face;
    2. else the last such token or channels-last output after the last (B, C, H, W) one;
    3. else the last module whose output keeps spatial dimensions (a CNN's last stage);
       in a model with a ``backbone`` (torchvision detectors and segmenters) the last
       such module of the backbone (``backbone.body.layer4``, ``backbone.layer4``).

    Outputs for only part of the image (Swin's windows, batch size != 1 in the probe) and
    attention heads (B, heads, N, C/heads) never count as grids.
    """
    if getattr(model, "camlens_adapter", False):
        return model.auto_layer(inputs)  # type: ignore[operator, no-any-return]
    key = (inputs.ndim, tuple(inputs.shape[1:]), inputs.dtype, inputs.device.type)
    cache = _AUTO_CACHE.setdefault(model, {})
    if key not in cache:
        cache[key] = _probe(model, inputs)
    name = cache[key]
    module = model.get_submodule(name)
    return name, module


def _probe(model: nn.Module, inputs: Tensor) -> str:
    names = {id(m): n for n, m in model.named_modules() if n}
    seen: list[tuple[str, tuple[int, ...]]] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        t = output_tensor(output)
        if t is not None and id(module) in names:
            seen.append((names[id(module)], tuple(t.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in names]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for h in handles:
            h.remove()
    nd = inputs.ndim
    scope = _backbone_scope(model)
    spatial = [
        i for i, (n, s) in enumerate(seen)
        if len(s) == nd and s[0] == 1 and math.prod(s[2:]) > 1
        and (not scope or n == scope or n.startswith(scope + "."))
    ]
    picks: list[int] = []
    if nd == 4:
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        grids = [i for i, (_, s) in enumerate(seen) if _is_token_grid(s, size)]
        feature_maps = [
            i for i in spatial
            if seen[i][1][0] == 1 and i not in grids
            and _mismatch(seen[i][1][2], seen[i][1][3], size) <= math.log(2)
        ]
        last_map = feature_maps[-1] if feature_maps else -1
        preferred = [i for i in grids if seen[i][0].endswith(_TOKEN_LAYER_SUFFIXES)]
        picks = preferred or [i for i in grids if i > last_map]
    if picks:
        chosen = seen[picks[-1]][0]
    elif spatial:
        chosen = seen[spatial[-1]][0]
    else:
        raise ValueError(
            f"layer='auto' found no module of {type(model).__name__} whose output keeps "
            "spatial dimensions; pass layer='name' (see model.named_modules())"
        )
    shape = dict(seen)[chosen]
    logger.info("camlens: layer='auto' picked %r (output shape %s)", chosen, shape)
    return chosen


def _backbone_scope(model: nn.Module) -> str:
    """Detection and segmentation models keep their feature extractor in ``backbone``
    (torchvision: ``backbone.body`` behind an FPN); auto looks there, because the heads'
    tensors are per region or already class scores. "" when there is no such module."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return ""
    return "backbone.body" if isinstance(getattr(backbone, "body", None), nn.Module) else "backbone"


def _is_token_grid(shape: Sequence[int], size: tuple[int, int]) -> bool:
    """Whether a probe output (batch 1) is tokens on a grid or a channels-last grid."""
    if not shape or shape[0] != 1:
        return False
    if len(shape) == 3:
        return _token_grid(shape, size) is not None
    return len(shape) == 4 and _is_channels_last(shape, size)


def _fits_stride(h: int, w: int, size: Sequence[int]) -> bool:
    """Whether one whole-number stride s maps an H x W input onto an h x w grid, both sides
    rounded down (patch embeddings) or both rounded up (Swin pads to whole patches)."""
    big_h, big_w = size[-2], size[-1]
    if h < 1 or w < 1:
        return False
    # floor(H / s) == h  <=>  H / (h + 1) < s <= H / h
    lo, hi = max(big_h / (h + 1), big_w / (w + 1)), min(big_h / h, big_w / w)
    if math.floor(hi) > lo:
        return True
    # ceil(H / s) == h  <=>  H / h <= s < H / (h - 1)
    lo = max(big_h / h, big_w / w)
    hi = min(big_h / (h - 1) if h > 1 else math.inf, big_w / (w - 1) if w > 1 else math.inf)
    return math.ceil(lo) < hi


def _mismatch(h: int, w: int, size: Sequence[int]) -> float:
    """|log| of the ratio of the vertical and horizontal strides of an h x w grid (0: the
    input's aspect exactly; infinite: larger than the input)."""
    big_h, big_w = size[-2], size[-1]
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return math.inf
    return abs(math.log((big_h / h) / (big_w / w)))


def _is_channels_last(shape: Sequence[int], size: Sequence[int]) -> bool:
    """Whether a 4-d output (B, a, b, c) is channels-last (B, H, W, C) rather than (B, C, H, W).

    Its grid is (a, b) if channels-last, (b, c) if channels-first. The grid that a
    whole-number stride maps the input onto wins, then the one closer to the input's
    aspect; a tie is channels-first (the PyTorch convention), so a (B, C, H, W) output
    with C == H is never misread. Only when C is as small as the grid and the input square
    (say (B, 7, 7, 7)) are both readings equally good: pass ``reshape=`` there.
    """
    _, a, b, c = shape
    first = (_fits_stride(b, c, size), -_mismatch(b, c, size))
    last = (_fits_stride(a, b, size), -_mismatch(a, b, size))
    return last > first


def _token_grid(shape: Sequence[int], input_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """For tokens (B, N, C): (leading tokens to drop, grid height, grid width), or None.

    Drops the fewest leading tokens (class, distillation, registers: at most 8) such that
    the rest fill an h x w grid onto which a whole-number stride maps the input (e.g.
    196 = 14 x 14 patches of 16 px for 224 x 224, after the class token). If no such grid
    exists (a model that resizes its input, say), a grid with the input's aspect within
    10 % is accepted. Among several grids the one closest to the input's aspect wins.
    """
    n, channels = shape[1], shape[2]
    if channels < 2:
        return None
    size = (int(input_shape[-2]), int(input_shape[-1]))
    for strict in (True, False):
        for extra in range(0, min(n - 4, 8) + 1):
            grid = _best_grid(n - extra, size, strict)
            if grid is not None:
                return extra, grid[0], grid[1]
    return None


def _best_grid(cells: int, size: tuple[int, int], strict: bool) -> tuple[int, int] | None:
    best: tuple[float, int, int] | None = None
    for d in range(2, math.isqrt(cells) + 1):
        if cells % d:
            continue
        for h, w in ((d, cells // d), (cells // d, d)):
            bad = _mismatch(h, w, size)
            ok = _fits_stride(h, w, size) if strict else bad <= math.log(1.1)
            if ok and w > 1 and (best is None or bad < best[0]):
                best = (bad, h, w)
    return None if best is None else (best[1], best[2])


def to_channels_first(
    t: Tensor, input_shape: Sequence[int], reshape: Reshape | None, lead: int = 1
) -> Tensor:
    """Turn a layer output (or its gradient, with ``lead`` = 2 leading dims) into
    (lead..., C, *spatial).

    Handles (B, C, *S) as is, channels-last (B, H, W, C) (Swin in torchvision and timm)
    and transformer tokens (B, N, C) (leading class/distillation tokens dropped, grid
    inferred from the input's size). ``reshape`` overrides all of this.
    """
    lead_shape = t.shape[:lead]
    flat = t.reshape(-1, *t.shape[lead:]) if lead != 1 else t
    input_ndim = len(input_shape)
    if reshape is not None:
        out = reshape(flat)
        if not isinstance(out, Tensor) or out.ndim < 3 or out.shape[0] != flat.shape[0]:
            raise ValueError(
                f"reshape returned {getattr(out, 'shape', type(out).__name__)} for a layer "
                f"output of shape {tuple(flat.shape)}; it must return (B, C, *spatial)"
            )
    elif flat.ndim == input_ndim:
        out = flat
        if flat.ndim == 4 and _is_channels_last(flat.shape, input_shape):
            out = flat.permute(0, 3, 1, 2)  # channels-last (B, H, W, C), e.g. Swin
    elif input_ndim == 4 and flat.ndim == 3 and (grid := _token_grid(flat.shape, input_shape)):
        extra, h, w = grid
        out = flat[:, extra:, :].reshape(flat.shape[0], h, w, flat.shape[2]).permute(0, 3, 1, 2)
    else:
        what = (
            f"its {flat.shape[1]} tokens (after dropping up to 8 leading ones) form no grid "
            f"for an input of {input_shape[-2]} x {input_shape[-1]}"
            if input_ndim == 4 and flat.ndim == 3
            else "it has no spatial dimensions to map"
        )
        raise ValueError(
            f"cannot turn a layer output of shape {tuple(flat.shape)} into "
            f"(B, C, *spatial) for inputs of shape {tuple(input_shape)}: {what}. Pass "
            "reshape=callable(tensor) -> (B, C, H, W), e.g. for tokens with one class token "
            "on an h x w grid: reshape=lambda t: t[:, 1:].reshape(len(t), h, w, -1)"
            ".permute(0, 3, 1, 2); or pick another layer"
        )
    if lead != 1:
        out = out.reshape(*lead_shape, *out.shape[1:])
    return out


def from_channels_first(x: Tensor, like: Tensor, input_shape: Sequence[int]) -> Tensor:
    """The inverse of :func:`to_channels_first`: (N, C, *spatial) back into the layout of
    the layer output ``like`` (1 or N items), e.g. to swap edited activations into a
    transformer (Ablation-CAM). Leading class/distillation tokens are taken from ``like``.
    """
    n = x.shape[0]
    if like.ndim == x.ndim and like.shape[1:] == x.shape[1:]:
        return x
    if like.ndim == 4 and x.ndim == 4 and _is_channels_last(like.shape, input_shape):
        return x.permute(0, 2, 3, 1)
    if like.ndim == 3 and x.ndim == 4 and (grid := _token_grid(like.shape, input_shape)):
        extra = like[:, : grid[0], :].expand(n, -1, -1).to(x.dtype)
        return torch.cat([extra, x.flatten(2).transpose(1, 2)], dim=1)
    raise ValueError(
        f"cannot put activations of shape {tuple(x.shape)} back into a layer output of "
        f"shape {tuple(like.shape)}"
    )
