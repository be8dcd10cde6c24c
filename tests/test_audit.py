"""Bias audit (``camlens.audit``, ``camlens audit``): statistics by hand on tiny maps, boxes
and masks; the flag rule; the report files; the command end to end on small images.

The end-to-end tests use a model whose Grad-CAM map is known exactly: a 1 x 1 convolution
copying the red and green channels, ReLU, global average pooling and an identity linear
layer. The map of class 0 (red) at the ReLU is then the red channel, min-max normalised:
a red square gives a map of 1 on the square and 0 elsewhere, and class 1 (green) likewise.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens.audit import AuditResult, audit
from camlens.audit._report import outline
from camlens.audit._stats import Region, Totals, Worst, centres, map_stats, object_on_grid, outliers
from camlens.cli._args import CliError
from camlens.cli._audit import cmd_audit
from camlens.models import preprocessing


# ---------------------------------------------------------------- the object on a map's grid
def test_centres_cover_the_crop():
    xs, ys = centres((2, 4), (2, 0, 10, 4))  # 4 columns over x 2..10, 2 rows over y 0..4
    assert xs.tolist() == [3.0, 5.0, 7.0, 9.0]
    assert ys.tolist() == [1.0, 3.0]


def test_boxes_on_the_grid_by_pixel_centres():
    # a 4 x 4 map over an 8 x 8 photo: centres at 1, 3, 5, 7; the box [2, 2, 6, 6) holds 3, 5
    inside, ignore = object_on_grid(Region(boxes=[[2, 2, 6, 6]], box_classes=[None]), (4, 4),
                                    (0, 0, 8, 8), (8, 8))
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True
    assert (inside == expected).all() and not ignore.any()


def test_boxes_of_the_true_class_only_when_the_annotations_say_which():
    region = Region(boxes=[[0, 0, 2, 2], [2, 2, 4, 4]], box_classes=[0, 1], cls=1)
    inside, _ = object_on_grid(region, (4, 4), (0, 0, 4, 4), (4, 4))
    assert inside.sum() == 4 and inside[2:, 2:].all()
    region.cls = 7  # a class no box has: every box is the object
    inside, _ = object_on_grid(region, (4, 4), (0, 0, 4, 4), (4, 4))
    assert inside.sum() == 8


def test_mask_on_the_grid_with_ignore_and_class():
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1] = 3  # class 2
    mask[1, 3] = 255  # ignore
    mask[3, 3] = 5  # class 4
    # a 2 x 2 map over the photo samples the pixels (1, 1), (1, 3), (3, 1), (3, 3)
    inside, ignore = object_on_grid(Region(mask=mask, cls=2), (2, 2), (0, 0, 4, 4), (4, 4))
    assert inside.tolist() == [[True, False], [False, False]]
    assert ignore.tolist() == [[False, True], [False, False]]
    inside, _ = object_on_grid(Region(mask=mask), (2, 2), (0, 0, 4, 4), (4, 4))
    assert inside.tolist() == [[True, False], [False, True]]  # any class, not the ignored
    with pytest.raises(ValueError, match="mask is 4 x 4 pixels but the image is 5 x 4"):
        object_on_grid(Region(mask=mask), (2, 2), (0, 0, 4, 4), (5, 4))


# ---------------------------------------------------------------- one map
MAP = np.array([[0, 0, 0, 0],
                [0, 1, 2, 0],
                [0, 3, 4, 0],
                [0, 0, 0, 2]], np.float64)
BOX = np.zeros((4, 4), bool)
BOX[1:3, 1:3] = True


def test_map_stats_by_hand():
    s = map_stats(MAP, BOX, border=0.25)  # total 12, 10 of it on the object
    assert s["energy_on"] == pytest.approx(10 / 12)
    assert s["energy_off"] == pytest.approx(2 / 12)
    assert s["object_area"] == pytest.approx(4 / 16)
    assert s["hit"] is True  # the peak (4) is on the object
    assert s["border_energy"] == pytest.approx(2 / 12)  # the 1 px ring holds the 2 only
    assert s["concentration"] == pytest.approx(7 / 12)  # top ceil(1.6) = 2 pixels: 4 + 3
    assert s["touches_border"] is True  # the 2 in the corner is >= half the peak
    assert s["empty"] is False


def test_map_stats_leaves_ignored_pixels_out():
    ignore = np.zeros((4, 4), bool)
    ignore[3, 3] = True
    s = map_stats(MAP, BOX, ignore, border=0.25)
    assert s["energy_on"] == pytest.approx(1.0)
    assert s["object_area"] == pytest.approx(4 / 15)
    assert s["border_energy"] == pytest.approx(0.0)


def test_pointing_game_tolerance_in_map_pixels():
    corner = np.zeros((4, 4), bool)
    corner[0, 0] = True  # the peak (2, 2) is sqrt(8) = 2.83 px away
    assert map_stats(MAP, corner, tolerance=2)["hit"] is False
    assert map_stats(MAP, corner, tolerance=3)["hit"] is True
    # default: 15 px at 224, scaled: round(15 * 4 / 224) = 0 px on a 4 x 4 map
    assert map_stats(MAP, corner)["hit"] is False


def test_empty_and_bad_maps():
    s = map_stats(np.zeros((3, 3)), np.ones((3, 3), bool))
    assert s["empty"] is True
    assert s["energy_on"] is None and s["hit"] is None and s["border_energy"] is None
    assert s["object_area"] == 1.0
    assert "energy_on" not in map_stats(MAP)  # no annotations: only the weak statistics
    with pytest.raises(ValueError, match="finite and >= 0"):
        map_stats(-MAP)
    with pytest.raises(ValueError, match=r"one map \(H, W\)"):
        map_stats(np.zeros((2, 3, 3)))


# ---------------------------------------------------------------- per class, flags
def test_totals_mean_and_standard_error():
    t = Totals()
    for v, correct in ((0.2, True), (0.4, False), (0.6, True)):
        t.add({"energy_on": v, "hit": v > 0.3}, correct, 5)
    t.add({"empty": True, "energy_on": None}, None, None)
    assert (t.images, t.known, t.correct, t.empty) == (4, 3, 2, 1)
    assert t.mean("energy_on") == pytest.approx(0.4)
    assert t.se("energy_on") == pytest.approx(0.2 / math.sqrt(3))  # sd 0.2 over 3 images
    assert t.mean("hit") == pytest.approx(2 / 3)
    assert t.mean("border_energy") is None and t.other[5] == 3


def test_outliers_by_hand():
    classes = {0: (0.6, 0.0, 20), 1: (0.62, 0.0, 20), 2: (0.58, 0.0, 20), 3: (0.1, 0.02, 20)}
    v = outliers(classes)
    # class 3: the others' median 0.6, MAD 0.02 -> 1.4826 * 0.02 < 0.05, so s = 0.05
    assert v[3].reference == pytest.approx(0.6)
    assert v[3].spread == pytest.approx(0.05)
    assert v[3].z == pytest.approx(-0.5 / math.sqrt(0.05**2 + 0.02**2))  # -9.28
    assert v[3].ratio == pytest.approx(0.1 / 0.6)
    assert v[3].flagged
    # class 0: the others 0.62, 0.58, 0.1 -> median 0.58, MAD 0.04, s = 1.4826 * 0.04
    assert v[0].reference == pytest.approx(0.58)
    assert v[0].spread == pytest.approx(1.4826 * 0.04)
    assert v[0].z == pytest.approx(0.02 / (1.4826 * 0.04))
    assert [c for c in v if v[c].flagged] == [3]


def test_outliers_needs_both_a_large_z_and_a_large_gap():
    classes = {0: (0.9, 0.0, 10), 1: (0.9, 0.0, 10), 2: (0.9, 0.0, 10), 3: (0.74, 0.0, 10)}
    v = outliers(classes)  # z = -0.16 / 0.05 = -3.2, but 0.74 / 0.9 = 0.82 > 0.8
    assert v[3].z == pytest.approx(-3.2) and not v[3].flagged
    assert outliers(classes, ratio=0.85)[3].flagged
    assert not outliers(classes, z=3.5, ratio=0.85)[3].flagged


def test_outliers_minimum_images_and_direction():
    classes = {0: (0.6, 0.0, 20), 1: (0.6, 0.0, 20), 2: (0.1, 0.0, 9)}
    v = outliers(classes)
    assert not v[2].compared and not v[2].flagged and v[2].z is None
    assert outliers(classes, min_images=9)[2].flagged
    only_one = outliers({0: (0.6, 0.0, 20), 1: (0.1, 0.0, 5)})
    assert not any(x.compared for x in only_one.values())  # nothing to compare with
    up = outliers({0: (0.2, 0.0, 10), 1: (0.2, 0.0, 10), 2: (0.5, 0.0, 10)},
                  higher_is_worse=True)
    assert up[2].flagged and up[2].z == pytest.approx(6.0) and not up[0].flagged
    with pytest.raises(ValueError, match="min_images must be at least 1"):
        outliers(classes, min_images=0)


def test_worst_keeps_the_least_energy_per_class_and_overall():
    w = Worst(2)
    for i, (cls, on) in enumerate([(0, 0.5), (0, 0.1), (1, 0.3), (0, 0.05), (0, 0.1)]):
        w.add(cls, on, {"i": i})
    assert [x["i"] for x in w.of(0)] == [3, 1]  # 0.05, then the first 0.1
    assert [x["i"] for x in w.of(1)] == [2]
    assert [x["i"] for x in w.of(None)] == [3, 1]


def test_outline_of_a_region():
    inside = np.zeros((5, 5), bool)
    inside[1:4, 1:4] = True
    edge = outline(inside)
    assert edge.sum() == 8 and not edge[2, 2]


# ---------------------------------------------------------------- end to end
def colour_model() -> nn.Module:
    """Class 0 = red, class 1 = green: Grad-CAM at layer "1" is that channel, normalised."""
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[0, 0] = 1.0
        model[0].weight[1, 1] = 1.0
        model[4].weight.copy_(torch.eye(2))
        model[4].bias.zero_()
    return model


def square(side: int, channel: int, at: tuple[int, int], size: int) -> np.ndarray:
    img = np.zeros((side, side, 3), np.uint8)
    img[at[0]:at[0] + size, at[1]:at[1] + size, channel] = 255
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """40 x 40 photos (the model sees the centre 32 x 32: crop (4, 4, 36, 36)): three red
    squares whose box covers their left half, three green squares whose box misses them."""
    root = tmp_path_factory.mktemp("audit-data")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    boxes = {}
    for i in range(3):
        Image.fromarray(square(40, 0, (8, 8 + i), 8)).save(images / f"red{i}.png")
        boxes[f"red{i}.png"] = {"boxes": [[8 + i, 8, 12 + i, 16]], "label": 0}
        mask = np.zeros((40, 40), np.uint8)
        mask[8:16, 8 + i:12 + i] = 1  # class 0 on the left half of the square
        mask[8:16, 12 + i:14 + i] = 255  # a quarter of it ignored
        Image.fromarray(mask).save(masks / f"red{i}.png")
        Image.fromarray(square(40, 1, (22, 22), 8)).save(images / f"green{i}.png")
        boxes[f"green{i}.png"] = {"boxes": [[6, 6, 14, 14]], "label": 1}
        mask = np.zeros((40, 40), np.uint8)
        mask[6:14, 6:14] = 2
        Image.fromarray(mask).save(masks / f"green{i}.png")
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


PRE = preprocessing("unit", crop=32, resize=40)


def run_audit(dataset: Path, out: Path, **kw) -> AuditResult:
    kw.setdefault("annotations", dataset / "boxes.json")
    return audit([dataset / "images"], out, model=colour_model(), preprocess=PRE,
                 labels=["red", "green"], layer="1", min_images=2, **kw)


def test_audit_with_boxes_by_hand(dataset, tmp_path):
    result = run_audit(dataset, tmp_path / "audit")
    assert (result.images, result.failed, result.annotated) == (6, 0, 6)
    assert result.grouping == "true" and result.accuracy == 1.0
    red, green = result.by_true
    assert (red.name, red.images, red.accuracy) == ("red", 3, 1.0)
    assert red.energy_on == pytest.approx(0.5)  # the box holds the square's left half
    assert red.energy_off == pytest.approx(0.5)
    assert red.object_area == pytest.approx(32 / 1024)
    assert red.pointing == 1.0  # the first maximum is the square's top-left pixel
    assert green.energy_on == 0.0 and green.pointing == 0.0
    assert red.border_energy == 0.0 and red.concentration == 1.0
    assert red.others == [(0, "red", 3)] and green.others == [(1, "green", 3)]
    # with two classes each is compared with the other: s = 0.05 (the floor), se = 0
    assert green.verdict.z == pytest.approx(-0.5 / 0.05) and green.verdict.flagged
    assert red.verdict.z == pytest.approx(0.5 / 0.05) and not red.verdict.flagged
    assert result.flagged == [1] and result.weak_flagged == []
    assert [Path(i["file"]).name for i in result.worst[1]] == ["green0.png", "green1.png",
                                                              "green2.png"]


def test_audit_files_hold_the_numbers(dataset, tmp_path):
    result = run_audit(dataset, tmp_path / "audit")
    out = tmp_path / "audit"
    data = json.loads((out / "audit.json").read_text())
    assert data["flagged"] == [1] and data["images"] == 6 and data["grouping"] == "true"
    assert data["by_true"][0]["energy_on"] == pytest.approx(0.5)
    rows = (out / "audit.csv").read_text().splitlines()
    assert rows[0].startswith("grouping,class,name,images,accuracy,annotated,energy_on")
    assert rows[1].startswith("true,0,red,3,1,3,0.5,0,0.5,")
    assert rows[2].startswith("true,1,green,3,1,3,0,0,1,")
    images = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert len(images) == 6
    assert {Path(r["file"]).name: r["energy_on"] for r in images}["red1.png"] == 0.5
    report = (out / "report.md").read_text()
    assert "**1 (green)** (images of it): 0.0 % of the map energy on the object" in report
    assert "| 0 (red) | 3 | 100.0 % | 3 | 50.0 % | 50.0 % | 3.1 % | 100.0 % |" in report
    assert "![green0.png](thumbs/green0.png)" in report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<strong>1 (green)</strong>" in page
    thumb = np.asarray(Image.open(out / "thumbs" / "green0.png"))
    assert thumb.shape == (160, 160, 3)  # the 32 px crop, 5x
    assert (thumb == (255, 0, 255)).all(-1).sum() > 0  # the box outlined
    assert result.files["report_md"] == out / "report.md"


def test_audit_with_masks_and_their_classes(dataset, tmp_path):
    result = run_audit(dataset, tmp_path / "audit", annotations=None, masks=dataset / "masks")
    red, green = result.by_true  # true classes from the masks' one class each
    assert red.energy_on == pytest.approx(32 / 48)  # 16 of the square's 64 pixels ignored
    assert red.object_area == pytest.approx(32 / (1024 - 16))
    assert green.energy_on == 0.0 and result.flagged == [1]


def test_audit_resumes_and_compares_with_a_baseline(dataset, tmp_path):
    first = run_audit(dataset, tmp_path / "a")
    again = run_audit(dataset, tmp_path / "a")  # the run is resumed: nothing explained twice
    lines = (tmp_path / "a" / "run" / "index.jsonl").read_text().splitlines()
    assert len(lines) == 6 and again.by_true[0].energy_on == first.by_true[0].energy_on
    truth = {f"red{i}.png": 1 for i in range(3)} | {f"green{i}.png": 1 for i in range(3)}
    other = run_audit(dataset, tmp_path / "b", truth=truth, baseline=tmp_path / "a")
    assert [r.cls for r in other.by_true] == [1]  # every image said to be green
    row = other.by_true[0]
    assert row.accuracy == 0.5 and row.baseline_accuracy == 1.0
    assert row.baseline_energy_on == 0.0
    report = (tmp_path / "b" / "report.md").read_text()
    assert "| 1 (green) | 50.0 % | 100.0 % | -50.0 pts |" in report
    # one true class: nothing to compare it with; by prediction, green's maps miss the boxes
    assert other.flagged == [] and other.flagged_predicted == [1]
    assert "**1 (green)** (images predicted as it): 0.0 % of the map energy" in report
    assert "**predicted as 1 (green)** (flagged)" in report
    assert [Path(i["file"]).name for i in other.worst_predicted[1]] == [
        "green0.png", "green1.png", "green2.png"]


def test_audit_without_true_classes_groups_by_prediction(dataset, tmp_path):
    boxes = json.loads((dataset / "boxes.json").read_text())
    plain = {k: v["boxes"] for k, v in boxes.items()}  # no labels
    result = run_audit(dataset, tmp_path / "audit", annotations=plain)
    assert result.grouping == "predicted" and result.accuracy is None
    assert result.by_true == [] and result.flagged == [1]
    assert [r.accuracy for r in result.by_predicted] == [None, None]


def test_audit_without_annotations_is_weaker_evidence(dataset, tmp_path):
    result = run_audit(dataset, tmp_path / "audit", annotations=None,
                       truth={f"red{i}.png": "red" for i in range(3)})
    assert result.flagged == [] and result.annotated == 0
    assert [r.cls for r in result.by_true] == [0] and result.by_true[0].energy_on is None
    report = (tmp_path / "audit" / "report.md").read_text()
    assert "Nothing can be flagged without object annotations" in report
    assert "Without annotations (weaker evidence)" in report


def test_audit_goes_on_past_a_bad_file_and_a_bad_mask(dataset, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("red0.png", "red1.png", "green0.png"):
        (folder / name).write_bytes((dataset / "images" / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    masks = {"red0": np.zeros((10, 10), np.uint8)}  # not the image's size
    result = audit([folder], tmp_path / "audit", model=colour_model(), preprocess=PRE,
                   labels=["red", "green"], layer="1", annotations=dataset / "boxes.json",
                   masks=masks, min_images=1)
    assert (result.images, result.failed, result.annotated) == (3, 1, 2)
    rows = {Path(r["file"]).name: r for r in map(
        json.loads, (tmp_path / "audit" / "images.jsonl").read_text().splitlines())}
    assert rows["red0.png"]["region"] is None and "the mask is 10 x 10" in rows["red0.png"]["note"]
    assert rows["red1.png"]["energy_on"] == pytest.approx(0.5)
    report = (tmp_path / "audit" / "report.md").read_text()
    assert "## Images that could not be used" in report and "broken.png" in report


def test_truth_from_files_and_folders(dataset, tmp_path):
    csv = tmp_path / "truth.csv"
    csv.write_text("file,class\n" + "".join(f"red{i}.png,green\n" for i in range(3)))
    result = run_audit(dataset, tmp_path / "a", truth=csv)
    assert [(r.cls, r.images, r.accuracy) for r in result.by_true] == [(1, 3, 0.0)]
    folders = tmp_path / "by-class"
    for name in ("red", "green"):
        (folders / name).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(square(40, 0, (8, 8), 8)).save(folders / "red" / f"r{i}.png")
        Image.fromarray(square(40, 1, (8, 8), 8)).save(folders / "green" / f"g{i}.png")
    result = audit([folders], tmp_path / "b", model=colour_model(), preprocess=PRE,
                   labels=["red", "green"], layer="1", truth="folders")
    assert [(r.cls, r.images, r.accuracy) for r in result.by_true] == [(0, 2, 1.0), (1, 2, 1.0)]


def test_audit_errors_name_the_fix(dataset, tmp_path):
    with pytest.raises(ValueError, match="one method name"):
        run_audit(dataset, tmp_path / "a", method="gradcam,layercam")
    with pytest.raises(ValueError, match="unknown method 'gradcm'"):
        run_audit(dataset, tmp_path / "a", method="gradcm")
    with pytest.raises(ValueError, match="the annotations name none of the 6 image"):
        run_audit(dataset, tmp_path / "a", annotations={"x.png": [[0, 0, 2, 2]]})
    with pytest.raises(ValueError, match="inside the input folder"):
        run_audit(dataset, dataset / "images" / "audit")
    with pytest.raises(ValueError, match="unknown class name 'blue'"):
        run_audit(dataset, tmp_path / "a", truth={"red0.png": "blue"})
    with pytest.raises(ValueError, match="class 5 is out of range"):
        run_audit(dataset, tmp_path / "a", truth={"red0.png": 5})
    with pytest.raises(TypeError, match="worst must be a whole number"):
        run_audit(dataset, tmp_path / "a", worst=2.5)


# ---------------------------------------------------------------- the command
def parser() -> argparse.ArgumentParser:
    """The ``camlens`` command's own parser, where ``audit`` is registered."""
    from camlens.cli import _parser

    return _parser()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path, Path]:
    """256 x 256 photos for a pickled colour model at its 224 px centre crop (16 px off)."""
    root = tmp_path_factory.mktemp("audit-cli")
    folder = root / "photos"
    folder.mkdir()
    boxes = {}
    for i in range(3):
        Image.fromarray(square(256, 0, (40, 40), 32)).save(folder / f"red{i}.png")
        boxes[f"red{i}.png"] = {"boxes": [[40, 40, 56, 72]], "label": 0}  # the left half
        Image.fromarray(square(256, 1, (150, 150), 32)).save(folder / f"green{i}.png")
        boxes[f"green{i}.png"] = {"boxes": [[20, 20, 60, 60]], "label": 1}  # elsewhere
    (root / "boxes.json").write_text(json.dumps(boxes))
    torch.save(colour_model(), root / "colour.pt")
    return folder, root / "boxes.json", root / "colour.pt"


def test_command_end_to_end(photos, tmp_path, capsys):
    folder, boxes, model = photos
    args = parser().parse_args([
        "audit", str(folder), "--model", str(model), "--trust-model", "--preprocess", "unit",
        "--layer", "1", "--annotations", str(boxes), "--min-images", "2", "--worst", "2",
        "--out", str(tmp_path / "out"), "--progress", "never"])
    with pytest.warns(UserWarning, match="trust=True"):
        assert cmd_audit(args) == 0
    captured = capsys.readouterr()
    assert "| 0 (class 0) | 3 | 100.0 % | 3 | 50.0 % |" in captured.out
    assert "flagged class 1 (class 1): 0.0 % of the map energy" in captured.err
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert data["flagged"] == [1] and len(data["worst"]["1"]) == 2
    assert sorted(p.name for p in (tmp_path / "out" / "thumbs").iterdir()) == [
        "green0.png", "green1.png"]


def test_command_errors(photos, tmp_path):
    folder, _, model = photos
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"other.png": [[0, 0, 4, 4]]}))
    args = parser().parse_args([
        "audit", str(folder), "--model", str(model), "--trust-model", "--annotations",
        str(wrong), "--out", str(tmp_path / "out")])
    with pytest.warns(UserWarning, match="trust=True"), pytest.raises(
            CliError, match="the annotations name none of the 6 image"):
        cmd_audit(args)
    args = parser().parse_args(["audit", str(folder), "--worst", "-1"])
    with pytest.raises(CliError, match="--worst must be 0 or more"):
        cmd_audit(args)
