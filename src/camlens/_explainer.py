"""The public entry points: :func:`explain` and the reusable :class:`Explainer`."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from ._engine import PassResult, run_pass
from ._layers import LayerSpec, Reshape, resolve_layers
from ._postprocess import fuse, normalize, upsample
from ._registry import available_methods, create_method
from ._validate import check_inputs, check_model, check_size
from .methods._base import Method
from .targets import TargetLike, as_target


class Explainer:
    """A reusable CAM explainer for one model, method and layer.

    Hooks exist only while a call runs; the model's modes, ``requires_grad`` and ``.grad``
    are restored after every call, also when it raises.

    >>> with Explainer(model, "gradcam++", layer="layer4") as explainer:
    ...     maps = explainer(images, target=camlens.TopK(3))   # (B, 3, H, W)

    Args:
        model: any ``nn.Module``.
        method: a name from :func:`camlens.available_methods`.
        layer: ``"auto"``, a module, a dotted name, or a list of these (maps fused).
        reshape: callable turning the layer output into (B, C, *spatial), overriding the
            automatic handling of tokens (B, N, C) and channels-last (B, H, W, C).
        eval_mode: run the model in eval mode during the call (its modes are restored).
        **method_options: options of the method, e.g. ``center=True`` for ``eigencam``.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "gradcam",
        layer: LayerSpec = "auto",
        *,
        reshape: Reshape | None = None,
        eval_mode: bool = True,
        **method_options: Any,
    ) -> None:
        self.model = check_model(model)
        self.method = create_method(method, **method_options)
        self._layers = resolve_layers(model, layer)
        if reshape is not None and not callable(reshape):
            raise TypeError("reshape must be a callable(tensor) -> (B, C, *spatial)")
        self.reshape = reshape
        self.eval_mode = eval_mode
        self.last_output: Any = None
        self.last_classes: Tensor | None = None
        self.layer_names: list[str] = [n for n, _ in self._layers] if self._layers else []

    def __call__(
        self,
        inputs: Tensor,
        target: TargetLike = None,
        size: Any = "input",
        normalize: bool = True,
        counterfactual: bool = False,
    ) -> Tensor:
        """Maps for ``inputs``: (B, H, W) for one target per image, else (B, K, H, W)."""
        inputs = check_inputs(inputs, self.model)
        size = check_size(size)
        if counterfactual and not self.method.class_specific:
            raise ValueError(
                f"{self.method.name} is class-agnostic, so counterfactual=True does not apply; "
                "use a gradient method such as 'gradcam'"
            )
        result = run_pass(
            self.model,
            inputs,
            [self.method],
            self._layers,
            as_target(target),
            counterfactual=counterfactual,
            reshape=self.reshape,
            eval_mode=self.eval_mode,
        )
        self.layer_names = result.layer_names
        self.last_output = _detach(result.output)
        self.last_classes = result.classes
        return _finish(self.method, result, inputs, size, normalize)

    def __enter__(self) -> Explainer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.last_output = None
        self.last_classes = None

    def __repr__(self) -> str:
        layers = self.layer_names or "auto"
        model = type(self.model).__name__
        return f"Explainer({model}, method={self.method.name!r}, layer={layers})"


normalize_maps = normalize


class Comparison(dict):  # type: ignore[type-arg]
    """``{method name: maps or exception}`` from :func:`compare`, plus the pass's results."""

    def __init__(self, output: Any, classes: Tensor | None, layer_names: list[str]) -> None:
        super().__init__()
        self.output = output
        self.classes = classes
        self.layer_names = layer_names


def _finish(
    method: Method, result: PassResult, inputs: Tensor, size: Any, normalize: bool
) -> Tensor:
    """Method maps of every layer -> resized, fused, normalised float32 maps."""
    maps = [method.compute(d) for d in result.layers]
    if size == "input":
        out_size: tuple[int, ...] = tuple(inputs.shape[2:])
    elif size is None:
        out_size = max((tuple(m.shape[2:]) for m in maps), key=lambda s: torch.Size(s).numel())
    else:
        out_size = size
    if len(out_size) != maps[0].ndim - 2:
        raise ValueError(
            f"size {out_size} does not match the maps' {maps[0].ndim - 2} spatial dimensions"
        )
    fused = fuse([upsample(m.float(), out_size) for m in maps])
    if normalize:
        fused = normalize_maps(fused)
    fused = fused.to(device=inputs.device, dtype=torch.float32)
    return fused[:, 0] if result.single else fused


def _detach(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detach(o) for o in output)
    if isinstance(output, dict):
        return {k: _detach(v) for k, v in output.items()}
    return output


def explain(
    model: nn.Module,
    inputs: Tensor,
    method: str = "gradcam",
    layer: LayerSpec = "auto",
    target: TargetLike = None,
    size: Any = "input",
    normalize: bool = True,
    counterfactual: bool = False,
    *,
    reshape: Reshape | None = None,
    eval_mode: bool = True,
    **method_options: Any,
) -> Tensor:
    """Class activation maps of ``model`` for ``inputs`` in one call.

    Returns float32 maps on the inputs' device: (B, H, W) with one target per image,
    (B, K, H, W) with K targets (``TopK(k)`` or a callable returning (B, K)).

    Args:
        model: any ``nn.Module`` (its state is left exactly as it was).
        inputs: a batch (B, C, H, W); (B, C, L) and (B, C, T, H, W) work too.
        method: a name from :func:`camlens.available_methods`, e.g. ``"gradcam++"``.
        layer: ``"auto"`` (last module keeping spatial dims, logged), a module, a dotted
            name such as ``"layer4.1"``, or a list (maps normalised, averaged, normalised).
        target: ``None`` (top-1 class), an int, one int per image, ``TopK(k)`` or a callable
            ``f(output) -> (B,)`` or ``(B, K)``.
        size: ``"input"`` (bilinear to the inputs' size), ``None`` (layer's size) or (H, W).
        normalize: min-max normalise each map to [0, 1]; ``False`` keeps raw values.
        counterfactual: negate the gradients: regions that argue *against* the target.

    Example:
        >>> maps = camlens.explain(model, images, method="gradcam", layer="layer4")
    """
    explainer = Explainer(
        model, method, layer, reshape=reshape, eval_mode=eval_mode, **method_options
    )
    return explainer(inputs, target=target, size=size, normalize=normalize,
                     counterfactual=counterfactual)


def compare(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[str] | None = None,
    layer: LayerSpec = "auto",
    target: TargetLike = None,
    size: Any = "input",
    normalize: bool = True,
    counterfactual: bool = False,
    *,
    reshape: Reshape | None = None,
    eval_mode: bool = True,
    errors: str = "raise",
) -> Comparison:
    """Maps of several methods from ONE forward and gradient pass: ``{name: maps}``.

    Every method sees the same activations and gradients, so comparing six methods costs
    about as much as one. ``methods=None`` takes every registered method that works from a
    single pass. With ``errors="keep"`` a method that cannot apply (``cam`` on a model
    without a GAP + linear head, a class-agnostic method with ``counterfactual=True``) gets
    its exception as value instead of stopping the others. The result also carries the
    model ``output``, the explained ``classes`` and the ``layer_names``.
    """
    check_model(model)
    if errors not in ("raise", "keep"):
        raise ValueError(f"errors must be 'raise' or 'keep', got {errors!r}")
    names = list(methods) if methods is not None else available_methods()
    if not names:
        raise ValueError("methods is empty; name at least one, see camlens.available_methods()")
    chosen = [create_method(n) for n in names]
    inputs = check_inputs(inputs, model)
    size = check_size(size)
    result = run_pass(
        model, inputs, chosen, resolve_layers(model, layer), as_target(target),
        counterfactual=counterfactual, reshape=reshape, eval_mode=eval_mode,
    )
    out = Comparison(_detach(result.output), result.classes, result.layer_names)
    for method in chosen:
        try:
            if counterfactual and not method.class_specific:
                raise ValueError(f"{method.name} is class-agnostic: counterfactual does not apply")
            out[method.name] = _finish(method, result, inputs, size, normalize)
        except ValueError as err:
            if errors == "raise":
                raise
            out[method.name] = err
    return out
