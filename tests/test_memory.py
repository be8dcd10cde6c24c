"""Memory: what a pass keeps for backward, and the runner's batch bounded by memory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import camlens
from camlens.models import load_model


def saved_bytes(model: nn.Module, call: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saved for backward during ``call`` (distinct storages,
    the model's parameters left out: they exist anyway)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call()
    return sum(seen.values())


class SharedActivation(nn.Module):
    """One activation module serves the stem and the head, as EfficientNet's ``_swish``."""

    def __init__(self, repeat: bool = True) -> None:
        super().__init__()
        self.repeat = repeat  # False: the stem skips it (a call count that changes)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.body = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.act(x) if self.repeat else torch.clamp(x, 0, 6)
        x = self.act(self.head(torch.relu(self.body(x))))
        return self.fc(x.mean((2, 3)))


def _model(repeat: bool = True) -> SharedActivation:
    torch.manual_seed(0)
    return SharedActivation(repeat).double().eval()


def _hand_gradcam(model: SharedActivation, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM at the head's activation, by hand: ReLU(sum_c mean(dy/dA_c) A_c)."""
    with torch.no_grad():
        pre = model.head(torch.relu(model.body(model.act(model.stem(x)))))
    a = model.act(pre).requires_grad_(True)
    y = model.fc(a.mean((2, 3)))[:, cls].sum()
    (g,) = torch.autograd.grad(y, a)
    return torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach()


def test_the_graph_starts_at_the_layers_last_call():
    """Grad-CAM at a module that also ran at the stem keeps no graph from the stem: the
    tensors saved for backward are smaller than the layer's output (before, the whole
    model from the stem on was recorded: 3.5x the layer's output here). The maps are the
    hand-computed ones."""
    model = _model()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer_bytes = 2 * 16 * 16 * 16 * 8  # (B, C, H, W) float64 at the head
    maps: list[torch.Tensor] = []
    saved = saved_bytes(model, lambda: maps.append(camlens.explain(
        model, x, layer="act", target=3, size=None, normalize=False)))
    assert saved < layer_bytes, saved
    assert torch.allclose(maps[0].double(), _hand_gradcam(model, x, 3).float().double(),
                          rtol=1e-6, atol=1e-7)


def test_a_layer_that_runs_fewer_times_than_probed_is_still_right():
    """The call count is probed once per model and input shape; when it changes (a model
    whose path depends on its state or data), the pass runs again from the first call."""
    model = _model()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    camlens.explain(model, x, layer="act", target=1)  # probed: act runs twice
    model.repeat = False  # now once
    maps = camlens.explain(model, x, layer="act", target=1, size=None, normalize=False)
    fresh = _model(repeat=False)
    expected = camlens.explain(fresh, x, layer="act", target=1, size=None, normalize=False)
    assert torch.equal(maps, expected)
    assert maps.abs().sum() > 0
    model.repeat = True  # and back: the count is no longer trusted, still right
    again = camlens.explain(model, x, layer="act", target=1, size=None, normalize=False)
    assert torch.allclose(again.double(), _hand_gradcam(model, x, 1).float().double(),
                          rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def lite():
    model, _, _ = load_model()
    return model


def test_bundled_model_keeps_no_graph_before_its_layer(lite):
    """EfficientNet-Lite0's auto layer (``_swish``, which also runs at the stem): a
    Grad-CAM batch saves for backward less than the layer's own output per image
    (1280 x 7 x 7 float32 = 245 KiB); before, it saved the whole model's activations
    (78 MB per image)."""
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    saved = saved_bytes(lite, lambda: camlens.explain(lite, x))
    assert saved < 2 * 1280 * 7 * 7 * 4, saved
