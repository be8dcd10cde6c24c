"""Perturbation, guided and smoothing options: behaviour, exact shortcuts, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, assert_same_state, model_state, randomize_bn
from torch import nn

import camlens
from camlens.methods._perturbation import RISE


class FunctionalReLUNet(nn.Module):
    """TinyNet's layers, but ReLUs called as F.relu / torch.relu instead of modules."""

    def __init__(self, modules: TinyNet) -> None:
        super().__init__()
        self.m = modules

    def forward(self, x):
        f = self.m.features
        x = F.relu(f[1](f[0](x)))
        x = torch.relu(f[4](f[3](x)))
        return self.m.fc(torch.flatten(self.m.pool(x), 1))


def test_guided_backprop_with_functional_relus_equals_modules(tiny, images):
    functional = FunctionalReLUNet(tiny).eval()
    for method in ("guided-backprop", "guided-gradcam"):
        layer = "features.5" if method == "guided-gradcam" else "auto"
        a = camlens.explain(tiny, images, method=method, layer=layer, channels=True,
                            normalize=False)
        layer_f = "m.features.4" if method == "guided-gradcam" else "auto"
        b = camlens.explain(functional, images, method=method, layer=layer_f, channels=True,
                            normalize=False)
        if method == "guided-gradcam":  # bn output before the ReLU: compare the guided part
            assert a.shape == b.shape == (2, 3, 16, 16)
            continue
        assert a.shape == (2, 3, 16, 16)
        assert torch.allclose(a, b, atol=1e-6)


def test_guided_backprop_by_hand():
    """y = w . relu(x): the guided gradient is relu(w) where x > 0."""
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
    x = torch.tensor([[[[1.0, 1.0], [-1.0, 1.0]]]])
    g = camlens.explain(model, x, method="guided-backprop", target=0, channels=True,
                        normalize=False)
    assert torch.equal(g, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))


def test_guided_needs_relus_and_leaves_torch_alone(images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with pytest.raises(ValueError, match="needs ReLUs"):
        camlens.explain(model, images, method="guided-backprop")
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    torch.relu(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]  # the override is gone


def test_scorecam_scores_identical_masks_once(tiny, images):
    with torch.no_grad():  # six constant channels: their masks are all zero, one forward
        tiny.features[3].weight[:6].zero_()
    counted = []
    explainer = camlens.Explainer(tiny, "scorecam", layer="features.5",
                                  progress=lambda done, total: counted.append(total))
    explainer(images)
    acts = {}
    h = tiny.features[5].register_forward_hook(lambda m, i, o: acts.setdefault("a", o.clone()))
    tiny(images)
    h.remove()
    a = acts["a"]  # (2, 16, 8, 8) after ReLU
    expected = 0
    for i in range(2):
        norm = (a[i].flatten(1) - a[i].flatten(1).amin(1, keepdim=True))
        span = norm.amax(1, keepdim=True)
        keys = torch.where(span > 0, norm / torch.where(span > 0, span, 1), 0)
        expected += len(torch.unique(keys, dim=0))
    assert counted[-1] == expected <= 2 * (16 - 5)


def test_ablation_tail_trick_equals_full_forwards(images):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).eval()
    fast = camlens.explain(model, images, method="ablationcam", layer="features.2",
                           normalize=False)

    class Concat(TinyNet):  # a model where the tail trick cannot run: falls back
        def forward(self, x):
            early = self.features[0](x)
            h = self.features[2](self.features[1](early))
            h = self.features[5](self.features[4](self.features[3](h)))
            pooled = torch.cat([self.pool(h).flatten(1), self.pool(early).flatten(1)[:, :0]], 1)
            return self.fc(pooled)

    slow_model = Concat().eval()
    slow_model.load_state_dict(model.state_dict())
    slow = camlens.explain(slow_model, images, method="ablationcam", layer="features.2",
                           normalize=False)
    assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "rise"])
def test_batch_size_does_not_change_the_map(method, tiny, images):
    opts = {"n_masks": 30, "grid": 4} if method == "rise" else {}
    a = camlens.explain(tiny, images, method=method, batch_size=1, **opts)
    b = camlens.explain(tiny, images, method=method, batch_size=64, **opts)
    assert torch.allclose(a, b, atol=1e-5)


def test_rise_masks_are_seeded_and_shifted():
    rise = RISE(n_masks=5, grid=3, p=0.5)
    m1 = rise.masks((12, 12), seed=3, device=torch.device("cpu"))
    m2 = rise.masks((12, 12), seed=3, device=torch.device("cpu"))
    assert torch.equal(m1, m2) and m1.shape == (5, 12, 12)
    assert not torch.equal(m1, rise.masks((12, 12), seed=4, device=torch.device("cpu")))
    assert m1.min() >= 0 and m1.max() <= 1


def test_smoothing_options(tiny, images):
    plain = camlens.explain(tiny, images)
    aug = camlens.explain(tiny, images, aug_smooth=True)
    assert aug.shape == plain.shape and not torch.allclose(aug, plain)
    noisy = camlens.explain(tiny, images, noise_smooth=4, seed=1)
    assert torch.equal(noisy, camlens.explain(tiny, images, noise_smooth=4, seed=1))
    assert not torch.allclose(noisy, plain)
    # zero noise: every copy is the image itself
    same = camlens.explain(tiny, images, noise_smooth=3, noise_std=0.0)
    assert torch.allclose(same, plain, atol=1e-6)
    eigen = camlens.explain(tiny, images, method="layercam", eigen_smooth=True)
    assert eigen.shape == plain.shape and torch.isfinite(eigen).all()
    # flips are among the views, so a flipped image gives the flipped map
    classes = camlens.Explainer(tiny)
    classes(images)
    target = classes.last_classes[:, 0].tolist()
    flipped = camlens.explain(tiny, images.flip(-1), aug_smooth=True, target=target)
    assert torch.allclose(flipped.flip(-1), camlens.explain(tiny, images, aug_smooth=True,
                                                            target=target), atol=1e-4)


def test_bad_options(tiny, images):
    with pytest.raises(ValueError, match="batch_size"):
        camlens.explain(tiny, images, method="scorecam", batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        camlens.Explainer(tiny, "gradcam", batch_size=-3)
    with pytest.raises(ValueError, match="rise grid 20 x 20 is larger"):
        camlens.explain(tiny, images, method="rise", grid=20, n_masks=2)
    with pytest.raises(ValueError, match="aug_smooth"):
        signal = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                               nn.Flatten(), nn.Linear(3, 2))
        camlens.explain(signal, torch.randn(2, 2, 10), aug_smooth=True)
    with pytest.raises(ValueError, match="eigen_smooth"):
        camlens.Explainer(tiny, "rise", eigen_smooth=True)
    with pytest.raises(ValueError, match="noise_smooth"):
        camlens.Explainer(tiny, "gradcam", noise_smooth=-1)


def test_keyboard_interrupt_leaves_the_model_untouched(images):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).train()
    before = model_state(model)
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        camlens.explain(model, images, method="scorecam", batch_size=2, progress=interrupt)
    assert_same_state(before, model_state(model))
    assert model.training and torch.is_grad_enabled()


def test_ablation_on_a_module_that_runs_twice(images):
    """A shared activation module (EfficientNet's _swish): the captured call is the last."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1)
            self.b = nn.Conv2d(6, 8, 3, padding=1, stride=2)
            self.act = nn.ReLU()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.act(self.a(x))
            x = self.act(self.b(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Shared().eval()
    maps = camlens.explain(model, images, method="ablationcam", layer="act", size=None,
                           normalize=False)
    assert maps.shape == (2, 8, 8)  # the second call's resolution
    # the same as ablating the output of b's ReLU written out by hand
    x = images
    with torch.no_grad():
        h = torch.relu(model.b(torch.relu(model.a(x))))
        y = model.fc(h.mean((2, 3)))
        cls = y.argmax(1)
        want = []
        for i in range(2):
            base = y[i, cls[i]]
            w = []
            for k in range(8):
                hk = h[i : i + 1].clone()
                hk[:, k] = 0
                w.append((base - model.fc(hk.mean((2, 3)))[0, cls[i]]) / base)
            want.append(torch.relu(sum(wk * h[i, k] for k, wk in enumerate(w))))
    assert torch.allclose(maps, torch.stack(want), atol=1e-5)
