"""Contract tests over every registered method: the registry drives this matrix."""

from __future__ import annotations

import gc
import logging

import pytest
import torch
from conftest import FAST, ResidualNet, TinyNet, assert_same_state, model_state, randomize_bn

import camlens
from camlens._registry import method_class

METHODS = camlens.available_methods()


def explain(model, x, method, **kw):
    return camlens.explain(model, x, method=method, **FAST.get(method, {}), **kw)


def layer_resolution(method: str, layer: int, image: int) -> int:
    cls = method_class(method)
    pixel_level = cls.guided or not cls.needs_layer or hasattr(cls, "own_layers")
    return image if pixel_level else layer


def test_registry_lists_the_issue_methods():
    for name in ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                 "gradcam-elementwise", "eigencam", "eigengradcam"]:
        assert name in METHODS
    assert len(set(METHODS)) == len(METHODS)
    assert camlens.available_methods("eigen*") == ["eigencam", "eigengradcam"]
    for name in METHODS:
        assert camlens.describe(name)


@pytest.mark.parametrize("method", METHODS)
def test_shape_range_dtype(method, tiny, images):
    before = model_state(tiny)
    maps = explain(tiny, images, method)
    assert maps.shape == (2, 16, 16)
    assert maps.dtype == torch.float32 and maps.device == images.device
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    assert_same_state(before, model_state(tiny))


@pytest.mark.parametrize("method", METHODS)
def test_topk_and_sizes(method, tiny, images):
    maps = explain(tiny, images, method, target=camlens.TopK(3), size=(5, 7))
    assert maps.shape == (2, 3, 5, 7)
    low = explain(tiny, images, method, size=None, normalize=False)
    side = layer_resolution(method, 8, 16)
    assert low.shape == (2, side, side) and (low >= 0).all()
    top1 = explain(tiny, images, method, size=None)
    top3 = explain(tiny, images, method, target=camlens.TopK(3), size=None)
    assert torch.allclose(top3[:, 0], top1, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_one_target_per_image_equals_separate_calls(method, tiny, images):
    both = explain(tiny, images, method, target=[1, 3])
    first = explain(tiny, images[:1], method, target=1)
    second = explain(tiny, images[1:], method, target=3)
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_model_untouched_in_train_mode_with_grads_and_frozen_params(method, images):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).train()
    model.features[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 3.0)
    before = model_state(model)
    maps = explain(model, images, method)
    assert torch.isfinite(maps).all()
    assert_same_state(before, model_state(model))  # BN running stats untouched too
    assert model.training and model.features[1].training


@pytest.mark.parametrize("method", METHODS)
def test_all_params_frozen_and_inside_no_grad(method, tiny, images):
    for p in tiny.parameters():
        p.requires_grad_(False)
    expected = explain(tiny, images, method)
    with torch.no_grad():
        maps = explain(tiny, images, method)
        assert not torch.is_grad_enabled()
    assert torch.allclose(maps, expected)
    assert all(not p.requires_grad for p in tiny.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_hooks_removed_after_error(method, tiny, images):
    before = model_state(tiny)
    with pytest.raises(ValueError, match="out of range"):
        explain(tiny, images, method, target=99)
    assert_same_state(before, model_state(tiny))

    def broken(output):
        raise RuntimeError("boom")

    if method == "cam":
        return
    with pytest.raises(RuntimeError, match="boom"):
        explain(tiny, images, method, target=broken)
    assert_same_state(before, model_state(tiny))


@pytest.mark.parametrize("method", METHODS)
def test_model_error_mid_forward_leaves_nothing(method, images):
    class Exploding(TinyNet):
        def forward(self, x):
            self.features(x)
            raise RuntimeError("model failed")

    torch.manual_seed(0)
    model = Exploding().train()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="model failed"):
        explain(model, images, method, layer="features")
    assert_same_state(before, model_state(model))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", METHODS)
def test_no_memory_growth_over_200_calls(method, tiny):
    x = torch.randn(1, 3, 8, 8)
    explainer = camlens.Explainer(tiny, method, **FAST.get(method, {}))

    def live_tensors() -> int:
        gc.collect()
        kinds = (torch.Tensor, torch.nn.Parameter)
        return sum(1 for o in gc.get_objects() if type(o) in kinds)

    for _ in range(5):
        explainer(x)
    start = live_tensors()
    for _ in range(200):
        explainer(x)
    assert live_tensors() <= start
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules())


COUNTERFACTUAL = [
    m for m in METHODS
    if method_class(m).class_specific and method_class(m).supports_counterfactual
]


@pytest.mark.parametrize("method", COUNTERFACTUAL)
def test_counterfactual_differs(method, tiny, images):
    normal = explain(tiny, images, method, target=0, normalize=False)
    counter = explain(tiny, images, method, target=0, normalize=False,
                              counterfactual=True)
    assert not torch.allclose(normal, counter)


@pytest.mark.parametrize("method", sorted(set(METHODS) - set(COUNTERFACTUAL)))
def test_counterfactual_where_it_does_not_apply_is_an_error(method, tiny, images):
    with pytest.raises(ValueError, match="class-agnostic|absolute values"):
        explain(tiny, images, method, counterfactual=True)


def test_gradcam_counterfactual_is_gradcam_of_negated_gradients(tiny, images):
    counter = camlens.explain(tiny, images, target=2, normalize=False, counterfactual=True)
    negated = camlens.explain(tiny, images, target=lambda out: -out[:, 2], normalize=False)
    assert torch.allclose(counter, negated, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cam"])
def test_inplace_changes_after_the_layer_do_not_leak(method):
    """bn2's output is changed by ``out += identity`` and ``relu_``: the map must not see it."""
    torch.manual_seed(0)
    inplace = randomize_bn(ResidualNet(inplace=True)).eval()
    clean = ResidualNet(inplace=False).eval()
    clean.load_state_dict(inplace.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    got = explain(inplace, x, method, layer="bn2", target=[0, 1], normalize=False)
    want = explain(clean, x, method, layer="bn2", target=[0, 1], normalize=False)
    assert torch.allclose(got, want, atol=1e-6)
    # and the model's output is unchanged by our hooks
    assert torch.allclose(inplace(x), clean(x), atol=1e-6)


def test_inplace_relu_layer_and_manual_reference():
    """Reference from a hand-written forward: A = bn2(...) and G = d y / d A by autograd."""
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet(inplace=True)).eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    identity = torch.relu(model.stem(x))
    a = model.bn2(model.conv2(torch.relu(model.bn1(model.conv1(identity))))).detach()
    a.requires_grad_(True)
    y = model.fc(torch.relu(a + identity).mean(dim=(2, 3)))[0, 1]
    (g,) = torch.autograd.grad(y, a)
    want = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    got = camlens.explain(model, x, layer="bn2", target=1, size=None, normalize=False)
    assert torch.allclose(got, want.detach(), atol=1e-6)


def test_layer_list_fuses_normalised_maps(tiny, images):
    a = camlens.explain(tiny, images, layer="features.2", size=(16, 16))
    b = camlens.explain(tiny, images, layer="features.5", size=(16, 16))
    fused = camlens.explain(tiny, images, layer=["features.2", tiny.features[5]])
    mean = (a + b) / 2
    lo = mean.flatten(1).amin(1)[:, None, None]
    hi = mean.flatten(1).amax(1)[:, None, None]
    assert torch.allclose(fused, (mean - lo) / (hi - lo), atol=1e-5)


def test_auto_layer_is_logged_and_explainer_reports_it(tiny, images, caplog):
    with caplog.at_level(logging.INFO, logger="camlens"):
        explainer = camlens.Explainer(torch.nn.Sequential(TinyNet()), "gradcam")
        explainer(images)
    assert explainer.layer_names == ["0.features"]
    assert "0.features" in caplog.text
    assert explainer.last_output.shape == (2, 5)
    assert not explainer.last_output.requires_grad


def test_explainer_context_manager_and_repr(tiny, images):
    with camlens.Explainer(tiny, "gradcam++", layer="features") as explainer:
        out = explainer(images, target=camlens.TopK(2))
        assert out.shape == (2, 2, 16, 16)
        assert explainer.last_output is not None
    assert explainer.last_output is None
    assert "gradcam++" in repr(explainer)


def test_callable_targets(tiny, images):
    single = camlens.explain(tiny, images, target=lambda out: out[:, 1])
    assert single.shape == (2, 16, 16)
    assert torch.allclose(single, camlens.explain(tiny, images, target=1))
    multi = camlens.explain(tiny, images, target=lambda out: out[:, [1, 2]])
    assert multi.shape == (2, 2, 16, 16)
    assert torch.allclose(multi[:, 1], camlens.explain(tiny, images, target=2), atol=1e-6)
    soft = camlens.explain(tiny, images, target=camlens.SoftmaxTarget(1), normalize=False)
    assert soft.shape == (2, 16, 16) and torch.isfinite(soft).all()


def test_float64_and_half_inputs(tiny, images):
    maps64 = camlens.explain(tiny.double(), images.double())
    assert maps64.dtype == torch.float32
    tiny.float()
    assert torch.allclose(maps64, camlens.explain(tiny, images), atol=1e-4)


def test_eval_mode_false_runs_the_model_as_it_is(images):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).train()
    before = model_state(model)
    camlens.explain(model, images, eval_mode=False)
    after = model_state(model)
    assert before["modes"] == after["modes"]
    # BatchNorm in training mode updates its running statistics: that is what False means
    assert any(not torch.equal(a, b) for (_, a), (_, b) in zip(before["buffers"], after["buffers"]))
