"""What a folder walk takes (issue 20): never camlens's own outputs (this run's folder or an
earlier run's, audit's or labels' folder), hidden files named in the "left out" note, and
files that were missing or unreadable tried again by the next run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camlens
from camlens.cli import main
from camlens.cli._args import say
from camlens.models import preprocessing
from camlens.runner._index import INDEX

pytestmark = pytest.mark.filterwarnings("ignore:loading .* because trust=True:UserWarning")

def _run(*args, **kw):
    """camlens.run with its notes printed on stderr as the command line prints them (the
    library's default sink is the ``camlens`` logger)."""
    return camlens.run(*args, message=say, **kw)



def _model() -> nn.Module:
    """1x1 conv -> ReLU -> GAP -> linear: explained in milliseconds (layer "1")."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 2)).eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(_model(), path)
    return path


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _explain(model_file: Path, *args: str) -> int:
    return main(["explain", *args, "--model", str(model_file), "--trust-model",
                 "--preprocess", "unit", "--layer", "1", "--progress", "never"])


def _keys(out: Path) -> list[str]:
    return [r["key"] for r in camlens.read_index(out)]


def test_an_output_folder_inside_the_input_folder_is_never_explained(
        model_file, tmp_path, monkeypatch, capsys):
    """`camlens explain . --out out` twice, then `--out cams` in the same folder: the same
    three photos each time, never camlens's overlays (`out__a_gradcam.png`, ...)."""
    for i, name in enumerate(("a.png", "b.png", "sub/c.png")):
        _image(tmp_path / name, i)
    monkeypatch.chdir(tmp_path)
    photos = ["a.png", "b.png", "sub/c.png"]
    for _ in range(2):
        assert _explain(model_file, ".", "--out", "out", "--save", "overlay,npy") == 0
        assert sorted(_keys(Path("out"))) == photos
    err = capsys.readouterr().err
    assert "resuming" in err and "3 image(s) already done, 0 to go" in err
    assert ".: left out 1 folder(s) of camlens's own outputs (out/: this run's output " \
           "folder): a run never explains them" in err
    assert not [p for p in Path("out").iterdir() if p.name.startswith("out__")]
    assert sorted(p.name for p in Path("out").glob("*.png")) == [
        "a_gradcam.png", "b_gradcam.png", "sub__c_gradcam.png"]
    # another output folder inside: the first run's folder is an earlier run, left out too
    assert _explain(model_file, ".", "--out", "cams", "--save", "overlay,npy") == 0
    assert sorted(_keys(Path("cams"))) == photos
    assert "(cams/: this run's output folder; out/: the folder of an earlier camlens run " \
           "(it holds run.json and index.jsonl))" in capsys.readouterr().err
    # the folder itself as input: refused with the reason, nothing explained
    assert _explain(model_file, "out", "--out", "out2", "--save", "npy") == 1
    assert "skipped out: the folder of an earlier camlens run (it holds run.json and " \
           "index.jsonl): camlens's own outputs, not images to explain" in \
           capsys.readouterr().err
    assert [r["error"].split(":")[0] for r in camlens.read_index("out2")] == [
        "the folder of an earlier camlens run (it holds run.json and index.jsonl)"]


def test_old_run_audit_and_labels_folders_are_not_walked(tmp_path, capsys):
    """Folders that camlens wrote with another --out are known by their files."""
    photos = tmp_path / "photos"
    for i, name in enumerate(("a.png", "b.png", "old/x.png", "notes/d.png")):
        _image(photos / name, i)
    model, pre = _model(), preprocessing("unit", crop=32, resize=32)
    # a real earlier run inside the photos (it explained old/x.png only), then an audit's
    # and a labels folder, and a user's own labels.json (not camlens's: walked)
    _run([photos / "old" / "x.png"], photos / "old", model=model, preprocess=pre,
                save="overlay")
    assert len(list((photos / "old").glob("*.png"))) == 2  # x.png and its overlay
    (photos / "aud" / "thumbs").mkdir(parents=True)
    _image(photos / "aud" / "thumbs" / "t.png", 7)
    (photos / "aud" / "audit.json").write_text("{}")
    (photos / "aud" / "images.jsonl").write_text("")
    _image(photos / "lab" / "gradcam" / "a.png", 8)
    (photos / "lab" / "labels.json").write_text(json.dumps({"camlens": "0", "images": 1},
                                                           indent=1))
    (photos / "notes" / "labels.json").write_text(json.dumps({"d.png": "cat"}))
    capsys.readouterr()
    summary = _run(photos, tmp_path / "out", model=model, preprocess=pre, save="npy")
    assert summary["images"] == 3 and summary["failed"] == 0
    keys = sorted(Path(k).relative_to(photos).as_posix() for k in _keys(tmp_path / "out"))
    assert keys == ["a.png", "b.png", "notes/d.png"]
    err = capsys.readouterr().err
    assert (f"{photos}: left out 3 folder(s) of camlens's own outputs (aud/: a camlens "
            "audit's folder (it holds audit.json and images.jsonl); lab/: a camlens labels "
            "folder (it holds camlens's labels.json); old/: the folder of an earlier camlens "
            "run (it holds run.json and index.jsonl)): a run never explains them") in err
    assert "left out 1 file(s) that are not images (notes/labels.json)" in err


def test_hidden_files_are_named_in_the_left_out_note(tmp_path, capsys):
    photos = tmp_path / "photos"
    for i, name in enumerate(("a.png", ".hidden.jpg", ".cache/b.png", "sub/.c.png")):
        _image(photos / name, i)
    (photos / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden and not an image: no word
    summary = _run(photos, tmp_path / "out", model=_model(),
                          preprocess=preprocessing("unit", crop=32, resize=32),
                          save="npy")
    assert summary["images"] == 1 and _keys(tmp_path / "out") == [str(photos / "a.png")]
    err = capsys.readouterr().err
    assert (f"{photos}: left out 3 hidden file(s) and folder(s) (.cache/, .hidden.jpg, "
            "sub/.c.png); name a hidden file on the command line to explain it") in err
    assert ".DS_Store" not in err
    # named on the command line, a hidden file is explained
    again = _run([photos / ".hidden.jpg"], tmp_path / "out2", model=_model(),
                        preprocess=preprocessing("unit", crop=32, resize=32),
                        save="npy")
    assert again["images"] == 1


def test_a_missing_file_is_explained_once_it_exists(model_file, tmp_path, monkeypatch,
                                                    capsys):
    """The issue's commands: `camlens explain nonexistent.jpg --out o1`, the file created,
    the same command again."""
    monkeypatch.chdir(tmp_path)
    assert _explain(model_file, "nonexistent.jpg", "--out", "o1", "--save", "npy") == 1
    assert "skipped nonexistent.jpg: no such file or directory" in capsys.readouterr().err
    for _ in range(2):  # failing again for the same reason adds no line to the index
        assert _explain(model_file, "nonexistent.jpg", "--out", "o1", "--save", "npy") == 1
        assert Path("o1", INDEX).read_text().count("\n") == 1
    assert "resuming" not in capsys.readouterr().err  # nothing was done, nothing resumed
    _image(Path("nonexistent.jpg"), 0)
    assert _explain(model_file, "nonexistent.jpg", "--out", "o1", "--save", "npy") == 0
    err = capsys.readouterr().err
    assert ("resuming o1: 0 image(s) already done, 1 to go (1 of them failed earlier as "
            "missing or unreadable: tried again)") in err
    assert err.endswith("camlens: explained 1 image(s) into o1\n")  # and none failed
    (record,) = camlens.read_index("o1")  # the failure is replaced by the explained image
    assert record["key"] == "nonexistent.jpg" and "error" not in record
    assert np.load(Path("o1") / record["maps"]["gradcam"]["npy"]).shape == (224, 224)
    summary = json.loads(Path("o1", "summary.json").read_text())
    assert summary["images"] == 1 and summary["failed"] == 0
    # done now: the next run has nothing to do
    assert _explain(model_file, "nonexistent.jpg", "--out", "o1", "--save", "npy") == 0
    assert "resuming o1: 1 image(s) already done, 0 to go" in capsys.readouterr().err


def test_unreadable_files_are_retried_and_model_failures_stay_failed(tmp_path, capsys):
    photos = tmp_path / "photos"
    for i in range(3):
        _image(photos / f"p{i}.png", i)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    pre = preprocessing("unit", crop=32, resize=32)
    out = tmp_path / "out"
    first = _run(photos, out, model=_model(), preprocess=pre, save="npy")
    assert first["images"] == 3 and first["failed"] == 1 and first["exit_code"] == 1
    (failure,) = [r for r in camlens.read_index(out) if "error" in r]
    assert failure["retry"] is True and failure["key"].endswith("broken.png")
    _image(photos / "broken.png", 9)  # the file is replaced by a good one
    capsys.readouterr()
    second = _run(photos, out, model=_model(), preprocess=pre, save="npy")
    assert second["images"] == 4 and second["failed"] == 0 and second["exit_code"] == 0
    assert (f"resuming {out}: 3 image(s) already done, 1 to go (1 of them failed earlier as "
            "missing or unreadable: tried again)") in capsys.readouterr().err
    records = list(camlens.read_index(out))
    assert len(records) == 4 and not any("error" in r for r in records)
    assert len({r["key"] for r in records}) == 4

    # a failure that is not about reading the file (the pass failed in the model: a line
    # written here as the runner writes it) is not tried again
    kept = tmp_path / "kept"
    _run(photos / "p0.png", kept, model=_model(), preprocess=pre, save="npy")
    key = str(photos / "p0.png")
    (kept / INDEX).write_text(json.dumps({"key": key, "file": key, "error": "NaN scores"})
                              + "\n")
    capsys.readouterr()
    again = _run(photos / "p0.png", kept, model=_model(), preprocess=pre, save="npy")
    assert again["images"] == 0 and again["failed"] == 1 and again["exit_code"] == 1
    assert (f"resuming {kept}: 0 image(s) already done, 1 failed earlier, not tried again "
            f"(see {INDEX}; --restart redoes the run), 0 to go") in capsys.readouterr().err
    assert [r["error"] for r in camlens.read_index(kept)] == ["NaN scores"]


def test_read_index_keeps_the_last_record_of_a_retried_file(tmp_path):
    lines = [{"key": "a", "file": "a", "error": "no such file", "retry": True},
             {"key": "b", "file": "b", "maps": {}},
             {"key": "c", "file": "c", "error": "NaN scores"},
             {"key": "a", "file": "a", "maps": {}}]
    (tmp_path / INDEX).write_text("".join(
        json.dumps(r, separators=(",", ":")) + "\n" for r in lines))
    assert list(camlens.read_index(tmp_path)) == lines[1:]
