"""Digit canvases with known answers, and a small GAP CNN trained on them (PyTorch).

Shared by the validations of the uses (bias audit, weak labels, CAM-guided augmentation):
scikit-learn's 8 x 8 digits are upscaled and placed on RGB canvases whose background the
caller chooses, so the true object pixels (masks) and boxes of every digit are known.

>>> train, test = split_digits(seed=0)
>>> c = canvases(train, 500, count=(1, 3), seed=1)      # 1-3 digits per canvas
>>> c.images.shape, c.masks.shape                        # (500, 64, 64, 3), (500, 64, 64)
>>> model = GapCNN(classes=10)
>>> fit(model, c.images, c.multi_hot(), multilabel=True, epochs=8, seed=0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Background = Callable[[np.random.Generator, int, Sequence[int]], np.ndarray]


@dataclass
class Digits:
    """Digit images (N, 8, 8) in [0, 1] and their classes (N,)."""

    images: np.ndarray
    labels: np.ndarray


def split_digits(seed: int = 0, test_share: float = 0.3) -> tuple[Digits, Digits]:
    """scikit-learn's 1,797 digits, split by image: test canvases show digits never trained on."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * (1 - test_share))
    a, b = order[:cut], order[cut:]
    return Digits(images[a], bunch.target[a]), Digits(images[b], bunch.target[b])


def noise_background(rng: np.random.Generator, size: int, labels: Sequence[int]) -> np.ndarray:
    """Grey noise, the same for every class: (size, size, 3) float in [0, 1]."""
    grey = rng.uniform(0.05, 0.35) + rng.normal(0, 0.08, (size, size, 1))
    return np.clip(np.repeat(grey, 3, -1), 0, 1)


def stripes_background(rng: np.random.Generator, size: int, labels: Sequence[int],
                       colour: Sequence[float] = (0.2, 0.6, 0.2)) -> np.ndarray:
    """Diagonal stripes in ``colour`` over grey noise, at a random phase and period 6-10."""
    base = noise_background(rng, size, labels)
    period = int(rng.integers(6, 11))
    yy, xx = np.mgrid[0:size, 0:size]
    on = ((xx + yy + int(rng.integers(period))) % period) < period // 2
    base[on] = 0.5 * base[on] + 0.5 * np.asarray(colour)
    return base


@dataclass
class Canvases:
    """RGB canvases and what is on them.

    ``images`` (N, S, S, 3) uint8; ``labels[i]`` the classes present (sorted, distinct);
    ``masks`` (N, S, S) uint8 with class + 1 on a digit's ink, 0 elsewhere (the VOC
    convention); ``boxes[i]`` one ``(class, x0, y0, x1, y1)`` per digit (x1, y1 exclusive).
    """

    images: np.ndarray
    labels: list[list[int]]
    masks: np.ndarray
    boxes: list[list[tuple[int, int, int, int, int]]]

    def multi_hot(self, classes: int = 10) -> np.ndarray:
        """(N, classes) float32 with 1 for each class present."""
        y = np.zeros((len(self.labels), classes), np.float32)
        for i, present in enumerate(self.labels):
            y[i, present] = 1
        return y

    def first(self) -> np.ndarray:
        """(N,) the first class of each canvas (the only one for one-digit canvases)."""
        return np.array([present[0] for present in self.labels])

    def tensor(self) -> torch.Tensor:
        """(N, 3, S, S) float in [0, 1]: the model's input (camlens's ``unit`` convention)."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div(255)


def canvases(
    digits: Digits, n: int, *, size: int = 64, count: tuple[int, int] = (1, 1),
    scale: tuple[int, int] = (3, 4), background: Background = noise_background,
    clutter: int = 0, classes: Sequence[int] | None = None, seed: int = 0,
) -> Canvases:
    """``n`` canvases of ``size`` px with ``count[0]..count[1]`` digits of distinct classes
    (from ``classes``, all ten by default), each upscaled ``scale`` times (8 px -> 24-32 px),
    placed without overlapping boxes, drawn in a random bright colour. ``clutter`` adds
    that many unlabelled strokes (random short lines) per canvas. ``background(rng, size,
    labels)`` draws the canvas behind the digits, so it can depend on the classes."""
    rng = np.random.default_rng(seed)
    pool = np.arange(10) if classes is None else np.asarray(list(classes))
    by_class = {int(c): np.flatnonzero(digits.labels == c) for c in pool}
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    labels: list[list[int]] = []
    boxes: list[list[tuple[int, int, int, int, int]]] = []
    for i in range(n):
        k = int(rng.integers(count[0], count[1] + 1))
        chosen = [int(c) for c in rng.choice(pool, size=min(k, len(pool)), replace=False)]
        canvas = background(rng, size, sorted(chosen))
        placed: list[tuple[int, int, int, int, int]] = []
        for _ in range(clutter):
            _stroke(canvas, rng)
        for c in chosen:
            digit = digits.images[rng.choice(by_class[c])]
            s = int(rng.integers(scale[0], scale[1] + 1))
            ink = np.kron(digit, np.ones((s, s), np.float32))
            side = ink.shape[0]
            for _ in range(50):  # a free place, else the digit is left out
                y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                if all(x0 >= b[3] or x0 + side <= b[1] or y0 >= b[4] or y0 + side <= b[2]
                       for b in placed):
                    break
            else:
                continue
            colour = rng.uniform(0.7, 1.0, 3)
            area = canvas[y0:y0 + side, x0:x0 + side]
            alpha = ink[..., None]
            area[:] = area * (1 - alpha) + colour * alpha
            masks[i, y0:y0 + side, x0:x0 + side][ink > 0.25] = c + 1
            rows, cols = np.nonzero(ink > 0.25)
            placed.append((c, x0 + int(cols.min()), y0 + int(rows.min()),
                           x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1))
        images[i] = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
        labels.append(sorted({b[0] for b in placed}))
        boxes.append(placed)
    return Canvases(images, labels, masks, boxes)


def _stroke(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A short bright line at a random place and angle: clutter that is not a digit."""
    size = canvas.shape[0]
    y, x = rng.uniform(0, size, 2)
    angle, length = rng.uniform(0, np.pi), rng.uniform(6, 14)
    colour = rng.uniform(0.5, 1.0, 3)
    for t in np.linspace(0, 1, 24):
        yy, xx = int(y + t * length * np.sin(angle)), int(x + t * length * np.cos(angle))
        canvas[max(yy - 1, 0):yy + 1, max(xx - 1, 0):xx + 1] = colour


class GapCNN(nn.Module):
    """conv-BN-ReLU blocks (stride 2 twice, no pooling) -> global average pooling -> linear.

    ``features`` ends with the last conv block (its output is what CAM explains, at 1/4 of
    the input size), ``fc`` is the classifier after GAP, so CAM applies.
    """

    def __init__(self, classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, width, 1), *block(width, width, 2), *block(width, 2 * width, 1),
            *block(2 * width, 2 * width, 2), *block(2 * width, 4 * width, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def fit(
    model: nn.Module, images: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor,
    *, multilabel: bool = False, epochs: int = 8, batch_size: int = 64, lr: float = 3e-3,
    seed: int = 0, step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor,
                                                                       torch.Tensor]] | None = None,
) -> nn.Module:
    """Train with AdamW and a cosine schedule; returns the model in eval mode.

    ``targets``: (N,) class indices, or (N, C) multi-hot (``multilabel=True``, BCE loss) or
    soft labels (cross-entropy with probabilities). ``step(x, y) -> (x, y)`` transforms each
    batch (augmentation), where ``y`` is one-hot / soft (N, C) float.
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float().div(255)
    y = torch.as_tensor(targets)
    classes = model.fc.out_features  # type: ignore[union-attr]
    if y.ndim == 1:
        y = nn.functional.one_hot(y.long(), classes).float()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb, yb = x[idx], y[idx]
            if step is not None:
                xb, yb = step(xb, yb)
            out = model(xb)
            if multilabel:
                loss = nn.functional.binary_cross_entropy_with_logits(out, yb)
            else:
                loss = nn.functional.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray | torch.Tensor,
            batch_size: int = 256) -> torch.Tensor:
    """Logits (N, C) of the model in eval mode."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float().div(255)
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
