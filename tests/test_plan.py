"""The engine's plan (what a set of methods needs from one pass), read alone, without a model;
and the adapter interface the engine reaches other frameworks through."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TinyNet

from camlens._backend import PassOptions, PassPlan, PassResult, adapter_of
from camlens._registry import create_method
from camlens.targets import ClassTarget

NEEDS = ("gradients", "classifier", "hessian", "input_gradients", "guided", "layer", "scorer")


def _needs(plan: PassPlan) -> set[str]:
    return {n for n in NEEDS if getattr(plan, n)}


@pytest.mark.parametrize(("names", "needs"), [
    (["gradcam"], {"gradients", "layer"}),
    (["eigencam"], {"layer"}),
    (["scorecam"], {"layer", "scorer"}),
    (["rise"], {"scorer"}),
    (["cam"], {"classifier", "layer"}),
    (["shapleycam"], {"gradients", "hessian", "layer"}),
    (["guided-backprop"], {"guided"}),
    (["guided-gradcam"], {"gradients", "guided", "layer"}),
    (["fullgrad"], {"gradients", "input_gradients", "layer"}),
    (["gradcam", "cam", "rise"], {"gradients", "classifier", "layer", "scorer"}),
    (["guided-backprop", "eigencam"], {"guided", "layer"}),
])
def test_the_plan_is_the_union_of_the_methods_needs(names, needs):
    plan = PassPlan.of([create_method(n) for n in names])
    assert _needs(plan) == needs
    assert plan.methods == tuple(plan.methods)
    assert plan.guided_only == (needs == {"guided"})


def test_the_plan_names_the_methods_that_need_a_pass_alone():
    full, finer, smooth = (create_method(n) for n in ("fullgrad", "finercam", "smoothgradcam++"))
    plan = PassPlan.of([full])
    assert (plan.own_layers, plan.transform, plan.noisy) == (full, None, None)
    assert plan.alone == ("fullgrad",)
    plan.check_alone()  # alone: fine
    assert PassPlan.of([finer]).transform is finer
    assert PassPlan.of([smooth]).noisy is smooth
    for pair in ([full, create_method("gradcam")], [finer, smooth]):
        with pytest.raises(ValueError, match="each need a pass of their own"):
            PassPlan.of(pair).check_alone()
    PassPlan.of([create_method("gradcam"), create_method("scorecam")]).check_alone()


def test_the_plan_names_the_methods_that_need_a_backward_pass():
    plan = PassPlan.of([create_method(n) for n in ("gradcam", "scorecam", "guided-backprop")])
    assert plan.backward == ("gradcam", "guided-backprop")
    assert PassPlan.of([create_method("rise")]).backward == ()


def test_the_plan_is_frozen():
    plan = PassPlan.of([create_method("gradcam")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.gradients = False  # type: ignore[misc]
    assert PassOptions(counterfactual=True).sign == -1.0
    assert PassOptions().sign == 1.0


class _OwnPass(torch.nn.Module):
    """A model adapter that brings its own pass (as Keras on TensorFlow does)."""

    camlens_adapter = True

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet().eval()
        self.seen: list[tuple[PassPlan, PassOptions]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def layer_to_channels_first(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def engine_pass(self):
        def run(model, inputs, plan, layers, target, options):
            self.seen.append((plan, options))
            return PassResult(model(inputs), [], [], None, True)
        return run


def test_the_engine_runs_an_adapters_own_pass_with_the_plan():
    from camlens._engine import run_pass

    model = _OwnPass()
    assert adapter_of(model) is model and adapter_of(TinyNet()) is None
    x = torch.randn(2, 3, 8, 8)
    result = run_pass(model, x, [create_method("gradcam"), create_method("scorecam")], None,
                      ClassTarget(1), counterfactual=True,
                      batch_size=7, seed=3)
    (plan, options), = model.seen
    assert _needs(plan) == {"gradients", "layer", "scorer"}
    assert (options.counterfactual, options.batch_size, options.seed) == (True, 7, 3)
    assert torch.equal(result.output, model(x))
