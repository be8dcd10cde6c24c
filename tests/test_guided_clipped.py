"""Guided backpropagation through clipped-linear activations (ReLU6, Hardtanh, LeakyReLU).

The rule: each activation passes back ``f'(x) * max(g, 0)``. ReLU6 / Hardtanh(lo, hi):
the positive part of the gradient where ``lo < x < hi``, else 0; LeakyReLU(a): the
positive part where ``x > 0``, ``a`` times it where ``x <= 0``.

The hand check: a net of 1 x 1 convolutions (a linear map per pixel), the activations,
global average pooling and a linear head, with weights and inputs that are small dyadic
fractions. Every sum and product is then exact in float64 whatever the order, so the
guided gradient computed by hand (numpy, below) must equal camlens' bit for bit. The
input's first channel passes unchanged to the first unit, so its values sit exactly on
the kinks (0, 6, the Hardtanh ends) and on both sides of them.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state
from torch import nn

import camlens

H = W = 4
# the first input channel: the kinks (0, 6, -1, 2, -0.5, 1.5) and values on either side
KINKS = [-3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 4.0, 5.75, 6.0, 6.25, 7.0,
         -0.25]


def _dyadic(shape: tuple[int, ...], rng: np.random.Generator,
            values=(-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0)) -> np.ndarray:
    return rng.choice(np.array(values), size=shape)


class PixelNet(nn.Module):
    """1 x 1 conv (3 -> 6), act1, 1 x 1 conv (6 -> 6), act2, GAP, linear (6 -> 3)."""

    def __init__(self, act1, act2, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.act1, self.act2 = act1, act2
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 3)
        w1 = _dyadic((6, 3), rng)
        w1[0] = [1.0, 0.0, 0.0]  # unit 0 of layer 1 is the first input channel itself
        b1 = _dyadic((6,), rng)
        b1[0] = 0.0
        w2 = _dyadic((6, 6), rng)
        w2[:, 0] = [0.5, 1.0, 0.25, 2.0, 0.5, 1.0]  # unit 0 gets positive gradients back
        with torch.no_grad():
            for p, v in ((self.conv1.weight, w1[..., None, None]), (self.conv1.bias, b1),
                         (self.conv2.weight, w2[..., None, None]),
                         (self.conv2.bias, _dyadic((6,), rng)),
                         (self.fc.weight, _dyadic((3, 6), rng)),
                         (self.fc.bias, _dyadic((3,), rng))):
                p.copy_(torch.from_numpy(np.asarray(v, dtype=np.float64)))
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = self.act1(self.conv1(x))
        a2 = self.act2(self.conv2(a1))
        return self.fc(a2.mean(dim=(2, 3)))


# Each activation as the test case builds it, and its rule written out: (lo, hi, slope
# below lo). The model's call and the hand rule are written separately on purpose.
ACTIVATIONS = {
    "nn.ReLU6": (lambda: nn.ReLU6(), (0.0, 6.0, 0.0)),
    "nn.ReLU6(inplace)": (lambda: nn.ReLU6(inplace=True), (0.0, 6.0, 0.0)),
    "F.relu6": (lambda: (lambda x: F.relu6(x)), (0.0, 6.0, 0.0)),
    "F.relu6(inplace)": (lambda: (lambda x: F.relu6(x, inplace=True)), (0.0, 6.0, 0.0)),
    "nn.Hardtanh(-1, 2)": (lambda: nn.Hardtanh(-1.0, 2.0), (-1.0, 2.0, 0.0)),
    "F.hardtanh(-0.5, 1.5)": (lambda: (lambda x: F.hardtanh(x, -0.5, 1.5)), (-0.5, 1.5, 0.0)),
    "F.hardtanh_": (lambda: (lambda x: F.hardtanh_(x, min_val=-1.0, max_val=2.0)),
                    (-1.0, 2.0, 0.0)),
    "nn.LeakyReLU(0.25)": (lambda: nn.LeakyReLU(0.25), (0.0, np.inf, 0.25)),
    "F.leaky_relu(0.5)": (lambda: (lambda x: F.leaky_relu(x, 0.5)), (0.0, np.inf, 0.5)),
    "F.leaky_relu_(0.25)": (lambda: (lambda x: F.leaky_relu_(x, 0.25)), (0.0, np.inf, 0.25)),
    "nn.ReLU": (lambda: nn.ReLU(), (0.0, np.inf, 0.0)),
}


def _f(z: np.ndarray, rule: tuple[float, float, float]) -> np.ndarray:
    lo, hi, slope = rule
    return np.where(z > lo, np.minimum(z, hi), lo + slope * (z - lo) if slope else lo)


def _df(z: np.ndarray, rule: tuple[float, float, float]) -> np.ndarray:
    """f'(z), torch's value at the kinks: 0 at both ends of a clip, the slope at 0."""
    lo, hi, slope = rule
    return np.where((z > lo) & (z < hi), 1.0, np.where(z <= lo, slope, 0.0))


def _by_hand(net: PixelNet, x: np.ndarray, cls: int, rule1, rule2) -> dict:
    """The guided input gradient of ``fc[cls]`` for one image (3, H, W), in numpy."""
    w1 = net.conv1.weight.detach().numpy()[..., 0, 0]
    b1 = net.conv1.bias.detach().numpy()
    w2 = net.conv2.weight.detach().numpy()[..., 0, 0]
    b2 = net.conv2.bias.detach().numpy()
    fc = net.fc.weight.detach().numpy()
    z1 = np.einsum("oc,chw->ohw", w1, x) + b1[:, None, None]
    z2 = np.einsum("oc,chw->ohw", w2, _f(z1, rule1)) + b2[:, None, None]
    g2 = np.broadcast_to(fc[cls][:, None, None] / (H * W), z2.shape)  # d score / d a2
    r2 = _df(z2, rule2) * np.maximum(g2, 0)
    g1 = np.einsum("oc,ohw->chw", w2, r2)  # d / d a1 of the guided signal
    r1 = _df(z1, rule1) * np.maximum(g1, 0)
    return {"grad": np.einsum("oc,ohw->chw", w1, r1), "z1": z1, "g1": g1}


def _inputs(n: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(1)
    x = rng.choice(np.arange(-8, 9) / 4, size=(n, 3, H, W))
    x[:, 0] = np.reshape(KINKS, (H, W))
    return torch.from_numpy(x)


@pytest.mark.parametrize("second", ["nn.ReLU6", "nn.LeakyReLU(0.25)"])
@pytest.mark.parametrize("first", list(ACTIVATIONS))
def test_guided_gradient_equals_the_hand_rule(first, second):
    make1, rule1 = ACTIVATIONS[first]
    make2, rule2 = ACTIVATIONS[second]
    net = PixelNet(make1(), make2())
    x = _inputs()
    classes = [0, 2]
    before = model_state(net)
    ours = camlens.explain(net, x, "guided-backprop", target=classes, normalize=False,
                           channels=True)
    assert_same_state(before, model_state(net))
    assert ours.shape == (2, 3, H, W)
    for i, cls in enumerate(classes):
        hand = _by_hand(net, x[i].numpy(), cls, rule1, rule2)
        # maps come back in float32, which holds these dyadic values exactly
        assert np.array_equal(hand["grad"].astype(np.float32), hand["grad"])
        assert np.array_equal(ours[i].numpy().astype(np.float64), hand["grad"]), (first, i)
        # not vacuous: positive gradients reach units on every side of the first kinks
        lo, hi, slope = rule1
        z1, up = hand["z1"], hand["g1"] > 0
        assert up[z1 > lo].any() and np.abs(hand["grad"]).max() > 0
        if hi < np.inf:  # clipped units with a positive gradient pass nothing back
            assert (up & (z1 >= hi)).any()
        if slope:  # below the kink the positive part passes, scaled by the slope
            assert (up & (z1 < lo)).any()
    # the guided gradient is not the plain one (negative gradients were stopped)
    x_ = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(net(x_)[[0, 1], classes].sum(), x_)[0]
    assert not torch.equal(plain.float(), ours)


def test_the_forward_values_are_the_activations_own():
    # the guided pass returns the model's own output: the same top class is explained
    for first in ACTIVATIONS:
        net = PixelNet(ACTIVATIONS[first][0](), nn.ReLU6())
        x = _inputs()
        plain = net(x.clone()).argmax(1)
        guided = camlens.explain(net, x, "guided-backprop", normalize=False, channels=True)
        by_class = camlens.explain(net, x, "guided-backprop", target=plain.tolist(),
                                   normalize=False, channels=True)
        assert torch.equal(guided, by_class), first


def test_guided_gradcam_on_relu6_is_guided_backprop_times_gradcam():
    net = PixelNet(nn.ReLU6(), nn.ReLU6())
    x = _inputs()
    both = camlens.compare(net, x, ["guided-gradcam", "guided-backprop", "gradcam"],
                           layer="conv2", normalize=False,
                           options={"guided-gradcam": {"channels": True},
                                    "guided-backprop": {"channels": True}})
    # 1 x 1 convs: the Grad-CAM map is already at the input's size, so no upsampling
    assert torch.equal(both["guided-gradcam"],
                       both["guided-backprop"] * both["gradcam"][:, None])
    assert both["guided-gradcam"].abs().amax() > 0


@pytest.mark.parametrize(("act", "name"), [(nn.SiLU(), "SiLU"), (nn.GELU(), "GELU"),
                                           (nn.Hardswish(), "Hardswish")])
def test_smooth_activations_are_refused_with_the_reason(act, name):
    net = PixelNet(act, copy.deepcopy(act))
    with pytest.raises(ValueError) as err:
        camlens.explain(net, _inputs(), "guided-backprop")
    text = str(err.value)
    assert "needs ReLUs or clipped-linear activations (ReLU, ReLU6, Hardtanh or LeakyReLU" in text
    assert f"it runs {name}: smooth, with no linear region" in text
    assert "use a gradient method such as 'gradcam'" in text
    # inside compare only the guided methods refuse
    out = camlens.compare(net, _inputs(), ["gradcam", "guided-gradcam"], layer="conv2",
                          errors="keep")
    assert isinstance(out["guided-gradcam"], ValueError)
    assert out["gradcam"].shape == (2, H, W)


def _reference_relu6(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose nn.ReLU6 modules are guided by tensor hooks: an
    implementation independent of camlens' (no autograd.Function, no TorchFunctionMode)."""

    class HookedReLU6(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inside = ((x > 0) & (x < 6)).to(x.dtype)
            y = x * inside + (x.clamp(0, 6) - x * inside).detach()  # value relu6, slope mask
            if y.requires_grad:
                y.register_hook(lambda g: g.clamp_min(0))
            return y

    ref = copy.deepcopy(model)
    for module in list(ref.modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, nn.ReLU6):
                setattr(module, child, HookedReLU6())
    return ref


@pytest.fixture(scope="module")
def bundled():
    return camlens.load_model()[0]


def test_bundled_model_runs_the_guided_methods_and_matches_a_reference(bundled):
    # EfficientNet-Lite0 runs ReLU6 modules only: the guided methods apply, and the guided
    # gradient equals the tensor-hook reference, in float64, bit for bit.
    model = copy.deepcopy(bundled).double()
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) > 10
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    classes = [281, 5]
    ours = camlens.explain(model, x, "guided-backprop", target=classes, normalize=False,
                           channels=True)
    ref = _reference_relu6(model)
    x_ = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(ref(x_)[[0, 1], classes].sum(), x_)[0]
    assert torch.equal(ours, expected.float())  # maps come back in float32
    assert ours.abs().amax() > 0
    maps = camlens.compare(bundled, x.float(), ["gradcam", "guided-backprop", "guided-gradcam"])
    for name, m in maps.items():
        assert m.shape == (2, 64, 64) and float(m.amax()) == 1.0, name
