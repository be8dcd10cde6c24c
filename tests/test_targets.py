"""Targets beyond classification, checked against values worked out by hand, and the
engine's handling of targets that match nothing (all-zero maps and a warning, never NaN)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens.targets import (
    BoxTarget,
    SegmentationTarget,
    SimilarityTarget,
    TokenTarget,
    bind_target,
)


class HFLike(dict):
    """A stand-in for a Hugging Face ModelOutput: a dict with attributes."""

    def __getattr__(self, key):
        return self[key]


class TinySegmenter(nn.Module):
    """Two convs then per-pixel scores for 3 classes at the input's resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        out = F.interpolate(self.head(self.body(x)), size=x.shape[2:], mode="bilinear")
        return {"out": out, "aux": out.detach()}


@pytest.fixture
def segmenter():
    torch.manual_seed(0)
    return TinySegmenter().eval()


def test_segmentation_target_by_hand():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    wins = logits.detach().argmax(1) == 1
    expected = (logits.detach()[:, 1] * wins).flatten(1).sum(1)
    for output in (logits, {"out": logits}, HFLike(logits=logits), (logits, None)):
        assert torch.allclose(SegmentationTarget(1)(output), expected)
    mask = torch.zeros(4, 4)
    mask[1:3, 0:2] = 1
    got = SegmentationTarget(2, mask=mask)(logits)
    assert torch.allclose(got, logits.detach()[:, 2, 1:3, 0:2].sum((1, 2)))
    big = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)  # (8, 8): resized (nearest)
    assert torch.allclose(SegmentationTarget(2, mask=big)(logits), got)
    per_image = torch.stack([mask, 1 - mask])
    got = SegmentationTarget(0, mask=per_image)(logits)
    assert torch.allclose(got[1], (logits.detach()[1, 0] * (1 - mask)).sum())
    got.sum().backward()
    assert torch.equal(logits.grad[1, 0], 1 - mask)


def test_segmentation_bind_keeps_the_region_and_warns_for_empty_images():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 5.0  # class 1 wins everywhere in image 0, nowhere in image 1
    with pytest.warns(UserWarning, match=r"class 1 covers no pixel.*image\(s\) \[1\]"):
        bound = bind_target(SegmentationTarget(1), {"out": logits})
    assert bound.matched.tolist() == [True, False]
    other = torch.zeros(2, 3, 2, 2)  # a perturbed output: the region stays the clean one
    other[:, 1, 0, 0] = 1.0
    assert bound(other).tolist() == [1.0, 0.0]
    assert bound.for_images(torch.tensor([0, 0, 1]))(other.repeat(2, 1, 1, 1)[:3]).tolist() == [
        1.0, 1.0, 0.0]


def test_segmentation_target_errors():
    with pytest.raises(ValueError, match="out of range for a segmentation output with 3"):
        SegmentationTarget(3)(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="for \\(B, classes\\) use ClassTarget"):
        SegmentationTarget(0)(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="class_index must be an int"):
        SegmentationTarget(-1)
    with pytest.raises(ValueError, match="does not fit"):
        SegmentationTarget(0, mask=torch.ones(3, 2, 2))(torch.zeros(2, 3, 2, 2))


def _detections(scores, boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float), "labels": torch.tensor(labels),
            "scores": scores}


def test_box_target_picks_the_best_overlap_of_the_label():
    s0 = torch.tensor([0.9, 0.8, 0.7], requires_grad=True)
    s1 = torch.tensor([0.6], requires_grad=True)
    output = [
        # label 3 at [0, 0, 10, 10] (IoU 1 with the box but wrong label), label 5 at IoU
        # 0.81 and label 5 at IoU 0.64: the first label-5 detection wins
        _detections(s0, [[0, 0, 10, 10], [0, 0, 9, 9], [0, 0, 8, 8]], [3, 5, 5]),
        _detections(s1, [[50, 50, 60, 60]], [5]),  # no overlap
    ]
    target = BoxTarget(5, [0, 0, 10, 10])
    got = target(output)
    assert torch.allclose(got, torch.tensor([0.8, 0.0]))
    got.sum().backward()
    assert s0.grad.tolist() == [0.0, 1.0, 0.0] and s1.grad.tolist() == [0.0]
    assert torch.allclose(BoxTarget(5, [0, 0, 10, 10], iou_threshold=0.7)(output),
                          torch.tensor([0.8, 0.0]))
    assert float(BoxTarget(5, [0, 0, 10, 10], iou_threshold=0.9)(output)[0].detach()) == 0.0
    with pytest.warns(UserWarning, match=r"no detection of label 5.*\[1\]"):
        bound = bind_target(target, output)
    assert bound.matched.tolist() == [True, False]
    per_image = BoxTarget(5, [[0, 0, 10, 10], [50, 50, 60, 60]])
    assert torch.allclose(per_image(output), torch.tensor([0.8, 0.6]))


def test_box_target_on_yolo_predictions():
    # (cx, cy, w, h, objectness, 2 class scores); the box is (0, 0, 10, 10)
    pred = torch.tensor([[
        [5.0, 5.0, 10.0, 10.0, 0.5, 0.9, 0.1],  # class 0, IoU 1
        [5.0, 5.0, 8.0, 8.0, 0.8, 0.2, 0.7],    # class 1, IoU 0.64
        [4.5, 4.5, 9.0, 9.0, 0.9, 0.3, 0.6],    # class 1, IoU 0.81: chosen for label 1
    ]], requires_grad=True)
    got = BoxTarget(1, [0, 0, 10, 10])((pred, "features"))
    assert torch.allclose(got, torch.tensor([0.9 * 0.6]))
    assert torch.allclose(BoxTarget(0, [0, 0, 10, 10])(pred), torch.tensor([0.5 * 0.9]))
    assert float(BoxTarget(1, [40, 40, 50, 50])(pred)[0].detach()) == 0.0
    with pytest.raises(ValueError, match="out of range for YOLO-style predictions with 2"):
        BoxTarget(2, [0, 0, 10, 10])(pred)


def test_box_target_errors():
    with pytest.raises(ValueError, match="x2 > x1"):
        BoxTarget(1, [10, 0, 5, 10])
    with pytest.raises(ValueError, match=r"\(x1, y1, x2, y2\) or \(B, 4\)"):
        BoxTarget(1, [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        BoxTarget(1, [0, 0, float("nan"), 3])
    with pytest.raises(ValueError, match="list of dicts"):
        BoxTarget(1, [0, 0, 5, 5])(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="2 boxes for a batch of 1"):
        BoxTarget(1, [[0, 0, 5, 5], [0, 0, 5, 5]])(
            [_detections(torch.ones(1), [[0, 0, 5, 5]], [1])])


def test_similarity_target_by_hand():
    torch.manual_seed(2)
    emb = torch.randn(3, 8)
    ref = torch.randn(8)
    expected = (emb @ ref) / (emb.norm(dim=1) * ref.norm())
    for output in (emb, emb.view(3, 2, 4), HFLike(image_embeds=emb), {"pooler_output": emb}):
        assert torch.allclose(SimilarityTarget(ref)(output), expected, atol=1e-6)
    refs = torch.randn(3, 8)
    got = SimilarityTarget(refs)(emb)
    assert torch.allclose(got, (emb * refs).sum(1) / (emb.norm(dim=1) * refs.norm(dim=1)))
    picked = SimilarityTarget(refs).for_images(torch.tensor([2, 2]))
    assert torch.allclose(picked(emb[[2, 2]]), got[[2, 2]])
    with pytest.raises(ValueError, match="has 8 values but the model's embedding has 5"):
        SimilarityTarget(ref)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="all zeros"):
        SimilarityTarget(torch.zeros(4))


def test_token_target_by_hand():
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 7)
    assert torch.equal(TokenTarget(1, 4)(logits), logits[:, 1, 4])
    assert torch.equal(TokenTarget(-1, 2)(HFLike(logits=logits)), logits[:, 4, 2])
    both = TokenTarget([0, 3], [1, 6])(logits)
    assert both.shape == (2, 2) and torch.equal(both, torch.stack([logits[:, 0, 1],
                                                                   logits[:, 3, 6]], 1))
    best = TokenTarget([0, 2])(logits)
    assert torch.equal(best, logits[:, [0, 2]].amax(-1))
    bound = bind_target(TokenTarget([0, 2]), logits)  # tokens fixed from the clean output
    assert torch.equal(bound(torch.zeros(2, 5, 7) + logits), best)
    assert bound.for_images(torch.tensor([1]))(logits[[1]]).shape == (1, 2)
    with pytest.raises(ValueError, match="step 5 is out of range for 5"):
        TokenTarget(5)(logits)
    with pytest.raises(ValueError, match="token 7 is out of range for a vocabulary of 7"):
        TokenTarget(0, 7)(logits)
    with pytest.raises(ValueError, match=r"\(B, steps, vocabulary\)"):
        TokenTarget(0)(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="one int per step"):
        TokenTarget([0, 1], [3])


@pytest.mark.parametrize("method", camlens.available_methods())
def test_a_target_that_matches_nothing_gives_zero_maps(method, segmenter):
    torch.manual_seed(4)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        wins = segmenter(x)["out"].argmax(1)
    absent = next(c for c in range(3) if not bool((wins == c).any()))
    options = {"n_masks": 20, "grid": 4} if method == "rise" else {}
    if method in ("sscam", "iscam", "smoothgradcam++"):
        options = {"num_samples": 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            maps = camlens.explain(segmenter, x, method=method, layer="body.2",
                                   target=SegmentationTarget(absent), **options)
        except ValueError as err:  # methods that need a class target say so
            assert "class" in str(err) or "linear" in str(err).lower(), err
            return
    assert any("covers no pixel" in str(w.message) for w in caught)
    assert maps.shape == (2, 16, 16)
    assert torch.equal(maps, torch.zeros_like(maps))


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
def test_per_image_targets_stay_with_their_image(method, segmenter):
    """A batch explains each image with its own region, also for the perturbation methods
    (their perturbed copies are scored against the region of the image they came from)."""
    torch.manual_seed(5)
    x = torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 16, 16)
    mask[0, :8, :8] = 1
    mask[1, 8:, 8:] = 1
    target = SegmentationTarget(1, mask=mask)
    both = camlens.explain(segmenter, x, method=method, layer="body.2", target=target)
    for i in range(2):
        one = camlens.explain(segmenter, x[i:i + 1], method=method, layer="body.2",
                              target=SegmentationTarget(1, mask=mask[i]))
        assert torch.allclose(both[i], one[0], atol=1e-5)


def test_segmentation_gradcam_equals_the_hand_computation(segmenter):
    torch.manual_seed(6)
    x = torch.rand(1, 3, 16, 16)
    feats = segmenter.body(x).detach().requires_grad_(True)
    out = F.interpolate(segmenter.head(feats), size=(16, 16), mode="bilinear")
    c = int(out.detach().argmax(1).flatten().mode().values)
    region = out.detach().argmax(1) == c
    (out[:, c] * region).sum().backward()
    weights = feats.grad.mean((2, 3), keepdim=True)
    expected = F.interpolate(torch.relu((weights * feats).sum(1, keepdim=True)),
                             size=(16, 16), mode="bilinear")[:, 0].detach()
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    got = camlens.explain(segmenter, x, method="gradcam", layer="body.3",
                          target=SegmentationTarget(c))
    assert torch.allclose(got, expected, atol=1e-5)


def test_aug_smooth_refuses_pixel_tied_targets(segmenter):
    x = torch.rand(1, 3, 16, 16)
    explainer = camlens.Explainer(segmenter, "gradcam", layer="body.2", aug_smooth=True)
    with pytest.raises(ValueError, match="use noise_smooth"):
        explainer(x, target=SegmentationTarget(0, mask=torch.ones(16, 16)))
    with pytest.raises(ValueError, match="use noise_smooth"):
        explainer(x, target=BoxTarget(1, [0, 0, 8, 8]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default region follows the flipped image
        maps = explainer(x, target=SegmentationTarget(0))
    assert maps.shape == (1, 16, 16) and bool(torch.isfinite(maps).all())


def test_video_gradcam_equals_the_hand_computation():
    """Grad-CAM on a Conv3d layer: weights = gradients averaged over (T, H, W), ReLU of the
    weighted sum, upsampled trilinearly to the clip, one map per frame."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv3d(3, 6, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    clip = torch.rand(2, 3, 4, 12, 12)
    feats = model[1](model[0](clip)).detach().requires_grad_(True)
    logits = model[4](model[3](model[2](feats)))
    top = logits.argmax(1)
    logits.gather(1, top[:, None]).sum().backward()
    weights = feats.grad.mean((2, 3, 4), keepdim=True)
    cam = torch.relu((weights * feats).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(4, 12, 12), mode="trilinear")[:, 0].detach()
    lo = expected.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = expected.flatten(1).amax(1).view(-1, 1, 1, 1)
    got = camlens.explain(model, clip, method="gradcam", layer="1")
    assert got.shape == (2, 4, 12, 12)
    assert torch.allclose(got, (expected - lo) / (hi - lo), atol=1e-5)


def test_box_target_on_detr_predictions():
    """DETR-style outputs: class probabilities from a softmax over classes + "no object",
    boxes (cx, cy, w, h) relative to the image; the pixel box is scaled by image_size."""
    logits = torch.tensor([[[4.0, 0.0, 0.0],    # query 0: class 0
                            [0.0, 3.0, 0.0],    # query 1: class 1, box IoU 0.64
                            [0.0, 2.0, 0.0]]],  # query 2: class 1, box IoU 1: chosen
                          requires_grad=True)
    pred_boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5],
                                [0.20, 0.20, 0.4, 0.4],
                                [0.25, 0.25, 0.5, 0.5]]])
    output = HFLike(logits=logits, pred_boxes=pred_boxes)
    probs = torch.softmax(logits.detach(), -1)
    target = BoxTarget(1, [0, 0, 50, 100], image_size=(200, 100))  # (0, 0, .5, .5) relative
    got = target(output)
    assert torch.allclose(got, probs[0, 2, 1].view(1))
    got.sum().backward()
    assert logits.grad[0, :2].abs().sum() == 0 and logits.grad[0, 2].abs().sum() > 0
    relative = BoxTarget(0, [0.0, 0.0, 0.5, 0.5])  # already relative: no image_size needed
    assert torch.allclose(relative({"logits": logits, "pred_boxes": pred_boxes}),
                          probs[0, 0, 0].view(1))
    with pytest.raises(ValueError, match="pass image_size"):
        BoxTarget(1, [0, 0, 50, 100])(output)
    with pytest.raises(ValueError, match="out of range for a DETR-style output with 2"):
        BoxTarget(2, [0, 0, 0.5, 0.5])(output)
    with pytest.warns(UserWarning, match="no detection of label 1"):
        bound = bind_target(BoxTarget(1, [0.6, 0.6, 0.9, 0.9]), output)
    assert bound.matched.tolist() == [False]


class TinyDETR(nn.Module):
    """Queries attend over a conv feature map; each gives class logits (+ "no object") and
    a relative box, returned as a dict like Hugging Face's DetrObjectDetectionOutput."""

    def __init__(self, queries: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.queries = nn.Parameter(torch.randn(queries, 8))
        self.cls = nn.Linear(8, classes + 1)
        self.box = nn.Linear(8, 4)

    def forward(self, x):
        feats = self.backbone(x).flatten(2).transpose(1, 2)  # (B, HW, 8)
        attn = torch.softmax(feats @ self.queries.t(), dim=1)  # (B, HW, Q)
        q = attn.transpose(1, 2) @ feats  # (B, Q, 8)
        return {"logits": self.cls(q), "pred_boxes": torch.sigmoid(self.box(q))}


def test_detr_style_model_end_to_end():
    torch.manual_seed(8)
    model = TinyDETR().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
    label = int(out["logits"][0, 0, :-1].argmax())
    cx, cy, w, h = out["pred_boxes"][0, 0].tolist()
    box = [(cx - w / 2) * 16, (cy - h / 2) * 16, (cx + w / 2) * 16, (cy + h / 2) * 16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image 1 may have no match: its map is all zero
        maps = camlens.explain(model, x, method="gradcam", layer="backbone",
                               target=BoxTarget(label, box, image_size=(16, 16)))
    assert maps.shape == (2, 16, 16) and bool(torch.isfinite(maps).all())
    assert float(maps[0].max()) == 1.0
