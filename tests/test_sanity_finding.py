"""The model parameter randomisation test's published finding, on a VGG and real photos.

Adebayo et al. 2018, "Sanity Checks for Saliency Maps", https://arxiv.org/abs/1810.03292:
under cascading re-initialisation from the top layer down, Grad-CAM's map changes (it
depends on the weights), while guided backpropagation's map stays similar to the
original (it behaves like an edge detector of the input). The paper's figures show
guided backprop's similarity staying high through most of the cascade and only
dropping once the first convolutions are re-initialised; this is what happens here too.

Setup (no downloads, CPU): torchvision ``vgg11(weights=None)`` (8 convs, seeded
torchvision init: kaiming-normal convs, zero biases) with a GAP + ``Linear(512, 10)`` head
in place of the three 4096-wide FC layers (they would make every deep copy 500 MB and add
nothing to the finding); four bundled scikit-image photos (``chelsea``, ``astronaut``,
``coffee``, ``rocket``), centre-cropped, resized to 112 x 112, ImageNet-normalised.
Grad-CAM at ``features.20`` (the last max-pool, 512 x 3 x 3). No pretrained weights
exist here, and training a VGG on CPU within the time budget is not possible, so the
original model is untrained. That does not change what is tested: whether the map
depends on the weights at all. Guided backprop's map barely changes when weights are
replaced by other random weights; Grad-CAM's does.

Measured (seeds 0; mean over the four photos; steps top first: classifier, features.18,
.16, .13, .11, .8, .6, .3, .0):

* guided backprop Spearman: 0.99 0.99 0.98 0.98 0.96 0.92 0.89 0.79 0.63
  (lowest photo: 0.99 0.99 0.97 0.97 0.94 0.90 0.85 0.73 0.56)
* guided backprop SSIM:     0.99 0.98 0.97 0.97 0.95 0.91 0.86 0.73 0.48
* Grad-CAM Spearman:        0.12 -0.11 0.49 0.32 -0.16 -0.07 -0.21 0.01 -0.35
* Grad-CAM SSIM:            0.16 0.18 0.15 0.33 0.13 0.16 0.13 0.25 0.01

So the finding holds for the whole cascade down to ``features.6`` (guided backprop >= 0.85
Spearman on every photo, Grad-CAM's mean <= 0.49); once the first two convolutions are
re-initialised guided backprop falls too (0.79, then 0.63 with every layer random), as in
the paper's figures. Grad-CAM's per-step numbers are noisy: on an untrained VGG its map
is often a "common mode" of the channels (so a re-randomised model can give back a
similar blob, e.g. 0.92 for chelsea after ``features.16``), or all zeros after the ReLU
(Spearman 0 with anything); the assertions therefore use the mean over four photos.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skimage_data
from torch import Tensor, nn
from torchvision import models as tvm

from camlens.metrics import sanity_check

SIZE = 112
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
CASCADE = ["classifier", "features.18", "features.16", "features.13", "features.11",
           "features.8", "features.6", "features.3", "features.0"]


def photo(name: str) -> Tensor:
    """A bundled photo, centre-cropped square, 112 x 112, ImageNet-normalised (3, H, W)."""
    img = torch.tensor(getattr(skimage_data, name)() / 255.0, dtype=torch.float32)
    img = img.permute(2, 0, 1)[None]
    h, w = img.shape[2:]
    s = min(h, w)
    img = img[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    img = F.interpolate(img, size=(SIZE, SIZE), mode="bilinear", antialias=True,
                        align_corners=False)[0]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (img - mean) / std


@pytest.fixture(scope="module")
def vgg_and_photos() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = tvm.vgg11(weights=None)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, 10)
    return model.eval(), torch.stack([photo(n) for n in PHOTOS])


def test_guided_backprop_stays_but_gradcam_changes_under_randomisation(vgg_and_photos):
    model, x = vgg_and_photos
    grad = sanity_check(model, x, "gradcam", layer="features.20", seed=0)
    guided = sanity_check(model, x, "guided-backprop", seed=0)
    assert grad.layers == guided.layers == CASCADE  # top (classifier) first
    g, gb = grad.spearman.mean(1), guided.spearman.mean(1)  # (9,) mean over the photos
    g_ssim, gb_ssim = grad.ssim.mean(1), guided.ssim.mean(1)

    # Guided backprop: nearly unchanged while the top layers are random (measured
    # >= 0.96 for the first five steps, down to features.11) ...
    assert float(gb[:5].min()) > 0.93, gb
    assert float(gb_ssim[:5].min()) > 0.92, gb_ssim
    # ... still clearly similar on every photo down to features.6 (measured >= 0.85) ...
    assert float(guided.spearman[:7].min()) > 0.8, guided.spearman
    # ... and only once the first convolutions are random does it fall (0.79, 0.63).
    assert float(gb[-1]) < float(gb[4]), gb
    assert float(gb[-1]) > 0.5, gb

    # Grad-CAM: dissimilar at once (classifier random: 0.12), and on average never close
    # to the original anywhere in the cascade (mean Spearman <= 0.49, SSIM <= 0.33).
    assert float(g[:2].abs().max()) < 0.25, g
    assert float(g.max()) < 0.6, g
    assert float(g_ssim.max()) < 0.4, g_ssim
    # Guided backprop is more similar than Grad-CAM at every step (measured >= 0.49).
    assert bool((gb - g > 0.4).all()), (gb, g)
    assert bool((gb_ssim - g_ssim > 0.2).all()), (gb_ssim, g_ssim)
