"""The library stands on its own: ``camlens.run`` needs no command-line code, its errors
reach a Python caller as camlens's own exception classes, and its notes go to the sink
the caller chose (by default the ``camlens`` logger), never to stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch  # noqa: F401  (the Tiny model below is built from source with exec)

import camlens
from camlens.models import preprocessing

Image = pytest.importorskip("PIL.Image")

TINY = '''
class Tiny(torch.nn.Module):
    def __init__(self, kernel=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, kernel, padding=1 if kernel == 3 else 0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
'''
exec(TINY)  # noqa: S102  (the same model in this process and in the subprocess below)
Tiny = locals()["Tiny"]


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images / f"p{i}.png")
    (images / "notes.txt").write_text("not an image")
    return images


def _run(folder, out, **kw):
    kw = {"save": "npy", **kw}
    return camlens.run(folder, out, model=Tiny(), preprocess=preprocessing("unit", 32),
                       labels=["a", "b", "c"], **kw)


def test_run_imports_no_command_line_code(folder, tmp_path):
    code = "import sys, torch, camlens\nfrom camlens.models import preprocessing\n" + TINY + \
        textwrap.dedent(f"""
        result = camlens.run({str(folder)!r}, {str(tmp_path / 'out')!r}, model=Tiny(),
                             preprocess=preprocessing("unit", 32), save="npy")
        print(result.images, result.failed, result.exit_code, result.methods)
        print(sorted(m for m in sys.modules if m.startswith("camlens.cli")))
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["3 0 0 ['gradcam']", "[]"]
    assert done.stderr == ""  # the notes went to the logger, which shows no INFO


def test_the_result_is_built_in_memory_and_reads_as_the_summary(folder, tmp_path):
    import json

    result = _run(folder, tmp_path / "out")
    assert isinstance(result, camlens.RunResult)
    assert (result.images, result.failed, result.exit_code, result.finished) == (3, 0, 0, 3)
    assert result.methods == ["gradcam"] and result.layer == ["conv"]
    assert result.out == tmp_path / "out"
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))
    assert result.summary == on_disk
    assert dict(result) == {**on_disk, "exit_code": 0}
    assert result["images"] == 3 and result["exit_code"] == 0


@pytest.mark.parametrize("change, error, text", [
    ({"target": "zebra"}, camlens.UsageError, "unknown class name 'zebra'"),
    ({"target": "7"}, camlens.UsageError, "--target 7 is out of range"),
    ({"method": "gradcan"}, camlens.UsageError, "unknown method 'gradcan'"),
    ({"save": "overlays"}, camlens.UsageError, "unknown --save item 'overlays'"),
    ({"engine": "spark"}, camlens.UsageError, "engine must be 'local' or 'ray'"),
])
def test_a_bad_setting_reaches_the_caller_as_a_usage_error(folder, tmp_path, change, error,
                                                           text):
    with pytest.raises(error, match=text) as got:
        _run(folder, tmp_path / "out", **change)
    assert type(got.value) is camlens.UsageError
    assert isinstance(got.value, camlens.CamlensError) and isinstance(got.value, ValueError)
    assert not (tmp_path / "out").exists()  # refused before the folder is touched


def test_a_folder_holding_another_run_raises_run_folder_error(folder, tmp_path):
    _run(folder, tmp_path / "out")
    with pytest.raises(camlens.RunFolderError, match="holds a run with other options"):
        _run(folder, tmp_path / "out", method="layercam")
    assert issubclass(camlens.RunFolderError, camlens.UsageError)


def test_a_crop_too_small_for_a_model_object_gets_camlens_message(folder, tmp_path):
    with pytest.raises(camlens.InputTooSmallError, match="too small") as got:
        camlens.run(folder, tmp_path / "out", model=Tiny(kernel=5),
                    preprocess=preprocessing("unit", 3), save="npy")
    assert isinstance(got.value, camlens.CamlensError)
    assert got.value.size == (3, 3) and got.value.smallest == (5, 5)


def test_notes_go_to_the_camlens_logger_not_stderr(folder, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="camlens")
    _run(folder, tmp_path / "out")
    assert capsys.readouterr().err == ""
    said = [r.getMessage() for r in caplog.records if r.module == "_messages"]
    assert said == [
        f"{folder}: left out 1 file(s) that are not images (notes.txt)",
        f"{folder / 'p0.png'}: the gradcam map of class 'c' is empty (all zero: nothing in "
        "the image argues for it at this layer); no peak or box",
        f"explained 3 image(s) into {tmp_path / 'out'}",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "camlens")


def test_notes_go_to_the_callers_sink(folder, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="camlens")
    notes: list[str] = []
    _run(folder, tmp_path / "out", message=notes.append)
    _run(folder, tmp_path / "out", message=notes.append)
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if r.module == "_messages"]  # all to the sink
    assert notes[-2:] == [f"resuming {tmp_path / 'out'}: 3 image(s) already done, 0 to go",
                          f"explained 0 image(s) into {tmp_path / 'out'}"]


def test_the_command_line_maps_a_usage_error_to_exit_code_2(folder, tmp_path):
    """The library's UsageError, printed by the CLI as one line with exit code 2."""
    done = subprocess.run(
        [sys.executable, "-m", "camlens", "explain", str(folder), "--out",
         str(tmp_path / "out"), "--method", "gradcam", "--target", "notaclass"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("camlens: error: unknown class name 'notaclass'")
    assert len(done.stderr.splitlines()) == 1


def _evaluate(folder, out, **kw):
    return camlens.evaluate_folder(folder, out, model=Tiny(),
                                   preprocess=preprocessing("unit", 32), labels=["a", "b", "c"],
                                   **{"method": "gradcam", **kw})


def test_evaluate_folder_returns_its_tables_built_in_memory(folder, tmp_path, capsys):
    import json

    notes: list[str] = []
    out = tmp_path / "eval"
    result = _evaluate(folder, out, metric="deletion,insertion", message=notes.append)
    assert isinstance(result, camlens.EvaluationResult)
    on_disk = json.loads((out / "evaluation.json").read_text("utf-8"))
    assert result.summary == on_disk
    assert dict(result) == {**on_disk, "exit_code": 0}
    assert (result.images, result.failed, result.exit_code) == (3, 0, 0)
    assert result.methods == ["gradcam"] and result.out == out
    assert result.table + "\n" == (out / "evaluation.md").read_text("utf-8")
    assert result.table.splitlines()[0] == \
        "| method | deletion (lower better) | insertion (higher better) |"
    scores = [r["results"]["gradcam"] for r in camlens.read_index(out)]
    for metric in ("deletion", "insertion"):  # the means of the index's per-image values
        mean = sum(s[metric] for s in scores) / len(scores)
        assert result.results[0][metric] == pytest.approx(mean, rel=1e-12)
    assert capsys.readouterr().err == ""  # every note went to the sink
    assert notes[-1] == f"evaluated 3 image(s) with 1 method(s); tables in {out}"
    assert any(n.startswith("plan: 3 image(s) x 1 method(s) x 2 metric(s)") for n in notes)


@pytest.mark.parametrize("change, text", [
    ({"metric": "deletionn"}, "unknown metric 'deletionn'"),
    ({"metric": "pointing_game"}, "pointing_game needs object boxes"),
    ({"method": "gradcan"}, "unknown method 'gradcan'"),
])
def test_evaluate_folder_raises_usage_errors_before_the_folder_is_touched(folder, tmp_path,
                                                                          change, text):
    with pytest.raises(camlens.UsageError, match=text):
        _evaluate(folder, tmp_path / "eval", **change)
    assert not (tmp_path / "eval").exists()


def test_evaluate_folder_imports_no_command_line_code(folder, tmp_path):
    code = "import sys, torch, camlens\nfrom camlens.models import preprocessing\n" + TINY + \
        textwrap.dedent(f"""
        result = camlens.evaluate_folder({str(folder)!r}, {str(tmp_path / 'eval')!r},
                                         model=Tiny(), preprocess=preprocessing("unit", 32),
                                         method="gradcam", metric="average_drop")
        print(result.images, result.exit_code, result.methods)
        print(sorted(m for m in sys.modules if m.startswith("camlens.cli")))
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["3 0 ['gradcam']", "[]"]
    assert done.stderr == ""


def test_a_run_takes_its_typed_spec_and_leaves_it_as_it_was(folder, tmp_path):
    import argparse

    from camlens.runner._explain import explain_files

    spec = camlens.RunSpec(paths=[str(folder)], out=str(tmp_path / "out"), model="Tiny",
                           model_object=Tiny(), preprocess=preprocessing("unit", 32),
                           labels=["a", "b", "c"], save="npy")
    assert isinstance(spec, camlens.runner.ModelSettings)
    result = explain_files(spec)
    assert (result.images, result.exit_code) == (3, 0)
    assert spec.save == "npy"  # the run read it, the caller's spec is unchanged
    with pytest.raises(TypeError, match="explain_files takes a RunSpec, got Namespace"):
        explain_files(argparse.Namespace(**vars(spec)))


def test_make_labels_returns_a_result_built_in_memory(folder, tmp_path, capsys):
    import json

    from camlens.labels import LabelsResult, make_labels

    notes: list[str] = []
    result = make_labels(folder, tmp_path / "labels", model=Tiny(),
                         preprocess=preprocessing("unit", 32), labels=["a", "b", "c"],
                         method="gradcam", message=notes.append)
    assert isinstance(result, LabelsResult)
    on_disk = json.loads((tmp_path / "labels" / "labels.json").read_text("utf-8"))
    assert result.summary == on_disk
    assert dict(result) == {**on_disk, "exit_code": 0}
    assert (result.images, result.failed, result.exit_code) == (3, 0, 0)
    assert result.methods == ["gradcam"] and result.errors == [] and result.miou is None
    assert sorted(r["masks"]["gradcam"] for r in result.records) == [
        "gradcam/p0.png", "gradcam/p1.png", "gradcam/p2.png"]
    assert capsys.readouterr().err == ""
    assert notes[-1] == f"labelled 3 image(s) into {tmp_path / 'labels'}"


@pytest.mark.parametrize("change, text", [
    ({"method": "gradcm"}, "unknown method 'gradcm'"),
    ({"method": "gradcam,layercam"}, "one method name"),
    ({"truth": {"p0.png": "zebra"}}, "unknown class name 'zebra'"),
])
def test_the_audit_raises_usage_errors(folder, tmp_path, change, text):
    with pytest.raises(camlens.UsageError, match=text):
        camlens.audit(folder, tmp_path / "audit", model=Tiny(),
                      preprocess=preprocessing("unit", 32), labels=["a", "b", "c"],
                      **{"method": "gradcam", **change})
