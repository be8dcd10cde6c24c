"""Batched forwards of perturbed inputs without autograd, for perturbation methods."""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ._guard import ModelGuard
from ._layers import from_channels_first, output_tensor
from .targets import find_logits


class Progress:
    """Counts a method's extra forwards: a ``tqdm`` bar on stderr, or a callback.

    ``enabled``: ``True`` shows a bar per method (its name, forwards done, rate and time
    left), a callable gets ``(done, total)`` of the running method, ``False`` is silent.
    """

    def __init__(self, enabled: bool | Callable[[int, int], None]) -> None:
        self.enabled = enabled
        self.done = 0
        self.total = 0
        self._bar: Any = None

    @contextmanager
    def task(self, name: str, total: int) -> Iterator[None]:
        """One method's forwards: ``total`` is known before the first one runs."""
        self.done, self.total = 0, int(total)
        if self.enabled is True and total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"camlens {name}", unit="fwd", leave=False,
                             file=sys.stderr, dynamic_ncols=True)
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def plan(self, n: int) -> None:
        """``n`` more forwards are about to run: the total grows if a method ran more than
        its ``forwards`` said (or a caller runs the scorer outside a task)."""
        if self.done + n > self.total:
            self.total = self.done + n
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif callable(self.enabled):
            self.enabled(self.done, self.total)


class Scorer:
    """Scores of the explained targets for many perturbed inputs, ``batch_size`` at a time.

    Runs under ``no_grad`` in the model's explained mode (eval by default); the model's
    state is restored after every chunk, also on error or ``KeyboardInterrupt``.
    ``scores(x, owner)`` gives (N, K): the target scores of each input ``x[n]``, for the
    classes explained for image ``owner[n]``.
    """

    def __init__(
        self,
        model: nn.Module,
        target: Any,
        classes: Tensor | None,
        *,
        eval_mode: bool = True,
        batch_size: int = 64,
        progress: bool | Callable[[int, int], None] = False,
        num_images: int | None = None,
    ) -> None:
        self.model = model
        self.target = target
        self.classes = classes
        self.num_images = num_images if num_images is not None else (
            classes.shape[0] if classes is not None else 1)
        self.eval_mode = eval_mode
        self.batch_size = batch_size
        self.progress = Progress(progress)
        self._fast: nn.Module | None = None
        self._partial: dict[int, bool] = {}  # layer -> can the model run from it alone

    def runner(self) -> nn.Module:
        """The module that runs the perturbed forwards.

        In eval mode, a copy of the model with each BatchNorm folded into the convolution
        before it (``torch.fx`` conv-bn fusion: the same function, fewer passes over
        memory); the model itself where it cannot be traced or has hooks of its own.
        """
        if self._fast is None:
            self._fast = self.model
            adapter = getattr(self.model, "camlens_adapter", False)  # Keras: not traceable
            if self.eval_mode and not adapter and not _has_hooks(self.model):
                try:
                    from torch.fx.experimental.optimization import fuse

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self._fast = fuse(self.model.eval(), inplace=False).eval()
                except Exception:  # untraceable models run as they are
                    self._fast = self.model
        return self._fast

    def _score(self, output: Any, owner: Tensor, softmax: bool = False) -> Tensor:
        if self.classes is not None and softmax:
            probs = torch.softmax(_widen(find_logits(output)), dim=1)
            return probs.gather(1, self.classes[owner])
        if self.classes is not None and hasattr(self.target, "scores"):
            return self.target.scores(output, self.classes[owner])
        pick = getattr(self.target, "for_images", None)
        if callable(pick):
            scores = pick(owner)(output)
        else:
            scores = self._plain(output, owner)
        return scores.unsqueeze(1) if scores.ndim == 1 else scores

    def _plain(self, output: Any, owner: Tensor) -> Tensor:
        """Scores of a plain callable target, called as in the gradient pass.

        The contract: the callable always gets an output with one row per explained
        image, row ``i`` for image ``i``, and image ``i``'s score may depend on row ``i``
        only. So each perturbed row ``n`` is given to it as a batch of ``B`` copies of
        itself, and the score of its owner image is kept: a callable that indexes rows by
        position (``out[torch.arange(B), cls]``) scores every copy with its own image's
        class, whatever the chunk size.
        """
        b = self.num_images
        rows = []
        for j in range(owner.shape[0]):
            value = self.target(_row_as_batch(output, j, b))
            if not isinstance(value, Tensor) or value.shape[:1] != (b,):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"the target callable returned {got} for a batch of {b} image(s); it "
                    f"must return a Tensor (B,) = ({b},) or (B, K), one row per image"
                )
            rows.append(value[int(owner[j])])
        return torch.stack(rows)

    def measure(self, inputs: Tensor) -> float:
        """Seconds per perturbed forward, from one timed chunk of copies of ``inputs[0]``
        (after a warm-up chunk); for the cost estimate shown before heavy methods run."""
        with ModelGuard(self.model, self.eval_mode):
            return time_forward(self.runner(), inputs, min(self.batch_size, 16))

    def chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def scores(
        self, make: Callable[[slice], Tensor], owner: Tensor, softmax: bool = False,
        check: bool = True,
    ) -> Tensor:
        """Scores (N, K) of inputs built chunk by chunk by ``make(slice)`` (saves memory);
        ``softmax=True`` gives class probabilities instead of the target's scores.
        ``check=False``: the caller checks for NaN and inf itself (:meth:`finite`), once
        after a loop of calls: each check makes the host wait for the device."""
        n = owner.shape[0]
        self.progress.plan(n)
        out = []
        with ModelGuard(self.model, self.eval_mode), torch.no_grad():
            model = self.runner()
            for part in self.chunks(n):
                x = make(part)
                if x.ndim == 4:  # NHWC convolutions are faster on CPU; same values
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(_widen(self._score(model(x), owner[part], softmax)))
                self.progress.advance(part.stop - part.start)
        scores = torch.cat(out)
        return _finite(scores, owner) if check else scores  # once, not per chunk

    @staticmethod
    def finite(scores: Tensor, owner: Tensor) -> Tensor:
        """``scores`` (N, K) of the perturbed copies of images ``owner`` (N,), or a clear
        error where one is NaN or inf."""
        return _finite(scores, owner)

    def with_layer_output(
        self, layer: nn.Module, inputs: Tensor, make: Callable[[slice], Tensor], owner: int,
        count: int, call: int = 1,
    ) -> Tensor:
        """Scores (count, K) when ``layer``'s output is replaced by ``make(slice)``.

        The model runs on the one image ``inputs`` (1, ...) up to the layer, and the hook
        swaps in a whole chunk of replacements: the part before the layer is computed once
        per chunk, not once per replacement. Tensors from before the layer broadcast over
        the chunk. If the model cannot run that way (it concatenates such tensors, say), the
        image is repeated instead, which is always exact.
        """
        self.progress.plan(count)
        owners = torch.full((count,), owner, dtype=torch.long, device=inputs.device)
        out = []
        current: dict[str, Any] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            current["calls"] += 1  # a module run several times: replace the captured call
            if current["calls"] != call:
                return None
            like = output_tensor(output)
            assert like is not None
            # back into the layer's own layout: tokens, channels-last
            back = getattr(self.model, "layer_from_channels_first", None)
            x = back(current["x"]) if back else from_channels_first(current["x"], like,
                                                                    inputs.shape)
            if isinstance(output, tuple):
                return (x, *output[1:])
            if isinstance(output, list):
                return [x, *output[1:]]
            return x

        hook_layer = getattr(self.model, "hook_layer", None)  # a Keras model's adapter
        handle = hook_layer(layer, hook) if hook_layer else layer.register_forward_hook(hook)
        try:
            with ModelGuard(self.model, self.eval_mode), torch.no_grad():
                for part in self.chunks(count):
                    current["x"] = make(part)
                    current["calls"] = 0
                    n = part.stop - part.start
                    scores = None
                    if self._partial.get(id(layer), True):
                        try:
                            result = self.model(inputs)
                            scores = self._score(result, owners[part])
                            if scores.shape[0] != n:
                                raise RuntimeError("batch did not follow the replacement")
                        except RuntimeError:  # e.g. x.view(inputs.size(0), -1) after it
                            self._partial[id(layer)] = False  # do not try again
                            scores = None
                    if scores is None:
                        current["calls"] = 0
                        result = self.model(inputs.expand(n, *inputs.shape[1:]))
                        scores = self._score(result, owners[part])
                    out.append(_widen(scores))
                    self.progress.advance(n)
        finally:
            handle.remove()
        return _finite(torch.cat(out), owners)  # checked once: no device sync per chunk


def _has_hooks(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
        or getattr(m, "_backward_pre_hooks", None)
        for m in model.modules()
    )


def time_forward(model: nn.Module, inputs: Tensor, copies: int) -> float:
    """Seconds per input of a no-grad forward of ``copies`` copies of ``inputs[0]``
    (channels-last images, as the scorer runs them), timed after one warm-up forward.
    The caller sets the model's mode (:class:`~camlens._guard.ModelGuard`)."""
    n = max(1, copies)
    x = inputs[:1].expand(n, *inputs.shape[1:]).clone()
    if x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model(x)
        started = time.perf_counter()
        model(x)
        return (time.perf_counter() - started) / n


def _widen(scores: Tensor) -> Tensor:
    """Scores as float32, or float64 when the model computes in float64 (exact checks)."""
    return scores if scores.dtype == torch.float64 else scores.float()


def _finite(scores: Tensor, owner: Tensor) -> Tensor:
    """``scores``, or a clear error where a perturbed forward gave NaN or inf."""
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        images = sorted(set(owner[bad.any(dim=1)].tolist()))
        raise ValueError(
            f"the model gave a non-finite score (NaN or inf) for a perturbed copy of image(s) "
            f"{images}; camlens cannot weight channels with it. Check the model for a division "
            "by zero or an overflow (e.g. float16), or use a gradient method such as 'gradcam'"
        )
    return scores


def _row_as_batch(output: Any, row: int, batch: int) -> Any:
    """``output`` with its rows replaced by ``batch`` copies of row ``row`` (views)."""
    if isinstance(output, Tensor):
        if output.ndim == 0:
            return output
        return output[row : row + 1].expand(batch, *output.shape[1:])
    if isinstance(output, Mapping):
        new = copy.copy(output)
        for key, value in output.items():
            new[key] = _row_as_batch(value, row, batch)  # type: ignore[index]
        return new
    if isinstance(output, list) and output and not isinstance(output[0], Tensor):
        return [output[row]] * batch  # one entry per image (detectors' list of dicts)
    if isinstance(output, (tuple, list)):
        parts = [_row_as_batch(v, row, batch) for v in output]
        return type(output)(*parts) if hasattr(output, "_fields") else type(output)(parts)
    return output
