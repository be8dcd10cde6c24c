"""A successful ``--engine ray`` run prints camlens's lines only: not Ray's note that it
turned token authentication on, nor the driver's error-looking ``core_worker`` line about
actor restarts (ray-project/ray#53727); any other line of Ray's still shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")  # camlens[ray]
from PIL import Image  # noqa: E402

from camlens.runner._ray import _without_noise  # noqa: E402

RESTART_LINE = (b"[2026-12-06 01:03:17,786 E 15020 15020] core_worker.cc:2465: Actor with "
                b"class name: 'MapWorker(MapBatches(_Worker))' and ID: '2346a46fd5d268b5006af2"
                b"be01000000' has constructor arguments in the object store and max_restarts "
                b"> 0. If the arguments in the object store go out of scope or are lost, the "
                b"actor restart will fail. See https://github.com/ray-project/ray/issues/53727 "
                b"for more details.\n")
OTHER_LINE = b"[2026-12-06 01:03:18,001 E 15020 15020] core_worker.cc:700: a real problem\n"


def test_only_the_known_noise_is_left_out(capfd):
    with _without_noise():
        os.write(2, b"\rprogress 1/8")  # a progress bar: no newline, shown at once
        os.write(2, RESTART_LINE[:50])  # Ray's lines may come in pieces
        os.write(2, RESTART_LINE[50:] + OTHER_LINE)
        os.write(2, b"\rprogress 2/8 [00:15<01:50, 15.72s/img]")
        os.write(2, RESTART_LINE)
    assert capfd.readouterr().err == ("\rprogress 1/8" + OTHER_LINE.decode()
                                      + "\rprogress 2/8 [00:15<01:50, 15.72s/img]")


def test_a_ray_run_prints_no_noise(tmp_path: Path):
    rng = np.random.default_rng(0)
    for n in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / f"{n}.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "camlens", "explain", str(tmp_path), "--out",
         str(tmp_path / "out"), "--engine", "ray", "--save", "npy", "--progress", "never"],
        capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert lines[-1] == f"camlens: explained 2 image(s) into {tmp_path / 'out'}"
    assert not [t for t in lines if "Token authentication" in t or "core_worker" in t], lines
