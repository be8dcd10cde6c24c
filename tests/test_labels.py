"""Weak labels: VOC masks (reading, writing, the palette), pseudo-label masks, weak boxes,
mIoU and MaxBoxAccV2 computed by hand, per-box classes in annotations, and ``camlens
labels`` end to end (in-process and in a subprocess) on a model whose maps are known."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import metrics
from camlens._annotations import Objects, load_annotations, load_classes, load_masks
from camlens.labels import (
    ClassSet,
    coco_json,
    make_labels,
    pseudo_masks,
    save_voc_png,
    voc_palette,
    weak_boxes,
)
from camlens.models import preprocessing


# ---------------------------------------------------------------- VOC masks on disk
def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]  # aeroplane
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # ignore (VOC's object borders)
    assert len({tuple(c) for c in pal}) == 256


def test_save_voc_png_round_trip_and_load_masks(tmp_path):
    mask = np.array([[0, 1, 2], [255, 20, 0]], np.uint8)
    path = save_voc_png(mask, tmp_path / "masks" / "cat.png")
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        assert np.array_equal(np.array(image), mask)
    Image.fromarray(np.array([[0, 3], [255, 3]], np.uint8), mode="L").save(
        tmp_path / "masks" / "dog.png")
    (tmp_path / "masks" / "notes.txt").write_text("not a mask")
    (tmp_path / "masks" / "sub").mkdir()  # sub-folders are not read
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "masks" / "sub" / "x.png")
    found = load_masks(tmp_path / "masks")
    assert sorted(found) == ["cat", "dog"]  # keyed by stem: cat.png is the mask of cat.jpg
    assert np.array_equal(found["cat"], mask) and found["cat"].dtype == np.uint8
    assert found["dog"].tolist() == [[0, 3], [255, 3]]
    assert not list((tmp_path / "masks").glob(".*"))  # no temporary file left


def test_load_masks_16_bit_and_one_bit(tmp_path):
    Image.fromarray(np.array([[0, 7], [255, 1]], np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[True, False]])).convert("1").save(tmp_path / "b.png")
    found = load_masks(tmp_path)
    assert found["a"].tolist() == [[0, 7], [255, 1]] and found["a"].dtype == np.uint8
    assert found["b"].tolist() == [[1, 0]]
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"0\.\.300"):
        load_masks(tmp_path)


def test_load_masks_refuses_colour_masks_and_bad_folders(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="colour mask .mode RGB.*single-channel.*'P'"):
        load_masks(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_masks(tmp_path / "missing")
    with pytest.raises(ValueError, match="is a file"):
        load_masks(tmp_path / "rgb.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .png masks"):
        load_masks(empty)
    (empty / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not an image"):
        load_masks(empty)


def test_save_voc_png_refuses_what_is_not_a_label_mask(tmp_path):
    with pytest.raises(TypeError, match="integer class values"):
        save_voc_png(np.zeros((2, 2)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="do not fit"):
        save_voc_png(np.array([[0, 256]]), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        save_voc_png(np.zeros((1, 2, 2), np.uint8), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


# ---------------------------------------------------------------- pseudo masks and boxes
# class 0: ReLU(M0) / 4, class 1: M1 / 3 (by hand)
M0 = [[0.0, 2.0, 4.0], [1.0, 0.0, -1.0]]  # -> [[0, .5, 1], [.25, 0, 0]]
M1 = [[3.0, 0.0, 0.0], [3.0, 1.5, 0.0]]  # -> [[1, 0, 0], [1, .5, 0]]
MAPS = torch.tensor([[M0, M1]], dtype=torch.float64)  # (1, 2, 2, 3)


def test_pseudo_masks_by_hand():
    both = pseudo_masks(MAPS, [[0, 1]], bg_threshold=0.15)
    assert both.dtype == np.uint8 and both.tolist() == [[[2, 1, 1], [2, 2, 0]]]
    only0 = pseudo_masks(MAPS, [[0]], bg_threshold=0.15)
    assert only0.tolist() == [[[0, 1, 1], [1, 0, 0]]]  # class 1 absent: its map is ignored
    assert pseudo_masks(MAPS, [[0]], bg_threshold=0.3).tolist() == [[[0, 1, 1], [0, 0, 0]]]
    # the background wins ties: a score must be above the threshold
    assert pseudo_masks(MAPS, [[0]], bg_threshold=0.25).tolist() == [[[0, 1, 1], [0, 0, 0]]]
    # (B, K) bool works as well as lists, numpy maps as well as tensors
    same = pseudo_masks(MAPS.numpy(), torch.tensor([[True, True]]), 0.15)
    assert np.array_equal(same, both)
    assert pseudo_masks(MAPS, [[]], 0.15).tolist() == [[[0, 0, 0], [0, 0, 0]]]


def test_pseudo_masks_ignore_band_by_hand():
    # best scores [[1, .5, 1], [1, .5, 0]]: > .6 class, (.2, .6] ignore, <= .2 background
    band = pseudo_masks(MAPS, [[0, 1]], ignore_band=(0.2, 0.6))
    assert band.tolist() == [[[2, 255, 1], [2, 255, 0]]]
    # low = high is the single threshold
    assert np.array_equal(pseudo_masks(MAPS, [[0, 1]], ignore_band=(0.5, 0.5)),
                          pseudo_masks(MAPS, [[0, 1]], bg_threshold=0.5))


def test_pseudo_masks_errors():
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        pseudo_masks(MAPS[0], [[0]])
    with pytest.raises(ValueError, match="position 0..1"):
        pseudo_masks(MAPS, [[2]])
    with pytest.raises(ValueError, match="each of the 1 images"):
        pseudo_masks(MAPS, [[0], [1]])
    with pytest.raises(ValueError, match="0.15 is usual"):
        pseudo_masks(MAPS, [[0]], bg_threshold=1.5)
    with pytest.raises(ValueError, match="low <= high"):
        pseudo_masks(MAPS, [[0]], ignore_band=(0.6, 0.2))
    with pytest.raises(ValueError, match="at most 254"):
        pseudo_masks(torch.zeros(1, 255, 2, 2), [[0]])
    with pytest.raises(ValueError, match="NaN"):
        pseudo_masks(torch.full((1, 1, 2, 2), float("nan")), [[0]])


def test_weak_boxes_one_per_component_by_hand():
    m = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    m[0, 0, 0:2, 0:2] = 1.0  # component A ...
    m[0, 0, 2, 2] = 0.7  # ... joined diagonally (8-connected): box (0, 0, 3, 3)
    m[0, 0, 4, 4:6] = 0.6  # component B: box (4, 4, 6, 5), score 0.6
    m[0, 0, 3, 0] = 0.4  # below 0.5 of the maximum
    m[0, 1, 5, 0] = 2.0  # class 1: normalised to 1, a one-pixel box
    got = weak_boxes(m, [[0, 1]], threshold=0.5)
    assert got == [[(0, (0, 0, 3, 3), 1.0), (0, (4, 4, 6, 5), 0.6), (1, (0, 5, 1, 6), 1.0)]]
    assert weak_boxes(m, [[1]], threshold=0.5) == [[(1, (0, 5, 1, 6), 1.0)]]
    assert weak_boxes(torch.zeros(1, 1, 3, 3), [[0]]) == [[]]  # an all-zero map: no box
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        weak_boxes(m, [[0]], threshold=2)


def test_coco_json_of_weak_boxes():
    coco = coco_json([{"file_name": "a.png", "width": 6, "height": 6}],
                     [[(0, (0, 0, 3, 3), 1.0), (1, (4, 4, 6, 5), 0.6)]], ["cat", "dog"])
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "width": 6, "height": 6}]
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    first, second = coco["annotations"]
    assert first["bbox"] == [0, 0, 3, 3] and first["category_id"] == 1 and first["area"] == 9
    assert second["bbox"] == [4, 4, 2, 1] and second["score"] == 0.6
    assert second["image_id"] == 1 and second["iscrowd"] == 0 and second["id"] == 2


# ---------------------------------------------------------------- mIoU
TRUE = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 0, 0]], np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 255], [2, 0, 0, 2], [2, 2, 0, 0]], np.uint8)


def test_miou_by_hand_with_ignore():
    # C[t, p] over the 14 scored pixels (true 255 left out); last column: predicted ignore
    #   t=0: p0 5, p1 1        IoU_0 = 5 / (6 + 6 - 5) = 5/7
    #   t=1: p1 3, ignore 1    IoU_1 = 3 / (4 + 4 - 3) = 3/5 (the ignored pixel is a miss)
    #   t=2: p0 1, p2 3        IoU_2 = 3 / (4 + 3 - 3) = 3/4
    got = metrics.miou(PRED, TRUE, classes=3)
    assert got.confusion.tolist() == [[5, 1, 0, 0], [0, 3, 0, 1], [1, 0, 3, 0]]
    assert got.iou.tolist() == pytest.approx([500 / 7, 60, 75], abs=1e-12)
    assert got.miou == pytest.approx(100 * (5 / 7 + 3 / 5 + 3 / 4) / 3, abs=1e-12)
    assert got.labelled == pytest.approx(100 * 13 / 14, abs=1e-12)
    skip = metrics.miou(PRED, TRUE, classes=3, ignored="skip")  # IoU_1 = 3 / (3 + 4 - 3)
    assert skip.miou == pytest.approx(100 * (5 / 7 + 3 / 4 + 3 / 4) / 3, abs=1e-12)


def test_miou_sums_one_confusion_over_all_images():
    # two images of different sizes: the dataset's mIoU is not the mean of per-image mIoUs
    a_true, a_pred = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]])
    b_true, b_pred = np.array([[1], [0]]), np.array([[0], [0]])
    got = metrics.miou([a_pred, b_pred], [a_true, b_true], classes=2)
    # background: tp 3, row 3, col 5 -> 3/5; class 1: tp 1, row 3, col 1 -> 1/3
    assert got.iou.tolist() == pytest.approx([60, 100 / 3], abs=1e-12)
    per_image = [metrics.miou(a_pred, a_true, 2).miou, metrics.miou(b_pred, b_true, 2).miou]
    assert got.miou == pytest.approx((60 + 100 / 3) / 2) and got.miou != np.mean(per_image)
    # a class in neither truth nor prediction is NaN and left out of the mean
    four = metrics.miou(PRED, TRUE, classes=4)
    assert np.isnan(four.iou[3].item()) and four.miou == pytest.approx(
        metrics.miou(PRED, TRUE, classes=3).miou)
    # tensors (B, H, W) work too
    stacked = metrics.miou(torch.from_numpy(np.stack([PRED, PRED])),
                           torch.from_numpy(np.stack([TRUE, TRUE])), classes=3)
    assert stacked.miou == pytest.approx(metrics.miou(PRED, TRUE, 3).miou, abs=1e-12)


def test_miou_errors():
    with pytest.raises(ValueError, match="mask value 3 is not a class"):
        metrics.miou(PRED, TRUE.clip(0, 3) * 0 + 3, classes=3)
    with pytest.raises(ValueError, match=r"same \(H, W\)"):
        metrics.miou(PRED[:2], TRUE, classes=3)
    with pytest.raises(ValueError, match="ignore=1 is a class value"):
        metrics.miou(PRED, TRUE, classes=3, ignore=1)
    with pytest.raises(TypeError, match="integer class values"):
        metrics.miou(PRED.astype(float), TRUE, classes=3)
    with pytest.raises(ValueError, match="2 predicted and 1 true"):
        metrics.miou([PRED, PRED], [TRUE], classes=3)
    with pytest.raises(ValueError, match="'miss' or 'skip'"):
        metrics.miou(PRED, TRUE, classes=3, ignored="drop")


# ---------------------------------------------------------------- MaxBoxAccV2
def _box_maps() -> tuple[torch.Tensor, list[list[list[int]]]]:
    m = torch.zeros(5, 8, 8, dtype=torch.float64)
    # A: a 0.6 ring around a 1.0 core; truth = the ring's box. IoU per tau .2/.5/.8: 1, 1, 1/4
    m[0, 1:5, 1:5] = 0.6
    m[0, 2:4, 2:4] = 1.0
    # B: a large wrong blob (1.0) and a small right one (0.7): only v2's "every component"
    # finds the right one. IoU: 1, 1, 0
    m[1, 0:4, 0:4] = 1.0
    m[1, 6:8, 5:8] = 0.7
    # C: all zero: never correct
    # D: half of the true box at every threshold: IoU .5, .5, .5
    m[3, 0:2, 0:5] = 1.0
    # F: a 0.3 halo around the right 2 x 2 block: IoU 4/36, 1, 1
    m[4, 0:6, 0:6] = 0.3
    m[4, 2:4, 2:4] = 1.0
    truth = [[[1, 1, 5, 5]], [[40, 40, 41, 41], [5, 6, 8, 8]], [[0, 0, 2, 2]], [[0, 0, 5, 4]],
             [[2, 2, 4, 4]]]
    return m, truth


def test_max_box_acc_v2_by_hand():
    maps, truth = _box_maps()
    got = metrics.max_box_acc(maps, truth, thresholds=[0.2, 0.5, 0.8])
    # correct maps per (IoU threshold, CAM threshold), of 5:
    #   0.3: A B D | A B D F | D F -> 60, 80, 40      0.5: the same (D's 1/2 counts)
    #   0.7: A B   | A B F   | F   -> 40, 60, 20
    expected = [[60, 80, 40], [60, 80, 40], [40, 60, 20]]
    assert np.allclose(got.accuracy.numpy(), expected, rtol=0, atol=1e-12)
    assert got.per_iou.tolist() == pytest.approx([80, 80, 60])
    assert got.best_threshold.tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert got.value == pytest.approx(220 / 3)
    assert got.iou.tolist() == pytest.approx([0.3, 0.5, 0.7])
    one = metrics.max_box_acc(maps, truth, thresholds=[0.2, 0.5, 0.8], iou=[0.7])
    assert one.value == pytest.approx(60)
    # ties go to the lowest threshold; the default thresholds are 0, 0.01, ..., 0.99
    full = metrics.max_box_acc(maps[:1], truth[:1])
    assert full.thresholds.numel() == 100 and full.best_threshold.tolist() == [0, 0, 0]
    assert full.value == 100
    # raw maps are normalised by their maximum: scaling changes nothing
    assert metrics.max_box_acc(3 * maps, truth, [0.2, 0.5, 0.8]).value == pytest.approx(got.value)
    # one box per map as a tensor (N, 4)
    single = metrics.max_box_acc(maps[[0, 4]], torch.tensor([[1, 1, 5, 5], [2, 2, 4, 4]]),
                                 thresholds=[0.2, 0.5, 0.8])
    assert single.per_iou.tolist() == pytest.approx([100, 100, 100])


def test_max_box_acc_errors():
    maps, truth = _box_maps()
    with pytest.raises(ValueError, match="4 maps|5 maps"):
        metrics.max_box_acc(maps, truth[:4])
    with pytest.raises(ValueError, match="empty or inverted"):
        metrics.max_box_acc(maps[:1], [[[4, 4, 2, 2]]])
    with pytest.raises(ValueError, match="at least one true box"):
        metrics.max_box_acc(maps[:1], [[]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.max_box_acc(maps, truth, thresholds=[1.5])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        metrics.max_box_acc(maps, truth, iou=[0])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.max_box_acc(maps[0], truth)


# ---------------------------------------------------------------- annotations: classes
def test_annotation_classes_per_box(tmp_path):
    names = ["cat", "dog", "tiger cat"]
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 2, 2], "category_id": 7},
                            {"id": 2, "image_id": 1, "bbox": [1, 1, 2, 2], "category_id": 9}],
            "categories": [{"id": 7, "name": "dog"}, {"id": 9, "name": "tiger_cat"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    raw = load_annotations(tmp_path / "coco.json")["a.jpg"]
    assert raw.classes == [7, 9]  # category ids without label names
    named = load_annotations(tmp_path / "coco.json", names)["a.jpg"]
    assert named.classes == [1, 2] and named.boxes == [[0, 0, 2, 2], [1, 1, 3, 3]]
    assert load_classes(tmp_path / "coco.json", names) == {"a.jpg": [1, 2], "b.jpg": []}
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "x.xml").write_text(
        "<annotation><filename>c.jpg</filename><object><name>Cat</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>")
    assert load_annotations(voc)["c.jpg"].classes == [None]  # a name, no labels to resolve
    assert load_annotations(voc, names)["c.jpg"].classes == [0]
    with pytest.raises(ValueError, match="no classes for any image.*label names"):
        load_classes(voc)
    with pytest.raises(ValueError, match="unknown class name 'Cat'.*'kat'"):
        load_annotations(voc, ["kat", "dog"])


def test_annotation_classes_simple_json(tmp_path):
    data = {"a.png": {"boxes": [[0, 0, 2, 2], [2, 2, 4, 4]], "classes": [1, "cat"]},
            "b.png": {"classes": ["dog", 0]},  # image-level labels, no boxes
            "c.png": [[0, 0, 1, 1]]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    got = load_annotations(tmp_path / "s.json", ["cat", "dog"])
    assert got["a.png"].classes == [1, 0] and got["b.png"].image_classes == [0, 1]
    assert got["c.png"].classes == [None] and got["c.png"].present == []
    assert load_classes(tmp_path / "s.json", ["cat", "dog"]) == {
        "a.png": [0, 1], "b.png": [0, 1], "c.png": []}
    (tmp_path / "bad.json").write_text(json.dumps({"a.png": {"boxes": [[0, 0, 1, 1]],
                                                              "classes": [0, 1]}}))
    with pytest.raises(ValueError, match="2 classes for 1 boxes"):
        load_annotations(tmp_path / "bad.json")
    (tmp_path / "range.json").write_text(json.dumps({"a.png": {"classes": [5]}}))
    with pytest.raises(ValueError, match="out of range"):
        load_classes(tmp_path / "range.json", ["cat", "dog"])
    # evaluate's run fingerprint is str(Objects): unchanged by the new fields
    assert repr(Objects([[0.0, 0.0, 1.0, 1.0]], 3, [2])) == (
        "Objects(boxes=[[0.0, 0.0, 1.0, 1.0]], label=3)")


# ---------------------------------------------------------------- a folder of images
def colour_model(bias: float = -0.3) -> nn.Module:
    """Logit c = mean of colour channel c + bias; CAM of class c on layer "1" = channel c."""
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3)[:, :, None, None])
        model[4].weight.copy_(torch.eye(3))
        model[4].bias.fill_(bias)
    return model.eval()


def _canvas(height: int, width: int, red_cols: int) -> np.ndarray:
    """Red on the left ``red_cols`` columns, green on the rest."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :red_cols, 0] = 255
    image[:, red_cols:, 1] = 255
    return image


@pytest.fixture
def folder(tmp_path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    # 16 x 24: the model's 16 x 16 crop covers columns 4..19; red on columns 0..14
    Image.fromarray(_canvas(16, 24, 15)).save(images / "wide.png")
    Image.fromarray(_canvas(16, 16, 10)).save(images / "square.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return tmp_path


def _labels(folder: Path, out: str, **kw) -> dict:
    return make_labels(folder / "images", folder / out, model=colour_model(kw.pop("bias", -0.3)),
                       labels=["red", "green", "blue"], layer="1",
                       preprocess=preprocessing("unit", crop=16, resize=16), **kw)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def test_make_labels_classes_from_annotations(folder):
    (folder / "ann.json").write_text(json.dumps({
        "wide.png": {"classes": ["red", "green"]}, "square.png": {"classes": ["green"]}}))
    summary = _labels(folder, "ann", method="cam,gradcam", annotations=folder / "ann.json")
    assert summary["classes_from"].startswith("annotations")
    assert summary["images"] == 2 and summary["failed"] == 1  # broken.png, reported
    assert summary["exit_code"] == 1
    assert "broken.png" in summary["errors"][0]["file"]
    wide = _png(folder / "ann" / "cam" / "wide.png")
    expected = np.full((16, 24), 255, np.uint8)  # outside the crop: ignore
    expected[:, 4:15], expected[:, 15:20] = 1, 2  # red -> 1, green -> 2
    assert np.array_equal(wide, expected)
    assert np.array_equal(_png(folder / "ann" / "gradcam" / "wide.png"), expected)
    square = _png(folder / "ann" / "cam" / "square.png")
    assert (square[:, :10] == 0).all() and (square[:, 10:] == 2).all()  # red not annotated
    coco = json.loads((folder / "ann" / "cam" / "boxes.json").read_text())
    by_image = {img["file_name"]: img["id"] for img in coco["images"]}
    wide_boxes = sorted((a["category_id"], a["bbox"]) for a in coco["annotations"]
                        if a["image_id"] == by_image["wide.png"])
    assert wide_boxes == [(1, [4, 0, 11, 16]), (2, [15, 0, 5, 16])]
    assert coco["categories"][0] == {"id": 1, "name": "red"}
    record = {r["file"].rsplit("/", 1)[-1]: r for r in summary["records"]}
    assert record["wide.png"]["classes"] == ["red", "green"]
    # read back as annotations with the model's names: the same classes
    back = load_annotations(folder / "ann" / "cam" / "boxes.json", ["red", "green", "blue"])
    assert back["wide.png"].classes == [0, 1]
    assert not list((folder / "ann").rglob("*.part"))


def test_make_labels_classes_from_predictions(folder):
    # softmax top-1: mean red 15/24 > green on wide.png, 10/16 on square.png -> red only
    top1 = _labels(folder, "top1", method="cam")
    assert "top-1" in top1["classes_from"]
    square = _png(folder / "top1" / "cam" / "square.png")
    assert (square[:, :10] == 1).all() and (square[:, 10:] == 0).all()
    # sigmoid > 0.5: logits .625 - .3 and .375 - .3 are both positive -> red and green
    multi = _labels(folder, "multi", method="cam", multilabel=True)
    assert "sigmoid > 0.5" in multi["classes_from"]
    square = _png(folder / "multi" / "cam" / "square.png")
    assert (square[:, :10] == 1).all() and (square[:, 10:] == 2).all()
    # with bias -0.5 green's logit is negative: red only
    _labels(folder, "strict", method="cam", multilabel=True, bias=-0.5)
    assert (_png(folder / "strict" / "cam" / "square.png")[:, 10:] == 0).all()
    # only "green" is labelled: top-1 red is not one of the classes -> all background
    green = _labels(folder, "green", method="cam", classes=["green"])
    assert green["classes"] == [{"value": 1, "index": 1, "name": "green"}]
    assert (_png(folder / "green" / "cam" / "square.png") == 0).all()


def test_make_labels_scores_against_true_masks(folder):
    truth = folder / "truth"
    truth.mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 1  # the true red region is narrower than the painted one
    mask[0, :] = 255
    save_voc_png(mask, truth / "square.png")
    save_voc_png(np.zeros((3, 3), np.uint8), truth / "wide.png")  # wrong size: not scored
    summary = _labels(folder, "scored", method="cam", true_masks=truth, ignore_band=(0.1, 0.5))
    pred = _png(folder / "scored" / "cam" / "square.png")
    expected = metrics.miou(pred, mask, classes=4)
    assert summary["miou"]["cam"]["miou"] == pytest.approx(expected.miou, abs=1e-4)
    assert summary["miou"]["cam"]["per_class"]["red"] == pytest.approx(8 / 10 * 100, abs=1e-4)
    assert summary["scored_images"] == 1 and summary["ignore_band"] == [0.1, 0.5]


def test_make_labels_usage_errors(folder):
    with pytest.raises(ValueError, match="unknown class name 'purple'"):
        _labels(folder, "x", classes=["purple"])
    (folder / "none.json").write_text(json.dumps({"other.png": {"classes": ["red"]}}))
    with pytest.raises(ValueError, match="name none of the 3 image"):
        _labels(folder, "x", annotations=folder / "none.json")
    with pytest.raises(ValueError, match="LOW <= HIGH"):
        _labels(folder, "x", ignore_band=(0.5, 0.1))
    assert not (folder / "x").exists()  # usage errors come before the folder is made
    with pytest.raises(ValueError, match="1000 classes.*--classes"):
        make_labels(folder / "images", folder / "y", model=nn.Sequential(
            nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000)),
            preprocess=preprocessing("unit", crop=16, resize=16))


def test_class_set_target_gives_every_class_in_one_pass():
    import camlens

    x = torch.from_numpy(_canvas(16, 16, 10)).permute(2, 0, 1)[None].float() / 255
    maps = camlens.compare(colour_model(), x, ["cam"], layer="1", target=ClassSet([0, 1]),
                           normalize=False)["cam"]
    assert maps.shape == (1, 2, 16, 16)
    assert (maps[0, 0, :, :10] == 1).all() and (maps[0, 1, :, 10:] == 1).all()
    per_image = ClassSet(torch.tensor([[1]]))
    assert camlens.explain(colour_model(), x, "cam", layer="1", target=per_image,
                           normalize=False)[0, 0, :, 10:].eq(1).all()
    with pytest.raises(ValueError, match="out of range"):
        camlens.explain(colour_model(), x, "cam", layer="1", target=ClassSet([5]))
    with pytest.raises(ValueError, match="class indices"):
        ClassSet([0.5])


# ---------------------------------------------------------------- the command
def run_labels(*args: str) -> subprocess.CompletedProcess:
    """``camlens labels ...`` in a subprocess, as a user runs it."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "camlens", "labels", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_command_end_to_end(folder):
    model = folder / "colour.pt"
    torch.save(colour_model(), model)
    (folder / "ann.json").write_text(json.dumps({"wide.png": {"classes": ["0", "1"]},
                                                 "square.png": {"classes": [1]}}))
    out = folder / "cli"
    res = run_labels(str(folder / "images"), "--model", str(model), "--trust-model",
                     "--preprocess", "unit", "--layer", "1", "--method", "cam,layercam",
                     "--annotations", str(folder / "ann.json"), "--box-threshold", "0.5",
                     "--out", str(out))
    assert res.returncode == 1, res.stderr  # broken.png is reported, the others written
    assert "broken.png" in res.stderr and "classes from annotations" in res.stderr
    summary = json.loads((out / "labels.json").read_text())
    assert summary["images"] == 2 and summary["methods"] == ["cam", "layercam"]
    for method in ("cam", "layercam"):
        wide = _png(out / method / "wide.png")
        assert wide.shape == (16, 24)  # the image's size, not the model's 224 x 224
        # the 224 x 224 crop of the image upscaled to 256 x 384 covers x 5..18, y 1..14
        assert (wide[:, :5] == 255).all() and (wide[:, 19:] == 255).all()
        assert (wide[0] == 255).all() and (wide[15] == 255).all()
        assert (wide[1:15, 5:14] == 1).all() and (wide[1:15, 16:19] == 2).all()
        assert json.loads((out / method / "boxes.json").read_text())["annotations"]


def test_cmd_labels_parser_and_usage_errors(folder):
    from camlens.cli._args import CliError
    from camlens.cli._labels import add_parser, cmd_labels

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["labels", "x.jpg"])
    assert args.func is cmd_labels and args.bg_threshold == 0.15 and args.box_threshold == 0.2
    assert args.out == "camlens-labels" and args.method == "gradcam" and not args.multilabel
    with pytest.raises(SystemExit):
        parser.parse_args(["labels", "x.jpg", "--bg-threshold", "1.5"])
    model = folder / "colour.pt"
    torch.save(colour_model(), model)
    args = parser.parse_args(["labels", str(folder / "images"), "--model", str(model),
                              "--trust-model", "--ignore-band", "0.5", "--out",
                              str(folder / "bad")])
    with pytest.raises(CliError, match="--ignore-band takes LOW,HIGH"):
        args.func(args)
    assert not (folder / "bad").exists()  # a usage error leaves no folder behind
