"""The ``camlens`` command, run in a subprocess on the sample photos."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import camlens
from camlens.cli import _output_names


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camlens", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    (folder / "sub").mkdir()
    Image.fromarray(data.coffee()).save(folder / "sub" / "coffee.png")
    return folder


@pytest.fixture(scope="module")
def explained(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    res = run("explain", str(photos), "--method", "gradcam,gradcam++,cam", "--out", str(out))
    return res, out


def test_explain_outputs_and_predictions(explained):
    res, out = explained
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    by_file = {Path(i["file"]).stem: i for i in summary["images"]}
    cat, coffee = by_file["chelsea"], by_file["coffee"]
    assert 281 <= cat["predictions"][0]["class"] <= 285
    assert coffee["predictions"][0]["name"] in ("espresso", "cup")
    assert summary["layer"] == ["_swish"] and summary["errors"] == []
    for stem in ("chelsea", "sub__coffee"):
        for method in ("gradcam", "gradcam++", "cam"):
            assert (out / f"{stem}_{method}.png").is_file()
            assert np.load(out / f"{stem}_{method}.npy").shape == (224, 224)
        grid = Image.open(out / f"{stem}_grid.png")
        assert grid.width > 3 * grid.height  # the image and three panels side by side
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))


def test_gradcam_peak_lies_on_the_cat(explained):
    _, out = explained
    summary = json.loads((out / "summary.json").read_text())
    cat = next(i for i in summary["images"] if i["file"].endswith("chelsea.jpg"))
    x, y = cat["maps"]["gradcam"]["targets"][0]["peak"]
    # the cat's head, drawn by hand on the 451 x 300 photo
    assert 60 <= x <= 400 and 0 <= y <= 300
    x0, y0, x1, y1 = cat["maps"]["gradcam"]["targets"][0]["box"]
    assert 0 <= x0 < x1 <= 451 and 0 <= y0 < y1 <= 300


def test_bad_inputs_are_reported_and_the_rest_processed(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "good.png")
    (folder / "notes.png").write_text("this is not an image")
    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG")  # 451 x 300: under the limit
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:5000])
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(folder / "huge.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    res = run("explain", str(folder), str(empty), str(tmp_path / "missing.jpg"),
              "--out", str(out), "--max-pixels", "200000", "--batch-size", "2")
    assert res.returncode == 1
    err = res.stderr
    assert "notes.png: not an image" in err
    assert "cut.jpg: truncated or corrupt" in err
    assert "huge.png: 600x600 = 360,000 pixels is over the limit" in err
    assert "no image files in this folder" in err
    assert "missing.jpg: no such file" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(i["file"]).name for i in summary["images"]] == ["good.png"]
    assert len(summary["errors"]) == 5
    assert (out / "good_gradcam.png").is_file() and not (out / "notes_gradcam.png").exists()


def test_unknown_choices_list_the_closest(photos, tmp_path):
    res = run("explain", str(photos), "--method", "gradcamm", "--out", str(tmp_path))
    assert res.returncode == 2 and "'gradcam'" in res.stderr
    res = run("explain", str(photos), "--target", "tabby cat", "--out", str(tmp_path))
    assert res.returncode == 2 and "'tabby'" in res.stderr
    res = run("explain", str(photos), "--layer", "_blocks.99", "--out", str(tmp_path))
    assert res.returncode == 2 and "closest" in res.stderr and "_blocks.9" in res.stderr
    assert not (tmp_path / "summary.json").exists()


def test_target_by_name_top5_and_counterfactual(photos, tmp_path):
    res = run("explain", str(photos / "chelsea.jpg"), "--target", "Egyptian_cat",
              "--counterfactual", "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["images"][0]["targets"][0]["class"] == 285
    res = run("explain", str(photos / "chelsea.jpg"), "--target", "top3", "--out",
              str(tmp_path / "b"), "--colormap", "viridis")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "b" / "chelsea_gradcam.npy").shape == (3, 224, 224)
    assert len(list((tmp_path / "b").glob("chelsea_grid_top*.png"))) == 3


def test_methods_models_and_demo(tmp_path):
    res = run("methods")
    assert res.returncode == 0
    for name in camlens.available_methods():
        assert name in res.stdout
    assert "efficientnet-lite0" in run("models").stdout
    res = run("demo", "--out", str(tmp_path / "demo"), "--method", "gradcam,layercam")
    assert res.returncode == 0, res.stderr
    grids = sorted(p.name for p in (tmp_path / "demo").glob("*_grid.png"))
    assert grids == [f"{n}_grid.png" for n in sorted(["astronaut", "chelsea", "coffee", "rocket"])]
    assert "chelsea_grid.png" in res.stdout


def test_output_names_stay_inside_and_unique():
    files = [(Path("x"), "x", "../../etc/passwd"), (Path("y"), "y", "a/b"), (Path("z"), "z", "a_b"),
             (Path("w"), "w", "a/b"), (Path("v"), "v", ".hidden")]
    names = _output_names(files)
    assert names == ["etc__passwd", "a__b", "a_b", "a__b-2", "hidden"]
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_evaluate_table_csv_json_and_annotations(photos, tmp_path):
    import json as _json

    ann = tmp_path / "ann.json"
    # chelsea.jpg is 451 x 300: the cat's head, drawn by hand; class 282 = tiger cat
    ann.write_text(_json.dumps({"chelsea.jpg": {"boxes": [[60, 0, 400, 300]], "label": 282}}))
    out = tmp_path / "eval"
    res = run("evaluate", str(photos), "--method", "gradcam,eigencam", "--metric",
              "deletion,average_drop,pointing_game,energy_pointing_game,localization_error",
              "--annotations", str(ann), "--out", str(out), "--step", "5018")
    assert res.returncode == 0, res.stderr
    assert "| gradcam |" in res.stdout and "pointing_game (higher better)" in res.stdout
    assert "coffee.png: no annotation" in res.stderr
    summary = _json.loads((out / "evaluation.json").read_text())
    rows = {r["method"]: r for r in summary["results"]}
    assert rows["gradcam"]["pointing_game"] == 100.0  # the peak lies on the cat
    assert 0 <= rows["gradcam"]["deletion"] <= 1
    assert (out / "evaluation.csv").read_text().startswith("method,deletion,average_drop")
    res = run("evaluate", str(photos), "--metric", "pointing_game", "--out", str(out))
    assert res.returncode == 2 and "--annotations" in res.stderr
    res = run("evaluate", str(photos), "--metric", "deletionn", "--out", str(out))
    assert res.returncode == 2 and "'deletion'" in res.stderr
