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
    """The last module, in the order calls finish, whose output keeps spatial dimensions.

    Found once per model and input shape by a probe forward of one image under
    ``no_grad`` (the result is cached). For image inputs, token outputs (B, N, C) that come
    after the last (B, C, H, W) output (a vision transformer after its patch embedding)
    win, preferring the last block's first norm (``ln_1``, ``norm1``, ``layernorm_before``).
    """
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
    spatial = [i for i, (_, s) in enumerate(seen) if len(s) == nd and math.prod(s[2:]) > 1]
    last_spatial = spatial[-1] if spatial else -1
    tokens = [
        i
        for i, (_, s) in enumerate(seen)
        if i > last_spatial and nd == 4 and len(s) == 3 and _token_grid(s, inputs.shape)
    ]
    preferred = [i for i in tokens if seen[i][0].endswith(_TOKEN_LAYER_SUFFIXES)]
    if preferred or tokens:
        chosen = seen[(preferred or tokens)[-1]][0]
    elif spatial:
        chosen = seen[last_spatial][0]
    else:
        raise ValueError(
            f"layer='auto' found no module of {type(model).__name__} whose output keeps "
            "spatial dimensions; pass layer='name' (see model.named_modules())"
        )
    shape = dict(seen)[chosen]
    logger.info("camlens: layer='auto' picked %r (output shape %s)", chosen, shape)
    return chosen


def _token_grid(shape: Sequence[int], input_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """For tokens (B, N, C): (leading tokens to drop, grid height, grid width), or None.

    Drops up to 8 leading tokens (class, distillation, registers) until the rest fill a
    grid with the input's aspect ratio (within 10 %).
    """
    n = shape[1]
    aspect = input_shape[-2] / input_shape[-1]
    for extra in range(0, min(n - 4, 8) + 1):
        cells = n - extra
        h = max(1, round(math.sqrt(cells * aspect)))
        w = cells // h
        if h > 1 and w > 1 and h * w == cells and abs(h / w - aspect) <= 0.1 * aspect:
            return extra, h, w
    return None


def to_channels_first(
    t: Tensor, input_shape: Sequence[int], reshape: Reshape | None, lead: int = 1
) -> Tensor:
    """Turn a layer output (or its gradient, with ``lead`` = 2 leading dims) into
    (lead..., C, *spatial).

    Handles (B, C, *S) as is, channels-last (B, H, W, C) and transformer tokens (B, N, C)
    (leading class/distillation tokens dropped, grid inferred from the input's aspect).
    ``reshape`` overrides all of this.
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
        if (
            flat.ndim == 4
            and flat.shape[2] != flat.shape[3]
            and flat.shape[1] == flat.shape[2]
        ):
            out = flat.permute(0, 3, 1, 2)  # channels-last (B, H, W, C), e.g. Swin
    elif input_ndim == 4 and flat.ndim == 3 and (grid := _token_grid(flat.shape, input_shape)):
        extra, h, w = grid
        out = flat[:, extra:, :].reshape(flat.shape[0], h, w, flat.shape[2]).permute(0, 3, 1, 2)
    else:
        raise ValueError(
            f"cannot turn a layer output of shape {tuple(flat.shape)} into "
            f"(B, C, *spatial) for inputs of shape {tuple(input_shape)}; pass "
            "reshape=callable(tensor) -> (B, C, H, W)"
        )
    if lead != 1:
        out = out.reshape(*lead_shape, *out.shape[1:])
    return out
