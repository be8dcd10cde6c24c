"""The command line starts light: listings, ``--help`` and usage errors import no torch and
no optional framework; the commands that run a model get OpenMP's passive wait policy and
``--threads``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import camlens
from camlens._catalog import MethodEntry, method_listing
from camlens._registry import describe, method_class
from camlens.cli._args import METHOD_GROUPS

HEAVY = ("torch", "numpy", "torchvision", "timm", "keras", "tensorflow", "ray", "PIL",
         "matplotlib", "skimage", "scipy", "cv2", "tqdm")
COMMANDS = ("explain", "demo", "evaluate", "audit", "labels", "app")


def _python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (with this session's PYTHONPATH)."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def _cli_in_fresh_process(argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit code, stdout, heavy modules imported) of ``camlens ARGV``, run in-process by
    ``camlens.cli.main`` in a fresh interpreter."""
    code = f"""
        import contextlib, io, json, sys
        from camlens.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            try:
                code = main({argv!r})
            except SystemExit as stop:
                code = stop.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps([code, out.getvalue(), heavy]))
    """
    res = _python(code)
    assert res.returncode == 0, res.stderr
    code_, stdout, heavy = json.loads(res.stdout)
    return code_, stdout, heavy


def test_light_method_listing_is_the_registry():
    """``camlens methods`` reads the method modules' source: the same names, order,
    descriptions and heavy flags as the imported registry."""
    registry = [MethodEntry(n, describe(n), method_class(n).heavy)
                for n in camlens.available_methods()]
    assert method_listing() == registry
    assert {e.name for e in registry if e.heavy} == {"sscam", "iscam", "rise"}


def test_the_lazy_public_api_is_all():
    """``import camlens`` loads no torch; the first use of a name loads the whole API, the
    names of ``__all__``, with ``camlens.audit`` the function (not its subpackage)."""
    code = """
        import sys, types
        import camlens
        light = "torch" not in sys.modules
        from camlens.audit import AuditResult  # binds the subpackage on camlens first
        print(light, isinstance(camlens.audit, types.FunctionType), "torch" in sys.modules,
              "gradcam" in camlens.available_methods(), callable(camlens.models.load_model))
    """
    res = _python(code)
    assert res.stdout.split() == ["True"] * 5, res.stderr
    assert set(camlens._API) | {"__version__"} == set(camlens.__all__)
    assert all(getattr(camlens, n) is not None for n in camlens.__all__)


def test_model_specs_are_one_table():
    from camlens import _catalog, models

    assert models.available_models() == list(_catalog.MODEL_SPECS)
    assert models.PREPROCESSING is _catalog.PREPROCESSING
    assert models.DEFAULT_MODEL == _catalog.DEFAULT_MODEL == "efficientnet-lite0"


@pytest.mark.parametrize(("argv", "code"), [
    (["methods"], 0), (["models"], 0), (["--help"], 0), (["--version"], 0), ([], 2),
    *(([c, "--help"], 0) for c in (*COMMANDS, "methods", "models")),
    (["frobnicate"], 2),  # unknown command
    (["explain"], 2),  # missing argument
    (["explain", "x.jpg", "--threads", "0"], 2), (["audit", "x.jpg", "--device", "tpu"], 2),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_listing_help_and_usage_errors_import_nothing_heavy(argv, code):
    got, _, heavy = _cli_in_fresh_process(argv)
    assert got == code
    assert heavy == []


def test_methods_output_is_as_the_registry_prints_it():
    """The listing as it was printed from the imported registry."""
    code, out, _ = _cli_in_fresh_process(["methods"])
    names = camlens.available_methods()
    width = max(len(n) for n in names) + len(" [heavy]")
    rows = [f"{(n + ' [heavy]' if method_class(n).heavy else n):<{width}}  {describe(n)}"
            for n in names]
    rows += [""] + [f"--method {g:<10}  {t}" for g, t in METHOD_GROUPS.items()]
    assert code == 0 and out.splitlines() == rows
    assert "sscam [heavy]" in out and "gradcam++" in out


def test_models_output_is_the_model_table():
    code, out, _ = _cli_in_fresh_process(["models"])
    from camlens.models import available_models

    expected = [f"{spec:<22}  {text}" for spec, text in available_models()]
    assert code == 0 and out.splitlines() == expected
    assert out.startswith("efficientnet-lite0 ")


# a spy that records OMP_WAIT_POLICY when torch is first imported, then runs the CLI on
# a usage error that the command finds after loading torch (an unknown metric)
_SPY = """
    import os, sys
    seen = []

    class Spy:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not seen:
                seen.append(os.environ.get("OMP_WAIT_POLICY"))

    sys.meta_path.insert(0, Spy())
    from camlens.cli import main
    code = main(["evaluate", "missing.jpg", "--metric", "nonsense"])
    print(code, seen)
"""


def test_the_cli_waits_passively_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(_SPY)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.stdout.split() == ["2", "['PASSIVE']"], res.stderr
    assert "unknown metric" in res.stderr
    for chosen in ("ACTIVE", "passive"):
        res = _python(_SPY, env={"OMP_WAIT_POLICY": chosen})
        assert res.stdout.split() == ["2", f"['{chosen}']"], res.stderr


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_threads_is_a_usage_error(value):
    res = _python(f"from camlens.cli import main; main(['explain', 'x.jpg', '--threads', "
                  f"{value!r}])")
    assert res.returncode == 2
    assert f"argument --threads: must be a positive whole number, got {value}" in res.stderr


def test_threads_reach_the_models_forward(tmp_path):
    """``camlens explain --threads 1``: the model's forward runs on one torch thread;
    without it, on torch's default (a global forward hook records the thread count
    inside the run)."""
    from camlens.viz import save_image

    rng = np.random.default_rng(0)
    save_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / "noise.png")
    code = """
        import sys, torch
        from torch.nn.modules.module import register_module_forward_pre_hook
        seen = set()
        register_module_forward_pre_hook(lambda m, i: seen.add(torch.get_num_threads()))
        from camlens.cli import main
        code = main(["explain", "noise.png", "--save", "npy",
                     "--progress", "never", *sys.argv[1:]])
        print(code, sorted(seen), flush=True)
    """
    default = _python("import torch; print(torch.get_num_threads())").stdout.split()
    for threads, expected in (["--threads", "1"], ["1"]), ([], default):
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *threads,
                              "--out", f"out{len(threads)}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert res.stdout.split(None, 1) == ["0", f"[{expected[0]}]\n"], res.stderr
        assert (tmp_path / f"out{len(threads)}" / "noise_gradcam.npy").is_file()
