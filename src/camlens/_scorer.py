"""Batched forwards of perturbed inputs without autograd, for perturbation methods."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ._guard import ModelGuard
from ._layers import from_channels_first, output_tensor
from .targets import find_logits


class Progress:
    """Counts forwards; prints a progress line on stderr when enabled."""

    def __init__(self, enabled: bool | Callable[[int, int], None]) -> None:
        self.enabled = enabled
        self.done = 0
        self.total = 0
        self.started = time.perf_counter()

    def plan(self, n: int) -> None:
        self.total += n

    def advance(self, n: int) -> None:
        self.done += n
        if callable(self.enabled):
            self.enabled(self.done, self.total)
        elif self.enabled:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            end = "\n" if self.done >= self.total else ""
            sys.stderr.write(f"\rcamlens: {self.done}/{self.total} forwards {rate:.0f}/s{end}")
            sys.stderr.flush()


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
    ) -> None:
        self.model = model
        self.target = target
        self.classes = classes
        self.eval_mode = eval_mode
        self.batch_size = batch_size
        self.progress = Progress(progress)
        self._fast: nn.Module | None = None

    def runner(self) -> nn.Module:
        """The module that runs the perturbed forwards.

        In eval mode, a copy of the model with each BatchNorm folded into the convolution
        before it (``torch.fx`` conv-bn fusion: the same function, fewer passes over
        memory); the model itself where it cannot be traced or has hooks of its own.
        """
        if self._fast is None:
            self._fast = self.model
            if self.eval_mode and not _has_hooks(self.model):
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
            probs = torch.softmax(find_logits(output).float(), dim=1)
            return probs.gather(1, self.classes[owner])
        if self.classes is not None and hasattr(self.target, "scores"):
            return self.target.scores(output, self.classes[owner])
        pick = getattr(self.target, "for_images", None)
        scores = (pick(owner) if callable(pick) else self.target)(output)
        return scores.unsqueeze(1) if scores.ndim == 1 else scores

    def chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def scores(
        self, make: Callable[[slice], Tensor], owner: Tensor, softmax: bool = False
    ) -> Tensor:
        """Scores (N, K) of inputs built chunk by chunk by ``make(slice)`` (saves memory);
        ``softmax=True`` gives class probabilities instead of the target's scores."""
        n = owner.shape[0]
        self.progress.plan(n)
        out = []
        with ModelGuard(self.model, self.eval_mode), torch.no_grad():
            model = self.runner()
            for part in self.chunks(n):
                x = make(part)
                if x.ndim == 4:  # NHWC convolutions are faster on CPU; same values
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(self._score(model(x), owner[part], softmax).float())
                self.progress.advance(part.stop - part.start)
        return torch.cat(out)

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
            x = from_channels_first(current["x"], like, inputs.shape)
            if isinstance(output, tuple):
                return (x, *output[1:])
            if isinstance(output, list):
                return [x, *output[1:]]
            return x

        handle = layer.register_forward_hook(hook)
        try:
            with ModelGuard(self.model, self.eval_mode), torch.no_grad():
                for part in self.chunks(count):
                    current["x"] = make(part)
                    current["calls"] = 0
                    n = part.stop - part.start
                    try:
                        result = self.model(inputs)
                        scores = self._score(result, owners[part])
                        if scores.shape[0] != n:
                            raise RuntimeError("batch did not follow the replacement")
                    except RuntimeError:
                        current["calls"] = 0
                        result = self.model(inputs.expand(n, *inputs.shape[1:]))
                        scores = self._score(result, owners[part])
                    out.append(scores.float())
                    self.progress.advance(n)
        finally:
            handle.remove()
        return torch.cat(out)


def _has_hooks(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
        or getattr(m, "_backward_pre_hooks", None)
        for m in model.modules()
    )
