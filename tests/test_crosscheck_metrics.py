"""Cross-check of ``camlens.metrics.confidence_change`` (average drop %, increase in
confidence %; Chattopadhyay et al. 2018, Grad-CAM++ sec. 6.1) against independent
implementations: torchcam's ``ClassificationMetric`` and pytorch-grad-cam's
``DropInConfidence`` / ``IncreaseInConfidence``.

(pytorch-grad-cam's ``CamMultImageConfidenceChange`` on random maps is already covered by
``tests/test_metrics.py::test_confidence_change_matches_pytorch_grad_cam``.)

The setup: a torchvision ``resnet18(weights=None, num_classes=10)`` with seeded random
weights and seeded random BatchNorm statistics, in eval mode; eight 3x64x64 images,
each a brightly coloured disc at a random place on a noisy background (so the model does
not predict one class for all of them: top-1 classes 0, 0, 0, 3, 0, 0, 5, 5). Grad-CAM
at ``layer3`` (256 x 4 x 4). Ten classes rather than 1000 keep the class probabilities
away from 0 (top-1: 0.16 to 0.23; least likely class: >= 0.04), so the reference's
``+ 1e-7`` below is negligible.

What torchcam 0.5.0 computes (``torchcam/metrics.py``), and how the test matches it:

* ``ClassificationMetric(extractor, logits_fn)`` scores the model output with ``logits_fn``;
  the Grad-CAM++ paper uses class probabilities, so the test passes
  ``partial(torch.softmax, dim=-1)`` (without it torchcam would compare raw logits).
* The explained class is the top-1 prediction (``class_idx=None``) or ``class_idx``.
* The map: torchcam calls the extractor on the *softmax* scores, so its Grad-CAM
  backpropagates the class *probability*, not the logit (systematic difference 1: with
  camlens' default logit target the normalised maps differ by up to 0.71 here). camlens
  reproduces it with ``target=SoftmaxTarget(classes)``; the test checks that both maps
  agree at the layer's resolution (4x4, atol 1e-4; measured 3e-6 for the top-1 classes,
  2e-5 for the least likely ones, whose maps have a tiny raw range, so torchcam's ``+ 1e-8``
  in the normalisation shows) before comparing any metric.
* The map is min-max normalised at the layer's resolution (``(c - min) / (max - min +
  1e-8)``) and then upsampled bilinearly (``align_corners=False``) to the input size.
  camlens is fed exactly that upsampled map (captured from torchcam's extractor).
* Explanation image: ``map * image``; drop per image ``relu(Y - O) / (Y + 1e-7)``
  (systematic difference 2: the ``+ 1e-7``; camlens divides by ``Y``); increase ``Y < O``.
  ``summary()`` gives fractions (systematic difference 3: camlens gives percentages).

Tolerances: torchcam's numbers reproduced by hand from ``Y`` and ``O`` agree to 1e-6
(same formula, float32). camlens' per-image drops agree with ``100 *`` the reference's
within 1e-3 percentage points (measured: 7e-5): the ``1e-7 / Y`` relative difference is
< 3e-6 here, the rest is float32 noise from different batch compositions (camlens runs
the images and the explanation images in one batch, torchcam in two). The increase
indicator is compared exactly, after checking that no image has ``|O - Y| < 1e-4`` (so
float noise cannot flip it; measured min 0.015).

Measured numbers (torchcam x 100 = camlens): top-1 classes: average drop 23.48 %, increase
0 %; top-1 for the even images and the least likely class for the odd ones: average drop
10.26 %, increase 50 % (exactly the odd images: masking flattens the softmax, so the least
likely class gains).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch import Tensor, nn
from torchcam.methods import GradCAM
from torchcam.metrics import ClassificationMetric
from torchvision import models as tvm

import camlens
from camlens import metrics

SEED = 1
SIZE = 64
LAYER = "layer3"  # 256 x 4 x 4 at 64 x 64
DROP_TOL = 1e-3  # percentage points
MARGIN = 1e-4  # minimum |O - Y| for the increase indicator to be compared exactly


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(SEED)
    return randomize_bn(tvm.resnet18(weights=None, num_classes=10), SEED).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    """Eight noisy images, each with a disc of a random colour at a random place."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                            indexing="ij")
    out = []
    for _ in range(8):
        centre = torch.rand(2, generator=g) * 1.2 - 0.6
        colour = torch.randn(3, generator=g) * 2
        disc = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < 0.12).float()
        out.append(torch.randn(3, SIZE, SIZE, generator=g) * 0.5 + colour[:, None, None] * disc)
    return torch.stack(out)


def mixed_classes(model: nn.Module, images: Tensor) -> Tensor:
    """Even images: their top-1 class; odd images: their least likely class."""
    with torch.no_grad():
        logits = model(images)
    odd = torch.arange(len(images)) % 2 == 1
    return torch.where(odd, logits.argmin(1), logits.argmax(1))


def probabilities(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).gather(1, classes[:, None])[:, 0]


def run_torchcam(model: nn.Module, images: Tensor, class_idx=None):
    """torchcam's summary and the exact (normalised, layer-resolution) map it used."""
    extractor = GradCAM(model, LAYER)
    captured: list[Tensor] = []
    fuse = extractor.fuse_cams

    def recording_fuse(cams, *args, **kwargs):
        fused = fuse(cams, *args, **kwargs)
        captured.append(fused.detach().clone())
        return fused

    extractor.fuse_cams = recording_fuse
    try:
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(images, class_idx)
        summary = metric.summary()
        assert metric.total == len(images) and metric.nan_count == 0
    finally:
        extractor.remove_hooks()
    assert len(captured) == 1
    return summary, captured[0]


def torchcam_upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """torchcam's ``_resize_cam``: bilinear, ``align_corners=False``."""
    return F.interpolate(cam[:, None], size, mode="bilinear", align_corners=False)[:, 0]


def compare(
    model: nn.Module, images: Tensor, classes: Tensor, class_idx
) -> metrics.ConfidenceChange:
    """Run both on identical maps and classes and check every number; returns camlens'."""
    summary, cam = run_torchcam(model, images, class_idx)
    # 1. torchcam's map is camlens' Grad-CAM of the softmax probability of the same class
    ours_layer = camlens.explain(model, images, "gradcam", layer=LAYER,
                                 target=camlens.SoftmaxTarget(classes.tolist()), size=None)
    assert cam.shape == ours_layer.shape == (len(images), 4, 4)
    assert torch.allclose(ours_layer, cam, atol=1e-4, rtol=0), float((ours_layer - cam).abs().max())
    # 2. both metrics see that map, upsampled the way torchcam does
    maps = torchcam_upsample(cam, images.shape[2:])
    ours = metrics.confidence_change(model, images, maps, target=class_idx)
    # 3. torchcam's numbers, reproduced by hand from its definition
    y = probabilities(model, images, classes)
    o = probabilities(model, images * maps[:, None], classes)
    assert float((o - y).abs().min()) > MARGIN, (o - y)
    ref_drop = torch.relu(y - o) / (y + 1e-7)  # fractions, as torchcam
    ref_increase = y < o
    assert summary["avg_drop"] == pytest.approx(float(ref_drop.mean()), abs=1e-6)
    assert summary["conf_increase"] == pytest.approx(float(ref_increase.float().mean()),
                                                     abs=1e-6)
    # 4. camlens against torchcam (x 100: camlens reports percentages)
    assert torch.allclose(ours.drop, 100 * ref_drop, atol=DROP_TOL, rtol=0)
    assert torch.equal(ours.increased, ref_increase)
    assert ours.average_drop == pytest.approx(100 * summary["avg_drop"], abs=DROP_TOL)
    assert ours.increase == pytest.approx(100 * summary["conf_increase"], abs=1e-9)
    return ours


def test_top1_average_drop_matches_torchcam(model, images):
    with torch.no_grad():
        top1 = model(images).argmax(1)
    assert len(set(top1.tolist())) > 1, "all images predict the same class"
    ours = compare(model, images, top1, class_idx=None)  # both explain the top-1 class
    # The numbers compared (measured): average drop 23.48 %, no increase.
    assert 15 < ours.average_drop < 35 and ours.increase == 0.0


def test_mixed_classes_with_increases_match_torchcam(model, images):
    """Even images explain their top-1 class, odd images their least likely class:
    multiplying the image by a map in [0, 1] shrinks the logits' spread, so the least
    likely class's probability rises. Both branches (drop and increase) in one batch."""
    classes = mixed_classes(model, images)
    ours = compare(model, images, classes, class_idx=classes.tolist())
    assert ours.increase == 50.0  # measured: exactly the odd images
    assert ours.increased.tolist() == [False, True] * 4
    assert bool((ours.drop[ours.increased] == 0).all())
    assert bool((ours.drop[~ours.increased] > 0).all())


# ---------------------------------------------------------------- pytorch-grad-cam


def test_drop_and_increase_in_confidence_match_pytorch_grad_cam(model, images):
    """pytorch-grad-cam's ``DropInConfidence`` is ``max(0, Y - O)`` per image *without*
    dividing by ``Y`` (the paper divides), and ``IncreaseInConfidence`` is ``O > Y`` as
    float, with ``ClassifierOutputSoftmaxTarget`` scoring probabilities. So camlens'
    per-image drop equals ``100 * DropInConfidence / Y`` (atol 1e-3 percentage points)
    and its increase flags equal ``IncreaseInConfidence`` exactly. The maps: camlens'
    default Grad-CAM (logit target) at input size, real maps rather than random ones;
    classes as in the previous test. Measured: average drop 9.73 %, increase 50 %,
    largest per-image difference 2e-5 percentage points."""
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    classes = mixed_classes(model, images)
    maps = camlens.explain(model, images, "gradcam", layer=LAYER, target=classes.tolist())
    ours = metrics.confidence_change(model, images, maps, target=classes.tolist())
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    cams = maps.numpy()
    drop = np.asarray(DropInConfidence()(images, cams, targets, model)).flatten()
    increase = np.asarray(IncreaseInConfidence()(images, cams, targets, model)).flatten()
    y = probabilities(model, images, classes).numpy()
    o = probabilities(model, images * maps[:, None], classes).numpy()
    assert np.abs(o - y).min() > MARGIN
    assert np.allclose(ours.drop.numpy(), 100 * drop / y, atol=DROP_TOL, rtol=0)
    assert np.array_equal(ours.increased.numpy(), increase > 0)
    assert 0 < ours.increase < 100  # both branches exercised
    assert ours.average_drop == pytest.approx(float(np.mean(100 * drop / y)), abs=DROP_TOL)


def test_confidence_change_with_an_underflowed_probability_is_not_nan():
    """softmax([0, -200])[1] is 0 in float32: nothing can drop, so the drop is 0, not NaN."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, -200.0]))
    result = metrics.confidence_change(model, torch.rand(2, 1, 2, 2), torch.rand(2, 2, 2), 1)
    assert result.average_drop == 0.0 and torch.equal(result.drop, torch.zeros(2))
