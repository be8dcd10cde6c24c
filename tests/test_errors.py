"""Bad input gets a clear error that says what to do, and nothing is left hooked."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, model_state

import camlens


@pytest.fixture
def check_untouched(tiny):
    before = model_state(tiny)
    yield
    assert_same_state(before, model_state(tiny))


@pytest.mark.usefixtures("check_untouched")
@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        (torch.randn(3, 16, 16), ValueError, r"unsqueeze\(0\)"),
        (torch.randn(16, 16), ValueError, r"\(B, C, H, W\)"),
        (torch.randn(1, 1, 3, 16, 16, 2), ValueError, r"\(B, C, H, W\)"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), TypeError, r"inputs\.float\(\)"),
        (torch.zeros(0, 3, 16, 16), ValueError, "empty batch"),
        (torch.full((1, 3, 16, 16), float("nan")), ValueError, "NaN"),
        (torch.full((1, 3, 16, 16), float("inf")), ValueError, "inf"),
        ([[1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(tiny, inputs, error, message):
    with pytest.raises(error, match=message):
        camlens.explain(tiny, inputs)


def test_unknown_layer_lists_closest_names(tiny, images, check_untouched):
    with pytest.raises(ValueError, match=r"features\.5") as info:
        camlens.explain(tiny, images, layer="features.50")
    assert "closest" in str(info.value)
    with pytest.raises(ValueError, match="not part of the model"):
        camlens.explain(tiny, images, layer=torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="dotted name"):
        camlens.explain(tiny, images, layer=3)
    with pytest.raises(ValueError, match="empty list"):
        camlens.explain(tiny, images, layer=[])


def test_unknown_method_and_option(tiny, images):
    with pytest.raises(ValueError, match="'gradcam'"):
        camlens.explain(tiny, images, method="gradkam")
    with pytest.raises(TypeError, match="its options are: center"):
        camlens.explain(tiny, images, method="eigencam", centre=True)
    with pytest.raises(TypeError, match="options are: none"):
        camlens.explain(tiny, images, method="gradcam", alpha=2)


def test_target_errors(tiny, images, check_untouched):
    with pytest.raises(ValueError, match="out of range.*0 to 4"):
        camlens.explain(tiny, images, target=5)
    with pytest.raises(ValueError, match="out of range"):
        camlens.explain(tiny, images, target=[0, -1])
    with pytest.raises(ValueError, match="one class per image"):
        camlens.explain(tiny, images, target=[0, 1, 2])
    with pytest.raises(ValueError, match="more classes"):
        camlens.explain(tiny, images, target=camlens.TopK(6))
    with pytest.raises(ValueError, match="k >= 1"):
        camlens.TopK(0)
    with pytest.raises(TypeError, match="string"):
        camlens.explain(tiny, images, target="cat")
    with pytest.raises(ValueError, match=r"shape \(2, 5, 1\)"):
        camlens.explain(tiny, images, target=lambda out: out[..., None])
    with pytest.raises(ValueError, match=r"\(B,\) = \(2,\)"):
        camlens.explain(tiny, images, target=lambda out: out[0])
    with pytest.raises(TypeError, match="returned float"):
        camlens.explain(tiny, images, target=lambda out: 1.0)
    with pytest.raises(ValueError, match="without .detach"):
        camlens.explain(tiny, images, target=lambda out: out[:, 0].detach())


def test_inference_mode(tiny, images, check_untouched):
    with torch.inference_mode():
        frozen = images.clone()
        with pytest.raises(RuntimeError, match="inference_mode"):
            camlens.explain(tiny, images)
    with pytest.raises(ValueError, match="inference_mode"):
        camlens.explain(tiny, frozen)


def test_layer_not_called_or_unused(images):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Conv2d(3, 4, 3)
            self.unused = torch.nn.Conv2d(3, 4, 3)
            self.side = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            self.side(x)
            return self.fc(self.used(x).mean((2, 3)))

    model = Branchy()
    with pytest.raises(ValueError, match="not called"):
        camlens.explain(model, images, layer="unused")
    with pytest.raises(ValueError, match="does not influence"):
        camlens.explain(model, images, layer=["used", "side"])
    assert all(not m._forward_hooks for m in model.modules())


def test_cam_without_gap_linear_head(images):
    class NoGap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
            self.fc = torch.nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    with pytest.raises(ValueError, match="global average pooling.*gradcam"):
        camlens.explain(NoGap(), images, method="cam", layer="conv")

    class MaxPooled(NoGap):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).amax((2, 3)))

    with pytest.raises(ValueError, match="not the spatial mean"):
        camlens.explain(MaxPooled(), images, method="cam", layer="conv")
    with pytest.raises(ValueError, match="class indices"):
        from conftest import TinyNet

        camlens.explain(TinyNet(), images, method="cam", target=lambda out: out[:, 0])


def test_bad_size_and_reshape(tiny, images):
    with pytest.raises(ValueError, match="size must be"):
        camlens.explain(tiny, images, size=(0, 4))
    with pytest.raises(ValueError, match="size must be"):
        camlens.explain(tiny, images, size="big")
    with pytest.raises(ValueError, match="spatial dimensions"):
        camlens.explain(tiny, images, size=(4, 4, 4))
    with pytest.raises(ValueError, match="reshape"):
        camlens.explain(tiny, images, reshape=lambda t: t.flatten(1))
    with pytest.raises(TypeError, match="nn.Module"):
        camlens.explain("model", images)


def test_layer_output_not_a_tensor(images):
    class Dicty(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return {"a": self.conv(x)}

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Dicty()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.block(x)["a"].mean((2, 3)))

    model = Outer()
    with pytest.raises(TypeError, match="pick a submodule"):
        camlens.explain(model, images, layer="block")
    assert torch.isfinite(camlens.explain(model, images, layer="block.conv")).all()
    assert all(not m._forward_hooks for m in model.modules())
