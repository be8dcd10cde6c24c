"""Wrong or silent results the library must not give: the callable-target contract for
every method, non-finite scores, model modes when switching mode fails, method refusals
inside a shared pass, and the cost plan."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, TinyNet, assert_same_state, model_state, randomize_bn
from torch import nn

import camlens
from camlens._guard import ModelGuard
from camlens._registry import method_class

METHODS = camlens.available_methods()
CLASSES = [1, 4, 2]


@pytest.fixture(scope="module")
def net() -> TinyNet:
    torch.manual_seed(0)
    return randomize_bn(TinyNet()).eval()


@pytest.fixture(scope="module")
def three() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _per_image_callable(method: str):
    """Picks one class per image by position, as a user writes it. RISE scores class
    targets by their softmax probability (the paper), so its equivalent callable does too."""
    cls = torch.tensor(CLASSES)
    if method == "rise":
        return lambda out: out.softmax(1)[torch.arange(out.shape[0]), cls]
    return lambda out: out[torch.arange(out.shape[0]), cls]


@pytest.mark.parametrize("method", [m for m in METHODS if method_class(m).class_specific])
def test_per_image_callable_equals_the_list_of_ints(method, net, three):
    # The contract: a plain callable always sees one row per explained image, row i for
    # image i, whatever the method and its batch_size (before: IndexError with batch
    # sizes 2, 3 and 8 in every Scorer method, or silently another image's scores).
    cls = method_class(method)
    if method in ("cam", "finercam"):  # these need class indices, which a callable hides
        with pytest.raises(ValueError, match="class"):
            camlens.explain(net, three, method, target=_per_image_callable(method))
        return
    sizes = (2, 3, 8) if cls.needs_scorer else (32,)
    for batch_size in sizes:
        opts = {**FAST.get(method, {}), "batch_size": batch_size}
        by_callable = camlens.explain(net, three, method, target=_per_image_callable(method),
                                      **opts)
        by_ints = camlens.explain(net, three, method, target=CLASSES, **opts)
        assert torch.allclose(by_callable, by_ints, atol=1e-6), (method, batch_size)
        assert by_ints.amax() > 0


def test_callable_that_breaks_the_row_contract_is_told_so(net, three):
    with pytest.raises(ValueError, match=r"expected \(B,\) = \(3,\)"):
        camlens.explain(net, three, "scorecam", target=lambda out: out[:2, 0])


class _Broken(nn.Module):
    """A GAP + linear classifier whose logits become NaN or inf: at once (``always``), or
    only for perturbed copies (``perturbed``): an input that is not one of the ``clean``
    images (a masked copy) gives NaN, and a channel of ``features.3`` that is zero
    everywhere (an ablated one; Softplus is never 0 otherwise) divides by zero."""

    def __init__(self, value: float, when: str = "always", clean: torch.Tensor | None = None
                 ) -> None:
        super().__init__()
        self.clean = clean
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.Softplus())
        self.fc = nn.Linear(8, 5)
        self.value, self.when = value, when

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean((2, 3))
        out = self.fc(pooled)
        if self.when == "always":
            return out * self.value
        known = (x.flatten(1)[:, None] == self.clean.flatten(1)[None]).all(-1).any(1)
        out = torch.where(known[:, None], out, out * self.value)
        return out / (pooled.amin(1, keepdim=True) > 0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_scores_raise_in_every_method(method, value, three):
    model = _Broken(value)
    before = model_state(model)
    with pytest.raises(ValueError, match="NaN|inf|non-finite"):
        camlens.explain(model, three, method, layer="features.3", **FAST.get(method, {}))
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", [m for m in METHODS if method_class(m).needs_scorer])
def test_non_finite_scores_of_perturbed_copies_raise(method, three):
    model = _Broken(float("nan"), when="perturbed", clean=three)
    with pytest.raises(ValueError, match="non-finite score .* perturbed copy"):
        camlens.explain(model, three, method, layer="features.3", target=CLASSES,
                        **FAST.get(method, {}))


def test_non_finite_gradient_raises():
    class SqrtNet(TinyNet):
        def forward(self, x):
            return super().forward(x) + torch.sqrt(self.features(x)).mean((1, 2, 3))[:, None]

    torch.manual_seed(0)
    model = SqrtNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="gradient of the target score .* NaN or inf"):
        camlens.explain(model, x, "gradcam", layer="features.5")


def test_modes_restored_when_switching_to_eval_raises():
    class Stubborn(nn.Module):
        def train(self, mode: bool = True):
            if not mode:
                raise RuntimeError("this module cannot leave training mode")
            return super().train(mode)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Stubborn(), nn.Dropout())
    model.train()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="cannot leave"), ModelGuard(model):
        pass
    assert [m.training for m in model.modules()] == before


def test_a_refusing_method_does_not_stop_the_shared_pass():
    # EfficientNet-B0-style SiLU model: the guided methods refuse inside the shared pass,
    # every other method of the pass still gives its maps. (ReLU6 was the example until
    # the guided methods learned it.)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3),
                          nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    names = ["gradcam", "guided-gradcam", "layercam", "guided-backprop", "cam"]
    result = camlens.compare(model, x, names, layer="3", errors="keep")
    for name in ("guided-gradcam", "guided-backprop"):
        assert isinstance(result[name], ValueError) and "needs ReLUs" in str(result[name])
    alone = camlens.explain(model, x, "gradcam", layer="3")
    assert torch.equal(result["gradcam"], alone)
    assert result["layercam"].shape == result["cam"].shape == (2, 16, 16)
    with pytest.raises(ValueError, match="needs ReLUs"):
        camlens.compare(model, x, names, layer="3")


def test_plan_counts_forwards_before_the_methods_run(net, three):
    rows = []
    seen_before: list[int] = []

    def plan(found):
        rows.extend(found)
        seen_before.append(len(calls))

    calls: list[tuple[int, int]] = []
    result = camlens.compare(net, three, ["gradcam", "scorecam", "ablationcam"],
                             layer="features.5", target=CLASSES, plan=plan,
                             progress=lambda done, total: calls.append((done, total)),
                             options={"scorecam": {"batch_size": 4}})
    assert seen_before == [0]  # the plan came before any extra forward
    by_name = {r.method: r for r in rows}
    assert by_name["gradcam"].forwards == 0 and by_name["gradcam"].seconds == 0
    acts = {}
    h = net.get_submodule("features.5").register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        net(three)
    h.remove()
    a = acts["a"]
    live = int(a.flatten(2).ne(0).any(-1).sum())
    assert by_name["ablationcam"].forwards == live + 3  # zero channels are not ablated
    assert 0 < by_name["scorecam"].forwards <= 3 * a.shape[1]
    assert by_name["scorecam"].seconds > 0
    # progress of each method counts up to the planned total
    assert (by_name["scorecam"].forwards, by_name["scorecam"].forwards) in calls
    assert all(not isinstance(v, Exception) for v in result.values())


def test_sscam_shares_noise_between_equal_masks(three):
    # Dead channels (all zero) have equal masks: SS-CAM runs them once, exactly.
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).eval()
    rows = []
    camlens.compare(model, three, ["sscam"], layer="features.5", target=CLASSES,
                    plan=rows.extend, options={"sscam": {"num_samples": 2}})
    scorecam_rows = []
    camlens.compare(model, three, ["scorecam"], layer="features.5", target=CLASSES,
                    plan=scorecam_rows.extend)
    assert rows[0].forwards == 2 * scorecam_rows[0].forwards


@pytest.mark.parametrize("options, error", [
    ({"noise_smooth": 2, "noise_std": float("nan")}, ValueError),
    ({"noise_smooth": 2, "noise_std": -0.1}, ValueError),
    ({"seed": 1.5}, TypeError),
    ({"seed": "0"}, TypeError),
    ({"aug_smooth": "yes"}, TypeError),
    ({"eigen_smooth": 1}, TypeError),
])
def test_explainer_options_are_checked(net, three, options, error):
    with pytest.raises(error, match=list(options)[-1]):
        camlens.explain(net, three, "gradcam", **options)


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5, True, "0.2"])
def test_box_and_mask_thresholds_are_checked(threshold):
    maps = torch.rand(2, 8, 8)
    for derive in (camlens.boxes, camlens.masks):
        with pytest.raises((ValueError, TypeError), match="threshold"):
            derive(maps, threshold)
