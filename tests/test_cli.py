"""The ``camlens`` command, run in a subprocess on the sample photos."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import camlens
from camlens.runner._files import output_names as _output_names


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # passive OpenMP waits: two threads spinning for each other on a busy 2-core machine
    # can run 10-90x slower
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "camlens", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env=env)


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
    by_file = {Path(i["file"]).stem: i for i in _images(out)}
    cat, coffee = by_file["chelsea"], by_file["coffee"]
    assert 281 <= cat["predictions"][0]["class"] <= 285
    assert coffee["predictions"][0]["name"] in ("espresso", "cup")
    assert summary["layer"] == ["_swish"] and summary["failed"] == 0
    assert summary["images"] == 2 and not _errors(out)
    for stem in ("chelsea", "sub__coffee"):
        for method in ("gradcam", "gradcam++", "cam"):
            assert (out / f"{stem}_{method}.png").is_file()
            assert np.load(out / f"{stem}_{method}.npy").shape == (224, 224)
        grid = Image.open(out / f"{stem}_grid.png")
        assert grid.width > 3 * grid.height  # the image and three panels side by side
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))


def test_gradcam_peak_lies_on_the_cat(explained):
    _, out = explained
    cat = next(i for i in _images(out) if i["file"].endswith("chelsea.jpg"))
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
    assert [Path(i["file"]).name for i in _images(out)] == ["good.png"]
    assert len(_errors(out)) == 5 and summary["failed"] == 5 and summary["images"] == 1
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
    assert _images(tmp_path / "a")[0]["targets"][0]["class"] == 285
    res = run("explain", str(photos / "chelsea.jpg"), "--target", "top3", "--out",
              str(tmp_path / "b"), "--colormap", "viridis")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "b" / "chelsea_gradcam.npy").shape == (3, 224, 224)
    # one grid with a row per class, not one grid per class
    assert not list((tmp_path / "b").glob("chelsea_grid_top*.png"))
    single = Image.open(tmp_path / "a" / "chelsea_grid.png")
    rows = Image.open(tmp_path / "b" / "chelsea_grid.png")
    assert rows.width == single.width and rows.height > 3 * 256  # three rows of panels


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


def test_outputs_never_leave_the_folder(tmp_path):
    from camlens.cli._args import CliError
    from camlens.runner._files import inside

    out = tmp_path / "out"
    out.mkdir()
    assert inside(out, "a_gradcam.png") == out.resolve() / "a_gradcam.png"
    assert inside(out, "gradcam/a.png") == out.resolve() / "gradcam" / "a.png"
    (tmp_path / "secret.txt").write_text("keep")
    (out / "b_gradcam.png").symlink_to(tmp_path / "secret.txt")
    for name in ("b_gradcam.png", "../a.png", "/etc/passwd"):
        with pytest.raises(CliError, match="outside the output folder"):
            inside(out, name)


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


# ---------------------------------------------------------------- issue 10: trust
def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _images(out: Path) -> list[dict]:
    """The index's records of the images explained (the failed ones left out)."""
    return [r for r in camlens.read_index(out) if "error" not in r]


def _errors(out: Path) -> list[dict]:
    return [r for r in camlens.read_index(out) if "error" in r]


def test_methods_that_cannot_apply_are_skipped_and_the_others_written(photos, tmp_path):
    # A class-agnostic method has no counterfactual: with --counterfactual it refuses.
    # Named explicitly, each is reported, the others' outputs and summary.json are still
    # written, and the exit code says that not everything asked for was done. (This test
    # used the guided methods on EfficientNet-Lite0's ReLU6 until they learned ReLU6.)
    cat = str(photos / "chelsea.jpg")
    for methods in ("eigencam", "gradcam,eigencam", "kpcacam,layercam"):
        out = tmp_path / methods.replace(",", "_")
        res = run("explain", cat, "--method", methods, "--counterfactual", "--out", str(out))
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr
        refused = [m for m in methods.split(",") if m in ("eigencam", "kpcacam")]
        summary = _summary(out)
        assert sorted(summary["method_errors"]) == refused
        assert "class-agnostic, so counterfactual=True does not apply" in res.stderr
        assert f"method {refused[0]} failed" in res.stderr
        others = [m for m in methods.split(",") if m not in refused]
        assert summary["methods"] == others
        for m in others:
            assert (out / f"chelsea_{m}.png").is_file()
        for m in refused:
            assert not (out / f"chelsea_{m}.png").exists()
        assert (out / "chelsea_grid.png").is_file() == bool(others)


def test_method_all_skips_what_cannot_apply_and_writes_the_rest(photos, tmp_path):
    # The main job: `all` on the bundled model. No heavy method; every method applies
    # (the guided ones through the model's ReLU6, which they once refused) and is written,
    # exit code 0, and the cost of the methods with extra forwards (Score-CAM,
    # Ablation-CAM) is shown before it is paid.
    out = tmp_path / "all"
    res = run("explain", str(photos / "chelsea.jpg"), "--method", "all", "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = _summary(out)
    assert summary["skipped_methods"] == {}
    assert {"guided-backprop", "guided-gradcam"} <= set(summary["methods"])
    heavy = {n for n in camlens.available_methods() if camlens._registry.method_class(n).heavy}
    assert heavy == {"sscam", "iscam", "rise"}
    done = set(summary["methods"])
    assert done == set(camlens.available_methods()) - heavy - set(summary["skipped_methods"])
    for m in done:
        assert (out / f"chelsea_{m}.png").is_file() and (out / f"chelsea_{m}.npy").is_file()
    assert _images(out)[0]["grids"] == ["chelsea_grid.png"]
    plan = res.stderr.index("forwards per image")
    assert "scorecam" in res.stderr[:plan + 200] and "ablationcam" in res.stderr
    assert "skipped method" not in res.stderr


def test_every_registered_method_runs_or_is_reported(photos, tmp_path):
    # `everything` = all + heavy, with --counterfactual, at an early layer (16 channels)
    # and with cheap options so that every method runs in seconds: each one either writes
    # its map or is skipped with the reason it cannot apply.
    out = tmp_path / "every"
    res = run("explain", str(photos / "chelsea.jpg"), "--method", "everything",
              "--counterfactual", "--layer", "_blocks.0", "--out", str(out),
              "--option", "num_samples=1", "--option", "rise.n_masks=64",
              "--option", "rise.grid=4")
    assert res.returncode == 0, res.stderr
    summary = _summary(out)
    skipped = summary["skipped_methods"]
    agnostic = {"eigencam", "fem", "randomcam", "kpcacam"}  # same map for every class
    # cam: this early layer does not feed the GAP + linear head
    assert set(skipped) == {"fullgrad", "cam"} | agnostic
    assert "global average pooling" in skipped["cam"]
    assert "class-agnostic, so counterfactual=True does not apply" in skipped["eigencam"]
    assert "absolute values" in skipped["fullgrad"]
    assert set(summary["methods"]) == set(camlens.available_methods()) - set(skipped)
    for m in summary["methods"]:
        assert np.load(out / f"chelsea_{m}.npy").shape == (224, 224)
        assert (out / f"chelsea_{m}.png").is_file()


def test_bad_method_option_is_a_usage_error(photos, tmp_path):
    res = run("explain", str(photos / "chelsea.jpg"), "--method", "sscam", "--option",
              "num_samples=0", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "num_samples" in res.stderr and "Traceback" not in res.stderr
    res = run("explain", str(photos / "chelsea.jpg"), "--option", "nonsense=1", "--out",
              str(tmp_path / "o"))
    assert res.returncode == 2 and "none of the chosen methods" in res.stderr


def test_an_empty_map_has_no_peak_and_no_box(photos, tmp_path):
    # Nothing in the photo argues against the cat class at the last layer: Grad-CAM's
    # counterfactual map is all zero, which must not get a peak or a box.
    out = tmp_path / "empty"
    res = run("explain", str(photos / "chelsea.jpg"), "--target", "tiger cat",
              "--counterfactual", "--out", str(out))
    assert res.returncode == 0, res.stderr
    record = _images(out)[0]["maps"]["gradcam"]["targets"][0]
    assert np.load(out / "chelsea_gradcam.npy").max() == 0
    assert record["peak"] is None and record["box"] is None and record["empty"] is True
    assert "gradcam map of class 'tiger cat' is empty" in res.stderr


def test_out_naming_a_file_is_a_clear_error(photos, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    res = run("explain", str(photos / "chelsea.jpg"), "--out", str(target))
    assert res.returncode == 2 and "is an existing file" in res.stderr
    assert "Traceback" not in res.stderr and target.read_text() == "keep me"


def test_names_without_suffix_unicode_small_and_huge_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "my_café ☕.jpg")
    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, format="JPEG")
    (folder / "coffee_no_suffix").write_bytes(buf.getvalue())  # a JPEG without extension
    (folder / "readme.txt").write_text("not a picture")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "tiny.png")
    # over Pillow's own bomb warning threshold (89.5 megapixels), 1 bit per pixel
    Image.new("1", (9500, 9500)).save(folder / "bomb.png")
    out = tmp_path / "out"
    res = run("explain", str(folder), "--out", str(out))
    assert res.returncode == 1  # the bomb is refused, the others processed
    assert "DecompressionBombWarning" not in res.stderr
    assert "bomb.png: 9500x9500 = 90,250,000 pixels is over the limit" in res.stderr
    assert "left out 1 file(s) that are not images (readme.txt)" in res.stderr
    names = {Path(i["file"]).name for i in _images(out)}
    assert names == {"my_café ☕.jpg", "coffee_no_suffix", "tiny.png"}
    assert (out / "my_café_gradcam.png").is_file()
    assert (out / "coffee_no_suffix_gradcam.png").is_file()
    tiny = next(i for i in _images(out) if i["file"].endswith("tiny.png"))
    assert "8x8 is far smaller than the model's 224x224 input: it was upscaled 32x" in \
        tiny["notes"][0]
    assert "tiny.png: 8x8 is far smaller" in res.stderr
    assert "my_café ☕.jpg: " not in res.stderr  # 451 x 300: no note


def test_methods_list_whole_descriptions_and_groups():
    res = run("methods")
    line = next(x for x in res.stdout.splitlines() if x.startswith("guided-backprop"))
    assert line.rstrip().endswith("where their input was positive.")
    assert "sscam [heavy]" in res.stdout and "--method all" in res.stdout


def test_evaluate_refuses_annotations_that_match_nothing_or_inverted_boxes(photos, tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"other.jpg": [[10, 10, 50, 50]]}))
    res = run("evaluate", str(photos), "--annotations", str(ann), "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and "name none of the 2 image(s)" in res.stderr
    ann.write_text(json.dumps({"chelsea.jpg": [[420, 0, 60, 300]]}))
    res = run("evaluate", str(photos), "--annotations", str(ann), "--out", str(tmp_path / "b"))
    assert res.returncode == 2 and "inverted" in res.stderr and "Traceback" not in res.stderr


def test_evaluate_default_is_quick_and_reports_per_image(photos, tmp_path):
    out = tmp_path / "quick"
    res = run("evaluate", str(photos / "chelsea.jpg"), "--method", "gradcam,layercam",
              "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["metrics"] == ["deletion", "insertion", "average_drop", "increase"]
    assert summary["step"] == 2509  # 5 % of 224 x 224, rounded up
    assert "plan: 1 image(s) x 2 method(s) x 4 metric(s)" in res.stderr
    assert summary["images"] == 1 and summary["index"] == "index.jsonl"
    (image,) = camlens.read_index(out)  # the per-image scores, one line per image
    assert image["file"].endswith("chelsea.jpg") and 281 <= image["class"] <= 285
    for m in ("gradcam", "layercam"):
        row = next(r for r in summary["results"] if r["method"] == m)
        assert image["results"][m]["deletion"] == pytest.approx(row["deletion"])
    assert "road_morf" not in res.stdout
    # the same command again resumes: nothing is scored twice, the tables are the same
    again = run("evaluate", str(photos / "chelsea.jpg"), "--method", "gradcam,layercam",
                "--out", str(out))
    assert again.returncode == 0 and "1 image(s) already done, 0 to go" in again.stderr
    assert json.loads((out / "evaluation.json").read_text())["results"] == summary["results"]
    other = run("evaluate", str(photos / "chelsea.jpg"), "--method", "gradcam", "--out",
                str(out))
    assert other.returncode == 2 and "other options" in other.stderr


def test_evaluate_box_metrics_that_score_nothing_fail(photos, tmp_path):
    # a box outside the model's centre crop: the box metrics cannot be computed
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"chelsea.jpg": [[0, 0, 20, 20]]}))
    out = tmp_path / "none"
    res = run("evaluate", str(photos / "chelsea.jpg"), "--method", "gradcam", "--metric",
              "pointing_game", "--annotations", str(ann), "--out", str(out))
    assert res.returncode == 1
    assert "pointing_game was computed for no image" in res.stderr
    assert json.loads((out / "evaluation.json").read_text())["unscored_metrics"] == [
        "pointing_game"]
