"""Every registered method on real architectures: it works, or it says why it does not apply.

torchvision models with seeded random weights (no downloads): the classifiers of the
issue, Faster R-CNN with a box target, DeepLabV3 with a segmentation target, R3D-18 on
video clips, a ResNet-18 embedding tower with a similarity target and a captioning model
(CNN encoder + GRU decoder) with one map per generated word. The table ``NOT_APPLICABLE``
lists, for each model, the methods that must refuse and the words their error must use;
any other failure, or a refusal that is not listed, fails the test. Vision transformers
are covered in ``test_transformers.py``.

Gradient methods run on small inputs at the usual layer. The perturbation methods (one
forward per channel) run at the model's stem on 32 px inputs (video: 4 x 16 x 16 clips):
what is tested is that they run through the whole architecture and its output, at a
fraction of the cost.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state, randomize_bn
from test_contract import FAST
from torch import nn
from torchvision import models as tvm
from torchvision.models import detection, segmentation, video

import camlens
from camlens._layers import find_auto_layer
from camlens._registry import method_class
from camlens.targets import BoxTarget, SegmentationTarget, SimilarityTarget, TokenTarget

METHODS = camlens.available_methods()
PERTURBATION = {"scorecam", "sscam", "iscam", "ablationcam", "rise"}

NO_RELU = "needs ReLUs"
NO_CAM_HEAD = "cam needs layer"
CLASS_ONLY = "needs class"

NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "resnet50": {},
    "vgg16": {"cam": NO_CAM_HEAD},
    "densenet121": {"cam": NO_CAM_HEAD},
    "mobilenet_v3": {"cam": NO_CAM_HEAD},
    "efficientnet_b0": {"guided-backprop": NO_RELU, "guided-gradcam": NO_RELU},
    "convnext_tiny": {"cam": NO_CAM_HEAD, "guided-backprop": NO_RELU,
                      "guided-gradcam": NO_RELU},
    # torchvision's roi_align has no second derivative, which ShapleyCAM needs
    "faster_rcnn": {"cam": CLASS_ONLY, "finercam": CLASS_ONLY,
                    "shapleycam": "second derivatives"},
    "deeplabv3": {"cam": CLASS_ONLY, "finercam": CLASS_ONLY},
    "r3d_18": {},
    "embedding": {"cam": CLASS_ONLY, "finercam": CLASS_ONLY},
    "captioning": {"cam": CLASS_ONLY, "finercam": CLASS_ONLY},
}


@dataclass
class Case:
    model: nn.Module
    inputs: Tensor  # noqa: F821 (annotation only)
    target: Any = None
    layer: Any = "auto"
    stem: Any = None  # the cheap layer for the perturbation methods
    shape: tuple[int, ...] = ()


class Captioner(nn.Module):
    """CNN encoder + GRU decoder with greedy decoding: (B, steps, vocabulary) logits."""

    def __init__(self, vocabulary: int = 12, steps: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )
        self.init = nn.Linear(32, 48)
        self.embed = nn.Embedding(vocabulary, 16)
        self.attend = nn.Linear(48, 32)
        self.gru = nn.GRUCell(16 + 32, 48)
        self.out = nn.Linear(48, vocabulary)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)  # (B, 32, h, w)
        flat = feats.flatten(2).transpose(1, 2)  # (B, hw, 32)
        h = torch.tanh(self.init(flat.mean(1)))
        token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # <start>
        logits = []
        for _ in range(self.steps):
            weights = torch.softmax((flat * self.attend(h)[:, None]).sum(-1), dim=1)
            context = (weights[..., None] * flat).sum(1)
            h = self.gru(torch.cat([self.embed(token), context], 1), h)
            step = self.out(h)
            logits.append(step)
            token = step.argmax(1)
        return torch.stack(logits, 1)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = build()
    randomize_bn(model)
    return model.eval()


def _image(size: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 3, size, size)


def _case(name: str) -> Case:
    x = _image()
    if name == "resnet50":
        return Case(_seeded(tvm.resnet50), x, stem="conv1")
    if name == "vgg16":
        return Case(_seeded(tvm.vgg16), x, layer="features.29", stem="features.1")
    if name == "densenet121":
        return Case(_seeded(tvm.densenet121), x, stem="features.relu0")
    if name == "mobilenet_v3":
        return Case(_seeded(tvm.mobilenet_v3_large), x, stem="features.0")
    if name == "efficientnet_b0":
        return Case(_seeded(tvm.efficientnet_b0), x, stem="features.0")
    if name == "convnext_tiny":
        return Case(_seeded(tvm.convnext_tiny), x, stem="features.0")
    if name == "faster_rcnn":
        model = _seeded(lambda: detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=64, max_size=64,
            box_score_thresh=0.0, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20))
        with torch.no_grad():
            top = model(x)[0]
        target = BoxTarget(int(top["labels"][0]), top["boxes"][0].tolist())
        return Case(model, x, target, "auto", "backbone.body.relu")
    if name == "deeplabv3":
        model = _seeded(lambda: segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=5))
        with torch.no_grad():
            wins = model(x)["out"].argmax(1)
        target = SegmentationTarget(int(wins.flatten().mode().values))
        return Case(model, x, target, "auto", "backbone.relu")
    if name == "r3d_18":
        torch.manual_seed(2)
        return Case(_seeded(video.r3d_18), torch.rand(1, 3, 8, 32, 32), stem="stem")
    if name == "embedding":
        model = _seeded(tvm.resnet18)
        model.fc = nn.Identity()
        with torch.no_grad():
            reference = model(torch.rand(1, 3, 64, 64))[0]
        return Case(model, x, SimilarityTarget(reference), "layer4", "relu")
    if name == "captioning":
        model = _seeded(Captioner)
        return Case(model, x, TokenTarget([0, 1, 2]), "encoder.4", "encoder.1",
                    shape=(1, 3, 64, 64))
    raise KeyError(name)


@pytest.fixture(scope="module", params=list(NOT_APPLICABLE))
def case(request):
    built = _case(request.param)
    built.name = request.param
    yield built
    del built
    import gc

    gc.collect()


def _perturbation_input(x: torch.Tensor) -> torch.Tensor:
    """Images at 32 x 32 and video clips at 4 x 16 x 16: the perturbation methods' inputs."""
    if x.ndim == 4:
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    if x.ndim == 5:
        return F.interpolate(x, size=(4, 16, 16), mode="trilinear", align_corners=False)
    return x


def _run(case: Case, method: str) -> torch.Tensor:
    x, layer = case.inputs, case.layer
    cls = method_class(method)
    if method in PERTURBATION:
        x = _perturbation_input(x)
        if cls.needs_layer:
            layer = case.stem
    return camlens.explain(case.model, x, method=method, layer=layer, target=case.target,
                           **FAST.get(method, {}))


def test_every_method_works_or_says_why_not(case):
    before = model_state(case.model)
    refused, failures = {}, []
    for method in METHODS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                maps = _run(case, method)
        except (ValueError, TypeError) as err:
            refused[method] = str(err)
            continue
        except Exception as err:  # anything else is a bug
            failures.append(f"{method}: {type(err).__name__}: {err}")
            continue
        x = _perturbation_input(case.inputs) if method in PERTURBATION else case.inputs
        spatial = tuple(x.shape[2:])
        k = (len(case.target.steps),) if isinstance(case.target, TokenTarget) else ()
        expected = (case.inputs.shape[0], *k, *spatial)
        if tuple(maps.shape) != expected or not bool(torch.isfinite(maps).all()):
            failures.append(f"{method}: shape {tuple(maps.shape)} (want {expected}) or NaN")
        elif float(maps.min()) < 0 or float(maps.max()) > 1:
            failures.append(f"{method}: values outside [0, 1]")
    assert not failures, failures
    expected_refusals = NOT_APPLICABLE[case.name]
    assert set(refused) == set(expected_refusals), refused
    for method, words in expected_refusals.items():
        assert words in refused[method], (method, refused[method])
    assert_same_state(before, model_state(case.model))


AUTO = {
    "resnet50": "layer4",
    "densenet121": "features",
    "faster_rcnn": "backbone.body.layer4",  # the backbone, not the per-region RoI features
    "deeplabv3": "backbone.layer4",  # the backbone, not the class-score head
    "r3d_18": "layer4",
    "embedding": "layer4",
    "captioning": "encoder",  # the Sequential, whose output is its last ReLU's
}


def test_auto_picks_the_last_feature_map_of_the_backbone(case):
    if case.name in AUTO:
        assert find_auto_layer(case.model, case.inputs)[0] == AUTO[case.name]
