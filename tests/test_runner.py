"""The dataset runner: streaming index, resumption after kill -9, Ctrl-C and a full disk,
refused option changes, --restart, --save choices, shards, the Python API."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import camlens

N = 12


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "camlens", *args]


ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """12 small photos (crops of the sample photos), one unreadable file among them."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    sources = [data.chelsea(), data.coffee(), data.astronaut()]
    for i in range(N):
        src = sources[i % 3]
        y, x = rng.integers(0, 100, 2)
        crop = src[y:y + 160, x:x + 200]
        Image.fromarray(crop).save(folder / f"p{i:02d}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    """The same job run without interruption."""
    out = tmp_path_factory.mktemp("reference")
    done = subprocess.run(_cli("explain", str(photos), "--out", str(out), "--batch-size", "2",
                               "--method", "gradcam,layercam"),
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # the broken file
    return out


def _records(out: Path) -> list[dict]:
    return list(camlens.read_index(out))


def _check_complete(out: Path, reference: Path) -> None:
    """Each image exactly once in the index, every file it names whole, the maps equal to
    an uninterrupted run's, nothing half-written left."""
    records = _records(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == N + 1, sorted(keys)
    assert sum("error" in r for r in records) == 1
    ref = {r["key"]: r for r in _records(reference)}
    for r in records:
        if "error" in r:
            continue
        assert r["stem"] == ref[r["key"]]["stem"]
        for method, entry in r["maps"].items():
            got = np.load(out / entry["npy"])
            want = np.load(reference / ref[r["key"]]["maps"][method]["npy"])
            # batches are made of other images after a resume: float32 kernels differ
            # by batch size (float32 rounding, far below 1e-5 on the [0, 1] maps)
            assert float(np.abs(got - want).max()) < 1e-5, (r["key"], method)
            for t in entry["targets"]:
                Image.open(out / t["overlay"]).load()  # whole PNGs
        Image.open(out / r["grids"][0]).load()
    assert not list(out.glob(".*.part"))


def test_kill_9_at_any_moment_then_resume(photos, reference, tmp_path):
    """kill -9 at three moments of a run; each rerun of the same command continues; in the
    end each image has one record and complete outputs equal to an uninterrupted run's."""
    out = tmp_path / "out"
    args = _cli("explain", str(photos), "--out", str(out), "--batch-size", "2",
                "--method", "gradcam,layercam")
    for wanted in (1, 5, 9):
        proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            index = out / "index.jsonl"
            if index.exists() and index.read_bytes().count(b"\n") >= wanted:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert len({r["key"] for r in _records(out)}) == len(_records(out))
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # the broken file, reported again
    assert "resuming" in done.stderr
    _check_complete(out, reference)
    again = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    # the unreadable file is tried again (it may have been fixed); failing again for the
    # same reason, it adds no line
    assert (f"{N} image(s) already done, 1 to go (1 of them failed earlier as missing or "
            "unreadable: tried again)") in again.stderr
    assert len(_records(out)) == N + 1 == (out / "index.jsonl").read_bytes().count(b"\n")


def test_torn_index_line_is_cut_and_the_run_continues(photos, reference, tmp_path):
    out = tmp_path / "out"
    args = ["--out", str(out), "--batch-size", "4", "--method", "gradcam,layercam"]
    camlens.run([str(photos / f"p{i:02d}.jpg") for i in range(4)], out,
                method="gradcam,layercam", batch_size=4)
    with open(out / "index.jsonl", "ab") as f:
        f.write(b'{"key": "p04.jpg", "file": "p0')  # a crash in the middle of a line
    done = subprocess.run(_cli("explain", str(photos), *args), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    records = _records(out)
    assert len(records) == N + 1 and len({r["key"] for r in records}) == N + 1
    # the API's keys are the paths given; the CLI's the paths below the folder: the first
    # four were done again under the folder's names, with the same stems and maps
    ref = {r["stem"]: r for r in _records(reference) if "stem" in r}
    for r in records:
        if "stem" in r:
            for method, entry in r["maps"].items():
                want = np.load(reference / ref[r["stem"]]["maps"][method]["npy"])
                assert float(np.abs(np.load(out / entry["npy"]) - want).max()) < 1e-5


def test_changed_options_are_refused_and_restart_starts_fresh(photos, tmp_path):
    out = tmp_path / "out"
    one = [str(photos / "p00.jpg")]
    first = camlens.run(one, out, method="gradcam")
    assert first["images"] == 1 and first["exit_code"] == 0
    for change in ({"method": "layercam"}, {"layer": "_blocks.15"}, {"target": "281"},
                   {"counterfactual": True}, {"save": "npy"}, {"alpha": 0.7}):
        with pytest.raises(ValueError, match="holds a run with other options"):
            camlens.run(one, out, **change)
    assert (out / "p00_gradcam.png").is_file()  # untouched
    again = camlens.run(one, out, method="layercam", restart=True)
    assert again["images"] == 1
    assert not (out / "p00_gradcam.png").exists() and (out / "p00_layercam.png").is_file()
    assert [r["key"] for r in _records(out)] == one


def test_save_choices_and_shards(photos, tmp_path):
    files = [str(photos / f"p{i:02d}.jpg") for i in range(3)]
    npy = camlens.run(files, tmp_path / "npy", method="gradcam,layercam", save="npy")
    assert npy["images"] == 3
    assert not list((tmp_path / "npy").glob("*.png"))  # only the raw maps
    sharded = tmp_path / "shards"
    camlens.run(files, sharded, method="gradcam,layercam", save="shards,mask")
    assert not list(sharded.glob("*.npy")) and list((sharded / "maps").glob("shard-*.bin"))
    got = {(f, m): a for f, m, a in camlens.read_maps(sharded)}
    want = {(f, m): a for f, m, a in camlens.read_maps(tmp_path / "npy")}
    assert got.keys() == want.keys() and len(got) == 6
    for key in got:
        assert np.array_equal(got[key], want[key])
    record = _records(sharded)[0]
    mask = np.asarray(Image.open(sharded / record["maps"]["gradcam"]["targets"][0]["mask"]))
    assert mask.shape == (224, 224, 3) and set(np.unique(mask)) <= {0, 255}
    with pytest.raises(ValueError, match="npy.*or shards"):
        camlens.run(files, tmp_path / "x", save="npy,shards")
    with pytest.raises(ValueError, match="closest"):
        camlens.run(files, tmp_path / "x", save="overlays")


def test_a_resumed_sharded_run_opens_a_new_shard(photos, tmp_path):
    out = tmp_path / "out"
    camlens.run([str(photos / "p00.jpg")], out, save="shards")
    with open(out / "maps" / "shard-00000.bin", "ab") as f:
        f.write(b"bytes of a killed run that no index line names")
    camlens.run([str(photos / "p00.jpg"), str(photos / "p01.jpg")], out, save="shards")
    shards = sorted(p.name for p in (out / "maps").glob("*.bin"))
    assert shards == ["shard-00000.bin", "shard-00001.bin"]
    assert len(list(camlens.read_maps(out))) == 2


def test_a_full_disk_stops_with_a_resumable_state(photos, tmp_path, monkeypatch):
    import camlens.viz
    import camlens.viz._image as image_io

    real = image_io.atomic_write
    calls = {"n": 0}

    def failing(path, payload):
        calls["n"] += 1
        if calls["n"] > 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, payload)

    monkeypatch.setattr(image_io, "atomic_write", failing)
    monkeypatch.setattr(camlens.viz, "atomic_write", failing)
    out = tmp_path / "out"
    files = [str(photos / f"p{i:02d}.jpg") for i in range(6)]
    with pytest.raises(ValueError, match="No space left on device.*run the same command"):
        camlens.run(files, out, method="gradcam", batch_size=2)
    partial = _records(out)
    assert 0 < len(partial) < 6 and not any("error" in r for r in partial)
    monkeypatch.setattr(image_io, "atomic_write", real)
    monkeypatch.setattr(camlens.viz, "atomic_write", real)
    summary = camlens.run(files, out, method="gradcam", batch_size=2)
    assert summary["images"] == 6 and len(_records(out)) == 6


def test_ctrl_c_stops_cleanly_and_resumes(photos, reference, tmp_path):
    out = tmp_path / "out"
    args = _cli("explain", str(photos), "--out", str(out), "--batch-size", "2",
                "--method", "gradcam,layercam")
    # a shell's background job inherits SIGINT ignored (and Python then keeps it ignored):
    # give the child the default disposition, as a terminal's foreground job has
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        index = out / "index.jsonl"
        if index.exists() and index.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    _check_complete(out, reference)


def test_two_runs_never_write_one_folder(photos, tmp_path):
    from camlens.runner._index import RunFolderError, RunIndex

    with RunIndex(tmp_path, {"a": 1}):
        with pytest.raises(RunFolderError, match="another camlens run"):
            RunIndex(tmp_path, {"a": 1})
    with RunIndex(tmp_path, {"a": 1}) as index:  # released when the first one closed
        assert index.done == set()


def test_summary_is_derived_from_the_index(reference):
    summary = json.loads((reference / "summary.json").read_text())
    records = _records(reference)
    assert summary["index"] == "index.jsonl"
    assert summary["images"] == sum("error" not in r for r in records) == N
    assert summary["failed"] == 1


class _Tiny(torch.nn.Module):
    """conv -> ReLU -> GAP -> linear, 3 classes: small enough to explain in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_run_takes_a_model_object_and_leaves_it_as_it_was(photos, tmp_path):
    from camlens.models import preprocessing

    model = _Tiny().train()
    model.conv.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pre = preprocessing("unit", crop=32, resize=32)
    out = tmp_path / "out"
    summary = camlens.run(photos, out, model=model, preprocess=pre, labels=["a", "b", "c"],
                          method="cam,gradcam", save="npy")
    assert summary["images"] == N and summary["failed"] == 1
    assert model.training and not model.conv.weight.requires_grad
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.conv._forward_hooks

    # the maps are those of camlens.explain on the same preprocessed image, in eval mode
    record = next(r for r in _records(out) if r.get("stem") == "p00")
    x = pre(photos / "p00.jpg")[None]
    expected = camlens.explain(model, x, "gradcam", layer="relu")
    saved = np.load(out / record["maps"]["gradcam"]["npy"])
    np.testing.assert_allclose(saved, expected[0].numpy(), atol=1e-6)
    assert record["targets"][0]["name"] in ("a", "b", "c")

    # resumed with the same weights; refused once they change
    again = camlens.run(photos, out, model=model, preprocess=pre, labels=["a", "b", "c"],
                        method="cam,gradcam", save="npy")
    assert again["images"] == N
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    with pytest.raises(ValueError, match="other options.*model"):
        camlens.run(photos, out, model=model, preprocess=pre, labels=["a", "b", "c"],
                    method="cam,gradcam", save="npy")
    with pytest.raises(ValueError, match="got 2 labels for a model with 3 outputs"):
        camlens.run(photos, tmp_path / "o2", model=model, preprocess=pre, labels=["a", "b"])
    with pytest.raises(ValueError, match="labels= is for a model object"):
        camlens.run(photos, tmp_path / "o3", labels=["a"])
    with pytest.raises(ValueError, match="engine='ray' loads the model inside each actor"):
        camlens.run(photos, tmp_path / "o5", model=model, preprocess=pre, engine="ray")
    with pytest.raises(ValueError, match="move it there yourself"):
        camlens.run(photos, tmp_path / "o4", model=model, preprocess=pre, device="meta")


def test_notes_about_many_images_are_counted_not_repeated(tmp_path, capsys):
    from camlens.models import preprocessing

    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(folder / f"s{i}.png")
    notes: list[str] = []  # the library's notes go to the caller's sink, not to stderr
    camlens.run(folder, tmp_path / "out", model=_Tiny(), preprocess=preprocessing("unit", 32),
                save="npy", message=notes.append)
    assert capsys.readouterr().err == ""
    err = "\n".join(notes)
    assert err.count("is far smaller than the model's 32x32 input") == 5
    assert "further notes of this kind (upscaled small images) are not shown" in err
    assert "8 image(s) in all: upscaled small images" in err
    records = list(camlens.read_index(tmp_path / "out"))
    assert len(records) == 8 and all(len(r["notes"]) == 1 for r in records)
