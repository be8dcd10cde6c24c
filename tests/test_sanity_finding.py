"""The model parameter randomisation test's published finding, reproduced on a tiny model.

Adebayo et al. 2018, "Sanity Checks for Saliency Maps", https://arxiv.org/abs/1810.03292:
under cascading re-initialisation from the top layer down, Grad-CAM's map changes at once
(it depends on what the model learned), while guided backpropagation's map stays similar
to the original (it mostly reflects the input, not the learned weights).

The model: a small GAP CNN trained for a few seconds on scikit-learn's bundled digits
(8x8 upscaled to 16x16), seeded, on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camlens.metrics import sanity_check

sklearn = pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor]:
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        torch.manual_seed(0)
        d = load_digits()
        x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = (x - x.mean()) / x.std()
        y = torch.tensor(d.target)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(x), generator=g)
        train, test = perm[:1500], perm[1500:]
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(8):
            order = train[torch.randperm(len(train), generator=g)]
            for start in range(0, len(order), 64):
                i = order[start : start + 64]
                loss = nn.functional.cross_entropy(model(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(x[test]).argmax(1) == y[test]).float().mean())
        assert acc > 0.8, f"the tiny model did not learn the digits (accuracy {acc:.2f})"
        return model, x[test[:32]]
    finally:
        torch.set_num_threads(threads)


def test_gradcam_changes_but_guided_backprop_stays_under_randomisation(trained) -> None:
    model, x = trained
    grad = sanity_check(model, x, "gradcam", layer="6", seed=0)
    guided = sanity_check(model, x, "guided-backprop", layer="6", seed=0)
    assert grad.layers == guided.layers == ["9", "5", "2", "0"]  # top (fc) first
    g, gb = grad.spearman.mean(1), guided.spearman.mean(1)  # (steps,) mean over 32 images
    # Grad-CAM: the map no longer resembles the original (rank correlation 1) from the
    # first step on (fc randomised), down to the last (every layer randomised).
    assert float(g.abs().max()) < 0.3, g
    # Guided backprop: still clearly similar while the top layers are random ...
    assert float(gb[:2].min()) > 0.5, gb
    # ... and more similar than Grad-CAM at every step but the very last.
    assert bool((gb[:3] - g[:3] > 0.3).all()), (gb, g)
    assert float(guided.ssim.mean(1)[:2].min()) > 0.5
    assert float(grad.ssim.mean(1).abs().max()) < 0.2
