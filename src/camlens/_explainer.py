"""The public entry points: :func:`explain` and the reusable :class:`Explainer`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._engine import PassResult, run_pass
from ._layers import LayerSpec, Reshape, resolve_layers
from ._postprocess import fuse, upsample
from ._postprocess import normalize as normalize_maps
from ._registry import available_methods, create_method, method_class
from ._validate import InputTooSmallError, check_inputs, check_model, check_size
from .methods._base import Method
from .targets import TargetLike, as_target


class Explainer:
    """A reusable CAM explainer for one model, method and layer.

    Hooks exist only while a call runs; the model's modes, ``requires_grad`` and ``.grad``
    are restored after every call, also when it raises (``KeyboardInterrupt`` included).

    >>> with Explainer(model, "gradcam++", layer="layer4") as explainer:
    ...     maps = explainer(images, target=camlens.TopK(3))   # (B, 3, H, W)

    Args:
        model: any ``nn.Module``.
        method: a name from :func:`camlens.available_methods`.
        layer: ``"auto"``, a module, a dotted name, or a list of these (maps fused).
        reshape: callable turning the layer output into (B, C, *spatial), overriding the
            automatic handling of tokens (B, N, C) and channels-last (B, H, W, C).
        eval_mode: run the model in eval mode during the call (its modes are restored).
        batch_size: inputs per extra forward of perturbation methods (memory bound).
        progress: a ``tqdm`` bar on stderr for each perturbation method's extra forwards
            (its name, count, rate, time left), or a callable ``progress(done, total)``
            called with the running method's count (its total is known before it starts).
        seed: seed of everything random (RISE masks, noise, random weights).
        aug_smooth: test-time augmentation: horizontal flip x scales 0.875, 1, 1.125; each
            map is mapped back to the input's geometry and the maps are averaged.
        eigen_smooth: the first principal component of the weighted activations instead of
            their channel sum (methods that weight activations).
        noise_smooth: SmoothGrad: average the maps of this many noisy copies of the inputs
            (noise std ``noise_std`` x each image's value range).
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
        batch_size: int = 32,
        progress: bool | Callable[[int, int], None] = False,
        seed: int = 0,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        noise_smooth: int = 0,
        noise_std: float = 0.15,
        **method_options: Any,
    ) -> None:
        self.model = check_model(model)
        # a Keras model: inputs come in its own layout and go through its adapter
        self._keras = self.model is not model
        _check_keras_options(self._keras, eval_mode)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
        if isinstance(noise_smooth, bool) or not isinstance(noise_smooth, int) or noise_smooth < 0:
            raise ValueError(f"noise_smooth is a number of noisy copies >= 0, got {noise_smooth!r}")
        if not isinstance(noise_std, (int, float)) or isinstance(noise_std, bool) or not (
            math.isfinite(noise_std) and noise_std >= 0
        ):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be a whole number, got {seed!r}")
        for flag, value in (("aug_smooth", aug_smooth), ("eigen_smooth", eigen_smooth),
                            ("eval_mode", eval_mode)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
        self.method = _method(method, batch_size, method_options)
        if eigen_smooth and not self.method.supports_eigen_smooth:
            raise ValueError(
                f"eigen_smooth needs a method that weights activations; {self.method.name} "
                "does not (try gradcam, layercam or scorecam)"
            )
        self._layers = resolve_layers(self.model, layer)
        if reshape is not None and not callable(reshape):
            raise TypeError("reshape must be a callable(tensor) -> (B, C, *spatial)")
        self.reshape = reshape
        self.eval_mode = eval_mode
        self.batch_size = batch_size
        self.progress = progress
        self.seed = int(seed)
        self.aug_smooth = bool(aug_smooth)
        self.eigen_smooth = bool(eigen_smooth)
        self.noise_smooth = noise_smooth
        self.noise_std = float(noise_std)
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
        if self._keras:
            inputs = self.model.from_user(inputs)  # type: ignore[operator]
        inputs = check_inputs(inputs, self.model)
        size = check_size(size)
        _check_counterfactual(self.method, counterfactual)
        if self.aug_smooth and inputs.ndim != 4:
            raise ValueError(
                f"aug_smooth flips and rescales images; inputs of shape {tuple(inputs.shape)} "
                "are not (B, C, H, W). Use noise_smooth instead"
            )
        goal = as_target(target)
        if self.aug_smooth and getattr(goal, "in_pixels", False):
            raise ValueError(
                f"aug_smooth flips and rescales the images, which would move the {goal!r}'s "
                "box or mask away from the object; use noise_smooth instead"
            )
        result = self._pass(inputs, goal, counterfactual, self.seed)
        self.layer_names = result.layer_names
        self.last_output = result.output
        self.last_classes = result.classes
        smooth = self.aug_smooth or self.noise_smooth
        if not smooth:
            return _finish(self.method, result, inputs, size, normalize, self.eigen_smooth)
        fixed = _FixedClasses(goal, result.classes) if result.classes is not None else goal
        total: Tensor | None = None
        count = 0
        for view, undo in _views(inputs, self.aug_smooth, self.noise_smooth, self.noise_std,
                                 self.seed):
            r = result if view is inputs else self._pass(view, fixed, counterfactual, self.seed)
            maps = _finish(self.method, r, view, "input", False, self.eigen_smooth, squeeze=False)
            maps = undo(maps)
            total = maps if total is None else total + maps
            count += 1
        assert total is not None
        return _finish_maps(total / count, inputs, size, normalize, result.single)

    def _pass(self, inputs: Tensor, target: Any, counterfactual: bool, seed: int) -> PassResult:
        return run_pass(
            self.model, inputs, [self.method], self._layers, target,
            counterfactual=counterfactual, reshape=self.reshape, eval_mode=self.eval_mode,
            batch_size=self.batch_size, progress=self.progress, seed=seed,
        )

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
        model = type(getattr(self.model, "keras_model", self.model)).__name__
        return f"Explainer({model}, method={self.method.name!r}, layer={layers})"


def _check_keras_options(keras: bool, eval_mode: bool) -> None:
    """Options that only mean something for PyTorch models, refused for Keras models."""
    if keras and eval_mode is not True:
        raise ValueError(
            "eval_mode=False puts a PyTorch model in training mode; a Keras model is always "
            "called with training=False (dropout off, batch-norm statistics frozen). Drop "
            "eval_mode for Keras models"
        )


def _check_counterfactual(method: Method, counterfactual: bool) -> None:
    if counterfactual and not method.class_specific:
        raise ValueError(
            f"{method.name} is class-agnostic, so counterfactual=True does not apply; "
            "use a gradient method such as 'gradcam'"
        )
    if counterfactual and not method.supports_counterfactual:
        raise ValueError(
            f"{method.name} takes absolute values of its gradients, so counterfactual=True "
            "gives the same map; use a gradient method such as 'gradcam'"
        )


def _method(name: str, batch_size: int, options: Mapping[str, Any]) -> Method:
    """A registered method, given the call's ``batch_size`` where it takes one (its own
    ``batch_size`` option wins)."""
    if "batch_size" in method_class(name).options:
        options = {"batch_size": batch_size, **options}
    return create_method(name, **options)


class _FixedClasses:
    """The classes explained on the clean inputs, kept for augmented or noisy copies."""

    def __init__(self, target: Any, classes: Tensor) -> None:
        self.target = target
        self.fixed = classes
        self.single = bool(getattr(target, "single", False))

    def classes(self, output: Any) -> Tensor:
        return self.fixed

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return self.target.scores(output, classes)

    def __call__(self, output: Any) -> Tensor:
        return self.scores(output, self.fixed)


def _views(
    inputs: Tensor, aug: bool, noise: int, std: float, seed: int
) -> list[tuple[Tensor, Callable[[Tensor], Tensor]]]:
    """(view of the inputs, function mapping a view's maps back to the inputs' geometry)."""
    size = tuple(inputs.shape[2:])

    def back(flip: bool) -> Callable[[Tensor], Tensor]:
        def undo(maps: Tensor) -> Tensor:
            maps = _resize(maps, size)
            return maps.flip(-1) if flip else maps

        return undo

    bases: list[tuple[Tensor, Callable[[Tensor], Tensor]]] = [(inputs, back(False))]
    if aug:
        bases = []
        for flip in (False, True):
            for scale in (1.0, 0.875, 1.125):
                x = inputs.flip(-1) if flip else inputs
                if scale != 1.0:
                    new = tuple(max(1, round(s * scale)) for s in size)
                    x = F.interpolate(x, size=new, mode="bilinear", align_corners=False,
                                      antialias=scale < 1)
                bases.append((x, back(flip)))
    if not noise:
        return bases
    g = torch.Generator(device="cpu").manual_seed(seed)
    views = []
    for x, undo in bases:
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *([1] * (x.ndim - 1)))
        for _ in range(noise):
            views.append((x + torch.randn(x.shape, generator=g).to(x) * std * span, undo))
    return views


def _resize(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize (B, K, *S) or (B, K, C, *S) maps to ``size``."""
    spatial = len(size)
    if tuple(maps.shape[-spatial:]) == size:
        return maps
    lead = maps.shape[:-spatial]
    flat = maps.reshape(lead[0], -1, *maps.shape[-spatial:])
    return upsample(flat, size).view(*lead, *size)
class Comparison(dict):  # type: ignore[type-arg]
    """``{method name: maps or exception}`` from :func:`compare`, plus the pass's results."""

    def __init__(self, output: Any, classes: Tensor | None, layer_names: list[str]) -> None:
        super().__init__()
        self.output = output
        self.classes = classes
        self.layer_names = layer_names


def _finish(
    method: Method, result: PassResult, inputs: Tensor, size: Any, normalize: bool,
    eigen_smooth: bool = False, squeeze: bool = True,
) -> Tensor:
    """Method maps of every layer -> resized, fused, normalised float32 maps."""
    result.check(method)
    if eigen_smooth and not method.supports_eigen_smooth:
        raise ValueError(f"eigen_smooth does not apply to {method.name}")
    scorer = result.layers[0].scorer if result.layers else None
    counting: AbstractContextManager[None] = nullcontext()
    if scorer is not None and method.needs_scorer:  # its extra forwards, counted
        counting = scorer.progress.task(method.name,
                                        sum(method.forwards(d) for d in result.layers))
    with counting:
        if eigen_smooth:
            maps = [method.eigen(d) for d in result.layers]
        else:
            maps = method.compute_layers(result.layers)
    spatial = inputs.ndim - 2
    if size == "input":
        out_size: tuple[int, ...] = tuple(inputs.shape[2:])
    elif size is None:
        out_size = max((tuple(m.shape[-spatial:]) for m in maps),
                       key=lambda s: torch.Size(s).numel())
    else:
        out_size = size
    if len(out_size) != spatial:
        raise ValueError(
            f"size {out_size} does not match the maps' {spatial} spatial dimensions"
        )
    fused = fuse([_resize(m.float(), out_size) for m in maps])
    if result.matched is not None:  # images where the target found nothing: all zero
        keep = result.matched.to(fused.device, fused.dtype)
        fused = fused * keep.view(-1, *([1] * (fused.ndim - 1)))
    return _finish_maps(fused, inputs, None, normalize, result.single and squeeze)


def _finish_maps(
    maps: Tensor, inputs: Tensor, size: Any, normalize: bool, single: bool
) -> Tensor:
    """Resize (when ``size`` asks), normalise, cast and drop K for one target per image."""
    if size is not None:
        out_size = tuple(inputs.shape[2:]) if size == "input" else tuple(size)
        maps = _resize(maps, out_size)
    if normalize:
        maps = normalize_maps(maps)
    maps = maps.to(device=inputs.device, dtype=torch.float32)
    return maps[:, 0] if single else maps


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
        **method_options: :class:`Explainer` options (``batch_size``, ``progress``,
            ``seed``, ``aug_smooth``, ``eigen_smooth``, ``noise_smooth``, ``noise_std``)
            and the method's own options.

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
    batch_size: int = 32,
    progress: bool | Callable[[int, int], None] = False,
    seed: int = 0,
    plan: Callable[[list[PlanRow]], None] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Comparison:
    """Maps of several methods from ONE forward and gradient pass: ``{name: maps}``.

    Every method sees the same activations and gradients, so comparing six methods costs
    about as much as one. ``methods=None`` takes every registered method that works from a
    single pass. With ``errors="keep"`` a method that cannot apply (``cam`` on a model
    without a GAP + linear head, a class-agnostic method with ``counterfactual=True``) gets
    its exception as value instead of stopping the others. The result also carries the
    model ``output``, the explained ``classes`` and the ``layer_names``.

    ``options``: each method's own options, ``{"sscam": {"num_samples": 4}}``.
    ``plan``: called once the pass has run and before any method computes, with a
    :class:`PlanRow` per method (its extra forwards on this batch and their estimated
    time, from one timed forward): a chance to show the cost before it is paid.
    """
    given = model
    model = check_model(model)
    _check_keras_options(model is not given, eval_mode)
    if errors not in ("raise", "keep"):
        raise ValueError(f"errors must be 'raise' or 'keep', got {errors!r}")
    names = list(methods) if methods is not None else available_methods()
    if not names:
        raise ValueError("methods is empty; name at least one, see camlens.available_methods()")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    options = dict(options or {})
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ValueError(f"options name method(s) {unknown} that are not in methods {names}")
    chosen = [
        _method(n, batch_size, options.get(n, {})) for n in names
    ]
    if model is not given:  # a Keras model: inputs in its own layout
        inputs = model.from_user(inputs)  # type: ignore[operator]
    inputs = check_inputs(inputs, model)
    size = check_size(size)
    layers = resolve_layers(model, layer)
    shared = [m for m in chosen if not _own_pass(m)]
    groups = ([shared] if shared else []) + [[m] for m in chosen if _own_pass(m)]
    out: Comparison | None = None
    results = {}
    goal = as_target(target)
    failed: dict[str, ValueError] = {}
    for group in groups:
        try:
            result = run_pass(
                model, inputs, group, layers, goal, counterfactual=counterfactual,
                reshape=reshape, eval_mode=eval_mode, batch_size=batch_size, progress=progress,
                seed=seed,
            )
        except ValueError as err:  # this group's pass cannot run (e.g. no ReLU to guide)
            if errors == "raise" or isinstance(err, InputTooSmallError):  # the input's fault
                raise
            failed.update({m.name: err for m in group})
            continue
        if out is None:
            out = Comparison(result.output, result.classes, result.layer_names)
        for method in group:
            results[method.name] = (method, result)
    if out is None:  # no pass could run: every method failed
        out = Comparison(None, None, [])
    if plan is not None:
        plan(_plan_rows([results[m.name] for m in chosen if m.name in results], inputs))
    for method in chosen:
        if method.name in failed:
            out[method.name] = failed[method.name]
            continue
        try:
            _check_counterfactual(method, counterfactual)
            out[method.name] = _finish(method, results[method.name][1], inputs, size, normalize)
        except ValueError as err:
            if errors == "raise":
                raise
            out[method.name] = err
    return out


class PlanRow(NamedTuple):
    """What a method will cost on this batch, shown before it starts."""

    method: str
    forwards: int  # extra forwards of the model, for the whole batch (0: the pass only)
    seconds: float  # estimated from a timed forward; 0 for methods with no extra forwards
    partial: bool = False  # the forwards run only the model after the layer: at most this


def _plan_rows(pairs: list[tuple[Method, PassResult]], inputs: Tensor) -> list[PlanRow]:
    """Each method's extra forwards on this batch and their estimated time."""
    rows = []
    per_forward: float | None = None
    for method, result in pairs:
        try:
            n = sum(method.forwards(d) for d in result.layers)
        except ValueError:  # the method will refuse, with its reason, when it runs
            n = 0
        seconds = 0.0
        scorer = result.layers[0].scorer if result.layers else None
        if n and scorer is not None:
            if per_forward is None:
                per_forward = scorer.measure(inputs)
            seconds = n * per_forward
        rows.append(PlanRow(method.name, n, seconds, bool(getattr(method, "partial", False))))
    return rows


def _own_pass(method: Method) -> bool:
    """Methods whose gradients or layers differ from the others' run a pass of their own."""
    return any(
        hasattr(method, attr) for attr in ("own_layers", "transform_scores")
    ) or bool(getattr(method, "noise_samples", 0))
