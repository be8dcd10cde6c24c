"""Entries of ``--truth``, ``--annotations`` and ``--masks`` that name no image are said,
with how many and the first few names (never ignored silently), by ``camlens.audit``,
``camlens audit`` and ``camlens evaluate`` alike; entries that name none are an error."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_audit import dataset, parser, photos, run_audit  # noqa: F401  (fixtures)

from camlens._annotations import match_keys
from camlens.cli._args import CliError, say
from camlens.cli._audit import cmd_audit
from camlens.runner._files import check_matches


def test_match_keys_counts_and_names_the_first_few():
    assert match_keys("truth", {"a.png": 0}, {"a.png", "b.png"}, "file name") is None
    note = match_keys("truth", dict.fromkeys(["a.png", "x4.png", "x1.png", "x3.png", "x2.png"]),
                      {"a.png", "b.png"}, "file name")
    assert note == ("4 of the 5 entries in the truth name no image (they are keyed by file "
                    "name) and are left out: x1.png, x2.png, x3.png, ...")
    note = match_keys("masks", {"a": 0, "z": 0}, {"a"}, "file stem")
    assert note == ("1 of the 2 entries in the masks name no image (they are keyed by file "
                    "stem) and are left out: z")
    with pytest.raises(ValueError, match=r"the truth name none of the 2 image\(s\): "
                                         r"they are keyed by file name \(x\.png\)"):
        match_keys("truth", {"x.png": 0}, {"a.png", "b.png"}, "file name")


def test_audit_says_which_truth_entries_name_no_image(dataset, tmp_path, capfd):  # noqa: F811
    truth = {f"red{i}.png": "green" for i in range(3)} | {"gone.png": "red", "lost.png": 0}
    result = run_audit(dataset, tmp_path / "a", truth=truth, message=say)  # printed
    err = capfd.readouterr().err
    assert ("camlens: 2 of the 5 entries in the truth name no image (they are keyed by file "
            "name) and are left out: gone.png, lost.png") in err
    # the entries that name an image are used: three red squares, all called green
    assert [(r.cls, r.images, r.accuracy) for r in result.by_true] == [(1, 3, 0.0)]


def test_audit_says_which_annotations_and_masks_name_no_image(dataset, tmp_path,  # noqa: F811
                                                             capfd):
    boxes = json.loads((dataset / "boxes.json").read_text())
    boxes["ghost.png"] = {"boxes": [[0, 0, 4, 4]], "label": 0}
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in (dataset / "masks").iterdir():
        (masks / f.name).write_bytes(f.read_bytes())
    Image.new("L", (40, 40)).save(masks / "phantom.png")
    run_audit(dataset, tmp_path / "a", annotations=boxes, masks=masks, message=say)
    err = capfd.readouterr().err
    assert ("1 of the 7 entries in the annotations name no image (they are keyed by file "
            "name) and are left out: ghost.png") in err
    assert ("1 of the 7 entries in the masks name no image (they are keyed by file stem) "
            "and are left out: phantom") in err


def test_command_says_it_too(photos, tmp_path, capfd):  # noqa: F811
    folder, _, model = photos
    truth = tmp_path / "truth.csv"
    truth.write_text("file,class\nred0.png,0\nred1.png,0\nmissing.png,1\n")
    args = parser().parse_args(
        ["audit", str(folder), "--model", str(model), "--trust-model", "--preprocess", "unit",
         "--layer", "1", "--truth", str(truth), "--out", str(tmp_path / "cli"),
         "--progress", "never"])
    with pytest.warns(UserWarning, match="trust=True"):
        assert cmd_audit(args) == 0
    err = capfd.readouterr().err
    assert ("camlens: 1 of the 3 entries in the truth name no image (they are keyed by file "
            "name) and are left out: missing.png") in err


def test_evaluate_says_which_annotations_name_no_image(tmp_path, capfd):
    files = [(tmp_path / "a.png", "a.png", "a"), (tmp_path / "b.png", "b.png", "b")]
    check_matches({"a.png": [], "c.png": []}, files, say)
    assert ("camlens: 1 of the 2 entries in the annotations name no image (they are keyed by "
            "file name) and are left out: c.png") in capfd.readouterr().err
    with pytest.raises(CliError, match=r"the annotations name none of the 2 image"):
        check_matches({"c.png": []}, files, say)


def test_labels_says_which_annotations_name_no_image(tmp_path, capfd):
    from test_labels import _labels

    (tmp_path / "images").mkdir()
    for name in ("square.png", "other.png"):
        Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "images" / name)
    (tmp_path / "ann.json").write_text(json.dumps({"square.png": {"classes": ["green"]},
                                                   "elsewhere.png": {"classes": ["red"]}}))
    summary = _labels(tmp_path, "out", method="cam", annotations=tmp_path / "ann.json",
                      message=say)  # printed as the CLI prints them
    assert summary["images"] == 1  # other.png is named in no annotation: skipped, as before
    assert ("camlens: 1 of the 2 entries in the annotations name no image (they are keyed by "
            "file name) and are left out: elsewhere.png") in capfd.readouterr().err
