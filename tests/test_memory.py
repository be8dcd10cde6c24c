"""Memory: what a pass keeps for backward, and the runner's batch bounded by memory."""

from __future__ import annotations

import mmap
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image
from torch import nn

import camlens
from camlens._validate import InputTooSmallError
from camlens.cli._args import say
from camlens.models import load_model, preprocessing
from camlens.runner._memory import (
    IN_FLIGHT,
    PROBE,
    BatchSizer,
    PeakMemory,
    available_memory,
    parse_bytes,
)


def _run(*args, **kw):
    """camlens.run with its notes printed on stderr as the command line prints them (the
    library's default sink is the ``camlens`` logger)."""
    return camlens.run(*args, message=say, **kw)



def saved_bytes(model: nn.Module, call: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saved for backward during ``call`` (distinct storages,
    the model's parameters left out: they exist anyway)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call()
    return sum(seen.values())


class SharedActivation(nn.Module):
    """One activation module serves the stem and the head, as EfficientNet's ``_swish``."""

    def __init__(self, repeat: bool = True) -> None:
        super().__init__()
        self.repeat = repeat  # False: the stem skips it (a call count that changes)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.body = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.act(x) if self.repeat else torch.clamp(x, 0, 6)
        x = self.act(self.head(torch.relu(self.body(x))))
        return self.fc(x.mean((2, 3)))


def _model(repeat: bool = True) -> SharedActivation:
    torch.manual_seed(0)
    return SharedActivation(repeat).double().eval()


def _hand_gradcam(model: SharedActivation, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM at the head's activation, by hand: ReLU(sum_c mean(dy/dA_c) A_c)."""
    with torch.no_grad():
        pre = model.head(torch.relu(model.body(model.act(model.stem(x)))))
    a = model.act(pre).requires_grad_(True)
    y = model.fc(a.mean((2, 3)))[:, cls].sum()
    (g,) = torch.autograd.grad(y, a)
    return torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach()


def test_the_graph_starts_at_the_layers_last_call():
    """Grad-CAM at a module that also ran at the stem keeps no graph from the stem: the
    tensors saved for backward are smaller than the layer's output (before, the whole
    model from the stem on was recorded: 3.5x the layer's output here). The maps are the
    hand-computed ones."""
    model = _model()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer_bytes = 2 * 16 * 16 * 16 * 8  # (B, C, H, W) float64 at the head
    maps: list[torch.Tensor] = []
    saved = saved_bytes(model, lambda: maps.append(camlens.explain(
        model, x, layer="act", target=3, size=None, normalize=False)))
    assert saved < layer_bytes, saved
    assert torch.allclose(maps[0].double(), _hand_gradcam(model, x, 3).float().double(),
                          rtol=1e-6, atol=1e-7)


def test_a_layer_that_runs_fewer_times_than_probed_is_still_right():
    """The call count is probed once per model and input shape; when it changes (a model
    whose path depends on its state or data), the pass runs again from the first call."""
    model = _model()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    camlens.explain(model, x, layer="act", target=1)  # probed: act runs twice
    model.repeat = False  # now once
    maps = camlens.explain(model, x, layer="act", target=1, size=None, normalize=False)
    fresh = _model(repeat=False)
    expected = camlens.explain(fresh, x, layer="act", target=1, size=None, normalize=False)
    assert torch.equal(maps, expected)
    assert maps.abs().sum() > 0
    model.repeat = True  # and back: the count is no longer trusted, still right
    again = camlens.explain(model, x, layer="act", target=1, size=None, normalize=False)
    assert torch.allclose(again.double(), _hand_gradcam(model, x, 1).float().double(),
                          rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def lite():
    model, _, _ = load_model()
    return model


def test_bundled_model_keeps_no_graph_before_its_layer(lite):
    """EfficientNet-Lite0's auto layer (``_swish``, which also runs at the stem): a
    Grad-CAM batch saves for backward less than the layer's own output per image
    (1280 x 7 x 7 float32 = 245 KiB); before, it saved the whole model's activations
    (78 MB per image)."""
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    saved = saved_bytes(lite, lambda: camlens.explain(lite, x))
    assert saved < 2 * 1280 * 7 * 7 * 4, saved


# ------------------------------------------------------------ the batch bounded by memory
MiB = 2**20


def _loaded(n: int) -> list[tuple[int, np.ndarray, torch.Tensor]]:
    """n decoded images: a 100 x 100 photo (30,000 bytes) and a 3 x 32 x 32 float32 input
    (12,288 bytes) each."""
    return [(i, np.zeros((100, 100, 3), np.uint8), torch.zeros(3, 32, 32)) for i in range(n)]


def test_batch_bounded_by_a_small_budget():
    """The first batch (8 images) measured 80 MiB: 10 MiB per image for the pass, plus 6
    batches in flight of (photo + input + maps) = 6 x 46,384 bytes; a budget of 100 MiB
    takes 9 such images, not the 200 asked for (the run's size)."""
    sizer = BatchSizer(100_000, 200, torch.device("cpu"), available=100 * MiB)
    assert sizer.probing and sizer.size == PROBE == 8
    sizer.measured(80 * MiB, _loaded(8), map_bytes=8 * 4096)
    per_image = 10 * MiB + IN_FLIGHT * (30_000 + 12_288 + 4096)
    assert sizer.size == 100 * MiB // per_image == 9
    assert sizer.message == (
        "--batch-size 100000 needs about 2.0 GB of memory for 200 images (10 MB per image) "
        "and 100 MB is available to this run, so it uses batches of 9 (about 92 MB); the "
        "maps are the same")
    assert not sizer.probing  # measured once


def test_batch_kept_when_it_fits_and_small_batches_are_not_probed():
    sizer = BatchSizer(64, 200, torch.device("cpu"), available=10 * 2**30)
    sizer.measured(80 * MiB, _loaded(8), map_bytes=0)
    assert (sizer.size, sizer.message) == (64, None)
    small = BatchSizer(8, 200, torch.device("cpu"), available=1)
    assert not small.probing and small.size == 8
    few = BatchSizer(1000, 5, torch.device("cpu"), available=1)  # one batch of 5 anyway
    assert not few.probing and few.size == 1000


def test_gpu_memory_bounds_the_pass_and_host_memory_the_pictures():
    """On CUDA the pass's peak is the GPU's (its free memory the bound), the pictures in
    flight are the host's: each is bounded by its own budget."""
    gpu = torch.device("cuda")  # only the device's type is read
    sizer = BatchSizer(500, 1000, gpu, available=64 * 2**30, gpu=200 * MiB)
    sizer.measured(8 * 50 * MiB, _loaded(8), map_bytes=0)
    assert sizer.size == 4 and "of GPU memory for 500 images (50 MB per image)" in sizer.message
    host = BatchSizer(500, 1000, gpu, available=2 * MiB, gpu=64 * 2**30)
    host.measured(8 * 50 * MiB, _loaded(8), map_bytes=0)
    assert host.size == 2 * MiB // (IN_FLIGHT * (30_000 + 12_288)) == 8
    assert "of memory for 500 images" in host.message


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("CAMLENS_MEMORY", "1.5G")
    assert available_memory() == int(1.5 * 2**30)
    for text, n in (("512M", 512 * MiB), ("300k", 300 * 1024), ("4096", 4096), ("2GiB", 2**31)):
        assert parse_bytes(text) == n
    monkeypatch.setenv("CAMLENS_MEMORY", "lots")
    with pytest.raises(ValueError, match=r"CAMLENS_MEMORY='lots' is not an amount of memory; "
                                         r"write it as e.g. 4G"):
        BatchSizer(100, 200, torch.device("cpu"))
    monkeypatch.delenv("CAMLENS_MEMORY")
    found = available_memory()
    assert found is not None and 0 < found < os.sysconf("SC_PAGE_SIZE") * os.sysconf(
        "SC_PHYS_PAGES")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_measures_a_block():
    with PeakMemory(torch.device("cpu")) as peak:
        # 64 MiB of fresh pages, each touched (a tensor could reuse pages that malloc kept
        # resident from earlier tests in this process, which the resident set never shows)
        block = mmap.mmap(-1, 64 * MiB)
        for i in range(0, 64 * MiB, mmap.PAGESIZE):
            block[i] = 1
        block.close()
    assert 60 * MiB <= peak.peak < 1024 * MiB, peak.peak
    with PeakMemory(torch.device("cpu"), active=False) as idle:
        torch.ones(MiB)
    assert idle.peak == 0


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(22):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            folder / f"p{i:02d}.png")
    return folder


def test_runner_bounds_the_batch_and_writes_the_same_maps(photos, tmp_path, monkeypatch,
                                                          capsys):
    """``--batch-size 1000`` with a budget of 1 MB: the first two batches hold 8 images
    (measured, and the one decoding meanwhile), then the batch the message names; the maps
    equal those of a run with batches of one image."""
    from camlens.runner import _local

    torch.manual_seed(0)
    model = TinyNet().eval()
    sizes: list[int] = []
    real = _local.compare

    def counting(model, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(_local, "compare", counting)
    monkeypatch.setenv("CAMLENS_MEMORY", "1M")
    kw = dict(model=model, preprocess=preprocessing("unit", crop=64, resize=64),
              method="gradcam,layercam", save="npy")
    _run(photos, tmp_path / "big", batch_size=1000, **kw)
    said = capsys.readouterr().err
    found = re.search(r"camlens: --batch-size 1000 needs about .* of memory for 22 images "
                      r"\(.* per image\) and 1 MB is available to this run, so it uses "
                      r"batches of (\d+) ", said)
    assert found, said
    n = int(found[1])
    assert sizes[:2] == [8, 8] and n < 22 and all(s <= n for s in sizes[2:])
    assert sum(sizes) == 22 and said.count("needs about") == 1
    monkeypatch.delenv("CAMLENS_MEMORY")
    sizes.clear()
    _run(photos, tmp_path / "one", batch_size=1, **kw)
    assert sizes == [1] * 22
    big = {(f, m): a for f, m, a in camlens.read_maps(tmp_path / "big")}
    one = {(f, m): a for f, m, a in camlens.read_maps(tmp_path / "one")}
    assert big.keys() == one.keys() and len(big) == 44
    for key, a in one.items():
        np.testing.assert_allclose(big[key], a, rtol=0, atol=1e-6)


# ------------------------------------------------------------ inputs too small for the model
class StridedNet(nn.Module):
    """Three unpadded 3x3 convolutions of stride 2: a side s gives (s - 3) // 2 + 1, so
    the last needs 3, the second 2 x 3 + 1 = 7, the input 2 x 7 + 1 = 15 pixels a side."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
            nn.Conv2d(4, 8, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _runs(model: nn.Module, side: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side))
    except RuntimeError:
        return False
    return True


def test_tiny_input_on_a_small_conv_net_says_the_smallest_size():
    torch.manual_seed(0)
    model = StridedNet().train()
    assert not _runs(model, 14) and _runs(model, 15)  # the arithmetic of the docstring
    with pytest.raises(InputTooSmallError, match=r"^inputs of 2x2 are too small for "
                       r"StridedNet: it takes each side at least 15 \(15x15 here\); resize "
                       r"or pad the images to that size \(the model's error: ") as caught:
        camlens.explain(model, torch.rand(1, 3, 2, 2), layer="features.5")
    assert caught.value.smallest == (15, 15) and caught.value.size == (2, 2)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    assert model.training  # the search ran in eval mode; the model's mode is back
    with pytest.raises(InputTooSmallError, match=r"inputs of 9x40 .* at least 15 \(15x40 "):
        camlens.compare(model, torch.rand(2, 3, 9, 40), ["gradcam", "scorecam"],
                        errors="keep")  # the input's fault, not a method's: raised
    with pytest.raises(InputTooSmallError, match=r"at least 15 \(15x15 here\)"):
        camlens.explain(model, torch.rand(1, 3, 2, 2), "guided-backprop")  # its own pass
    assert camlens.explain(model, torch.rand(1, 3, 15, 15)).shape == (1, 15, 15)


def test_tiny_input_on_the_bundled_model(lite):
    assert not _runs(lite, 31) and _runs(lite, 32)
    with pytest.raises(InputTooSmallError, match=r"inputs of 8x8 are too small for "
                       r"BundledEfficientNet: it takes each side at least 32 \(32x32 here\)"):
        camlens.explain(lite, torch.rand(1, 3, 8, 8))
    with pytest.raises(InputTooSmallError, match=r"inputs of 31x31 .* at least 32 \(32x32 "):
        camlens.compare(lite, torch.rand(2, 3, 31, 31), ["gradcam", "eigencam"], errors="keep")


def test_an_error_that_is_not_about_size_is_left_as_it_is():
    class Broken(StridedNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("the model's own failure")

    with pytest.raises(RuntimeError, match="^the model's own failure$"):
        camlens.explain(Broken(), torch.rand(1, 3, 2, 2), layer="features.5")
    with pytest.raises(RuntimeError, match=r"to have 3 channels, but got 1 channels"):
        camlens.explain(StridedNet(), torch.rand(1, 1, 20, 20), layer="features.5")


def test_cli_reports_a_too_small_input_one_line_per_image(photos, tmp_path):
    """A model file whose 3x3 convolution is dilated 120 times takes 241 pixels a side;
    ``camlens explain`` feeds it 224 x 224 crops: each image fails with one line that
    says so, the run goes on and exits 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=120), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    torch.save(model, tmp_path / "wide.pt")
    chosen = tmp_path / "in"
    chosen.mkdir()
    for name in ("p00.png", "p01.png", "p02.png"):
        (chosen / name).write_bytes((photos / name).read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "camlens", "explain", str(chosen), "--out", str(tmp_path / "o"),
         "--model", str(tmp_path / "wide.pt"), "--trust-model", "--save", "npy"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 1, done.stderr
    lines = [s for s in done.stderr.splitlines() if s.startswith("camlens: skipped")]
    reason = ("inputs of 224x224 are too small for Sequential: it takes each side at least "
              "241 (241x241 here); resize or pad the images to that size (the model's error: "
              "Calculated padded input size per channel: (224 x 224). Kernel size: (241 x "
              "241). Kernel size can't be greater than actual input size)")
    assert lines == [f"camlens: skipped {chosen / n}: {reason}"
                     for n in ("p00.png", "p01.png", "p02.png")], done.stderr


def test_a_model_that_takes_pairs_is_not_probed_on_one_image():
    """The call-count probe runs one image; a model that needs an even batch still works
    (its layer's graph then starts at the first call, as before)."""
    class Pairs(SharedActivation):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x.view(2, -1, *x.shape[1:]).unbind(0)  # raises for an odd batch
            return super().forward(torch.cat([a, b]))

    torch.manual_seed(0)
    model = Pairs().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    maps = camlens.explain(model, x, layer="act", target=2, size=None, normalize=False)
    assert torch.allclose(maps.double(), _hand_gradcam(model, x, 2).float().double(),
                          rtol=1e-6, atol=1e-7)
