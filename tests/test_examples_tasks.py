"""The task examples (detection, segmentation, embeddings, video) and their targets on real
torchvision architectures with seeded random weights (no downloads)."""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.targets import BoxTarget, SegmentationTarget, SimilarityTarget

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))  # the examples share examples/_lite.py


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_unit(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0


# ---------------------------------------------------------------- the examples themselves


def test_segmentation_example(tmp_path: Path) -> None:
    results = load_example("segmentation").main(tmp_path)
    assert (tmp_path / "task_segmentation.png").stat().st_size > 10_000
    assert 281 <= results["chelsea"]["class"] <= 285  # a domestic cat
    assert results["coffee"]["class"] == 967  # espresso
    for row in results.values():
        assert all(in_unit(v) for k, v in row.items() if k != "class")
        # the maps concentrate on the class's region more than its area alone would
        assert row["energy_in_region_hirescam"] > row["region_share"]


def test_detection_example(tmp_path: Path) -> None:
    results = load_example("detection").main(tmp_path)
    assert (tmp_path / "task_detection.png").stat().st_size > 10_000
    cat, espresso = results["cat"], results["espresso"]
    assert 281 <= cat["label"] <= 285 and espresso["label"] == 967
    for row in results.values():
        assert 0 < row["score"] <= 1 and in_unit(row["box_share"])
        assert row["energy_in_box_gradcam"] > row["box_share"]
        assert row["energy_in_box_hirescam"] > 0.8
    assert cat["box"][2] <= 300  # the cat is on the left of the scene


def test_detection_example_faster_rcnn_weights(tmp_path: Path, faster_rcnn: nn.Module
                                                ) -> None:
    weights = tmp_path / "frcnn.pth"  # seeded random weights, read back with weights_only
    torch.save(faster_rcnn.state_dict(), weights)
    results = load_example("detection").main(
        tmp_path, weights, min_size=160, max_size=160, box_score_thresh=0.0,
        rpn_post_nms_top_n_test=100, box_detections_per_img=20,
    )
    assert (tmp_path / "task_detection_fasterrcnn.png").exists()
    assert isinstance(results["label"], int) and len(results["box"]) == 4
    assert all(in_unit(v) for k, v in results.items() if k.startswith("energy"))


def test_embedding_example(tmp_path: Path) -> None:
    results = load_example("embedding").main(tmp_path)
    assert (tmp_path / "task_embedding.png").stat().st_size > 10_000
    face, rocket = results["her face"], results["rocket photo"]
    assert 0 < rocket["cosine"] < face["cosine"] < 1
    # face box: 9 % of the image, shuttle box: 13 %
    assert face["energy_in_face_gradcam"] > 0.3 > face["energy_in_shuttle_gradcam"]
    assert rocket["energy_in_shuttle_gradcam"] > 0.5 > rocket["energy_in_face_gradcam"]


def test_video_example(tmp_path: Path) -> None:
    results = load_example("video").main(tmp_path)
    assert (tmp_path / "task_video.png").stat().st_size > 10_000
    assert results["maps_shape"] == (8, 192, 192)
    assert 281 <= results["class"] <= 285
    assert results["map_moved_px"] > 10 and results["correlation"] > 0.9


# ------------------------------------------------------ targets on torchvision detectors


@pytest.fixture(scope="module")
def faster_rcnn() -> nn.Module:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    return fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=160, max_size=160,
        box_score_thresh=0.0, rpn_post_nms_top_n_test=100, box_detections_per_img=20,
    ).eval()


@pytest.fixture(scope="module")
def street() -> torch.Tensor:
    return torch.rand(1, 3, 160, 192, generator=torch.Generator().manual_seed(1))


def test_box_target_faster_rcnn_top_detection(faster_rcnn: nn.Module,
                                              street: torch.Tensor) -> None:
    with torch.no_grad():
        det = faster_rcnn(street)[0]
    assert len(det["boxes"]) > 0
    target = BoxTarget(int(det["labels"][0]), det["boxes"][0])
    maps = camlens.explain(faster_rcnn, street, layer="backbone.body.layer4", target=target)
    assert maps.shape == (1, 160, 192)
    assert bool(torch.isfinite(maps).all()) and float(maps.max()) > 0


def test_box_target_without_match_gives_zeros_and_warns(faster_rcnn: nn.Module,
                                                        street: torch.Tensor) -> None:
    target = BoxTarget(1, [1000.0, 1000.0, 1010.0, 1010.0])  # far outside the image
    with pytest.warns(UserWarning, match="no detection"):
        maps = camlens.explain(faster_rcnn, street, layer="backbone.body.layer4",
                               target=target)
    assert maps.shape == (1, 160, 192)
    assert bool(torch.isfinite(maps).all()) and float(maps.abs().max()) == 0.0


def test_box_target_yolo_picks_highest_iou_detection_of_the_label() -> None:
    # (cx, cy, w, h, objectness, 3 class scores)
    rows = [
        [50, 50, 40, 40, 0.9, 0.1, 0.8, 0.1],   # label 1, IoU 1 with the box, score .72
        [52, 50, 40, 40, 0.95, 0.1, 0.7, 0.2],  # label 1, IoU ~0.9, higher score .665
        [50, 50, 40, 40, 0.99, 0.9, 0.05, 0.05],  # label 0: ignored
        [150, 150, 40, 40, 0.99, 0.0, 1.0, 0.0],  # label 1, far away
    ]
    pred = torch.tensor([rows, [rows[1], rows[3], rows[2], rows[0]]], requires_grad=True)
    target = BoxTarget(1, [30, 30, 70, 70])
    scores = target(pred)
    expected = torch.stack([pred[0, 0, 4] * pred[0, 0, 6], pred[1, 3, 4] * pred[1, 3, 6]])
    assert torch.allclose(scores, expected)
    assert scores.tolist() == pytest.approx([0.9 * 0.8, 0.9 * 0.8])
    (grad,) = torch.autograd.grad(scores.sum(), pred)
    assert grad[0, 0, 4] == pytest.approx(0.8) and grad[0, 0, 6] == pytest.approx(0.9)
    assert int((grad != 0).sum()) == 4  # only objectness and class score of the picked rows
    # another label's box: no match, score 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert BoxTarget(2, [30, 30, 70, 70])(pred).tolist() == [0.0, 0.0]


# --------------------------------------------------- targets on torchvision segmenters


@pytest.fixture(scope="module")
def deeplab() -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5,
                              aux_loss=False).eval()


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def test_segmentation_target_deeplab(deeplab: nn.Module, scene: torch.Tensor) -> None:
    with torch.no_grad():
        winners = deeplab(scene)["out"].argmax(1)
    present = int(winners.flatten().mode().values)
    maps = camlens.explain(deeplab, scene, layer="backbone.layer4",
                           target=SegmentationTarget(present))
    assert maps.shape == (1, 64, 64) and bool(torch.isfinite(maps).all())
    assert float(maps.max()) > 0
    absent = [c for c in range(5) if not bool((winners == c).any())]
    if absent:
        with pytest.warns(UserWarning, match="covers no pixel"):
            zero = camlens.explain(deeplab, scene, layer="backbone.layer4",
                                   target=SegmentationTarget(absent[0]))
        assert float(zero.abs().max()) == 0.0


def test_segmentation_target_absent_class_hand_made() -> None:
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 1.0  # class 0 wins everywhere, class 2 nowhere
    target = SegmentationTarget(2)
    with pytest.warns(UserWarning, match="covers no pixel"):
        bound = target.bind({"out": logits})
    assert bound.matched is not None and bound.matched.tolist() == [False]
    assert bound({"out": logits}).tolist() == [0.0]


def test_segmentation_target_mask_of_another_size(deeplab: nn.Module,
                                                  scene: torch.Tensor) -> None:
    mask = torch.zeros(8, 8)
    mask[:4, :4] = 1  # top-left quarter, given at 8 x 8 for a 64 x 64 output
    target = SegmentationTarget(1, mask=mask)
    with torch.no_grad():
        out = deeplab(scene)
        score = target(out)
    expected = out["out"][:, 1, :32, :32].sum()
    assert torch.allclose(score, expected.view(1), rtol=1e-5)
    maps = camlens.explain(deeplab, scene, layer="backbone.layer4", target=target)
    assert maps.shape == (1, 64, 64) and bool(torch.isfinite(maps).all())


# ----------------------------------------------------------------------- embeddings


class _Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.proj = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean((2, 3)))


def test_similarity_target_is_cosine_similarity() -> None:
    torch.manual_seed(0)
    emb = torch.randn(3, 8)
    ref = torch.randn(8)
    by_hand = (emb * ref).sum(1) / (emb.norm(dim=1) * ref.norm())
    assert torch.allclose(SimilarityTarget(ref)(emb), by_hand, atol=1e-6)
    refs = torch.randn(3, 8)
    by_hand = (emb * refs).sum(1) / (emb.norm(dim=1) * refs.norm(dim=1))
    assert torch.allclose(SimilarityTarget(refs)(emb), by_hand, atol=1e-6)


def test_similarity_map_depends_on_the_reference() -> None:
    torch.manual_seed(0)
    tower = _Tower().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        own = tower(x)[0]
    other = own + torch.randn(8)
    with pytest.warns(UserWarning, match="already match the reference exactly"):
        own_map = camlens.explain(tower, x, layer="features", target=SimilarityTarget(own))
    other_map = camlens.explain(tower, x, layer="features", target=SimilarityTarget(other))
    assert bool(torch.isfinite(own_map).all()) and bool(torch.isfinite(other_map).all())
    assert not torch.allclose(own_map, other_map, atol=1e-3)
    # cos(e, e) = 1 is a maximum: its gradient is 0, so the map of one's own embedding is
    # empty; compare an image with *another* image's embedding
    assert float(own_map.max()) < 1e-3 < float(other_map.max())


# --------------------------------------------------------------------- video / volumes


def test_r3d_maps_have_one_map_per_frame() -> None:
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    model = r3d_18(weights=None).eval()
    clip = torch.rand(2, 3, 8, 64, 64)
    maps = camlens.explain(model, clip, layer="layer4")
    assert maps.shape == (2, 8, 64, 64) and bool(torch.isfinite(maps).all())
    maps3 = camlens.explain(model, clip, layer="layer3", target=3)
    assert maps3.shape == (2, 8, 64, 64)


def test_tsn_wrapper_layer_is_5d() -> None:
    video = load_example("video")
    torch.manual_seed(0)
    tiny = nn.Module()
    tiny.extract_features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1))
    tiny._fc = nn.Linear(4, 3)
    model = video.TemporalSegmentNetwork(tiny).eval()
    clip = torch.rand(1, 3, 4, 32, 32)
    assert model.features(clip).shape == (1, 4, 4, 8, 8)
    maps = camlens.explain(model, clip, layer="features")
    assert maps.shape == (1, 4, 32, 32)


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("box", [[10, 10, 10, 20], [20, 10, 10, 20], [10, 20, 20, 5]])
def test_box_target_rejects_empty_boxes(box: list[int]) -> None:
    with pytest.raises(ValueError, match="x2 > x1"):
        BoxTarget(1, box)


def test_segmentation_target_class_out_of_range_names_the_classes() -> None:
    target = SegmentationTarget(7)
    with pytest.raises(ValueError, match="5 classes"):
        target({"out": torch.zeros(1, 5, 4, 4)})


def test_segmentation_target_out_of_range_through_explain(deeplab: nn.Module,
                                                          scene: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="5 classes"):
        camlens.explain(deeplab, scene, layer="backbone.layer4", target=SegmentationTarget(5))


def test_fcn_head_matches_the_classifier() -> None:
    """The FCN segmenter's logits, averaged over positions, are the classifier's logits."""
    seg = load_example("segmentation")
    torch.manual_seed(0)
    tiny = nn.Module()
    tiny.extract_features = nn.Conv2d(3, 6, 4, stride=4)
    tiny._fc = nn.Linear(6, 3)
    model = seg.FCNSegmenter(tiny).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        features = tiny.extract_features(x)
        logits = F.conv2d(features, tiny._fc.weight[:, :, None, None], tiny._fc.bias)
        assert torch.allclose(logits.mean((2, 3)), tiny._fc(features.mean((2, 3))), atol=1e-6)
        assert model(x)["out"].shape == (2, 3, 16, 16)
