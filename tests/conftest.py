"""Small seeded models shared by the tests (no downloads, all on CPU)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from typing import Any

# Keras picks its backend and writes keras.json on first import: the in-process Keras tests
# run on the torch backend with a throwaway KERAS_HOME (TensorFlow ones run in subprocesses).
os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="camlens-keras-home-")
atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

# Smaller settings for the slow perturbation and noise methods, so that the matrices over
# the registry stay quick.
FAST = {
    "rise": {"n_masks": 40, "grid": 4},
    "sscam": {"num_samples": 2},
    "iscam": {"num_samples": 2},
    "smoothgradcam++": {"num_samples": 2},
}


# `make test` runs on two pytest-xdist workers. A file with a fixture of module or session
# scope (a model, a Ray cluster, the app's server) runs whole on one worker, so that the
# fixture is built once; so do the README's examples (they run in order in one namespace)
# and the Ray tests (one cluster of 2 CPUs). The other files' tests go one by one to
# whichever worker is free. (xdist's own xdist_group marks do not reach its scheduler under
# pytest 9.2, which keeps node ids elsewhere.)
WHOLE_FILES = {"test_readme.py", "test_docs.py", "test_ray.py"}
SHARED_FIXTURE = re.compile(r"scope=[\"'](module|package|session)[\"']")


@pytest.hookimpl(optionalhook=True)  # pytest without xdist (-p no:xdist) still runs
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "load":
        return None  # an explicit --dist mode is xdist's
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath
    whole: dict[str, bool] = {}

    class ByFile(LoadScopeScheduling):
        """Whole files where they share fixtures, single tests elsewhere; files with the
        most tests start first (xdist's order), single tests fill the end."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path not in whole:
                file = root / path
                whole[path] = file.name in WHOLE_FILES or bool(
                    file.is_file() and SHARED_FIXTURE.search(file.read_text(encoding="utf-8")))
            return path if whole[path] else nodeid

    return ByFile(config, log)


class TinyNet(nn.Module):
    """conv-bn-relu(inplace) x2 -> GAP -> linear: a CAM-style classifier of 5 classes."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class ResidualNet(nn.Module):
    """A ResNet-style block whose bn2 output is changed in place (``out += identity``, relu_)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = torch.relu(self.stem(x))
        out = torch.relu(self.bn1(self.conv1(identity)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += identity
            out = torch.relu_(out)
        else:
            out = torch.relu(out + identity)
        return self.fc(out.mean(dim=(2, 3)))


class Zoo:
    """Builds each model once, on first use: ``Zoo(build)[name]``."""

    def __init__(self, build) -> None:
        self._build = build
        self._models: dict[str, nn.Module] = {}

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self._models:
            self._models[name] = self._build(name)
        return self._models[name]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics so eval mode matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return randomize_bn(TinyNet()).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def model_state(model: nn.Module) -> dict:
    """Everything camlens promises to leave unchanged."""
    return {
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [
            (n, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()
        ],
        "grad_ids": [(n, id(p.grad)) for n, p in model.named_parameters()],
        "hooks": [
            (
                n,
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {})),
            )
            for n, m in model.named_modules()
        ],
        "params": [(n, p.detach().clone()) for n, p in model.named_parameters()],
        "buffers": [(n, b.detach().clone()) for n, b in model.named_buffers()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("modes", "requires_grad", "grad_ids", "hooks"):
        assert before[key] == after[key], key
    for key in ("grads", "params", "buffers"):
        for (n1, a), (n2, b) in zip(before[key], after[key]):
            assert n1 == n2
            if a is None or b is None:
                assert a is None and b is None, (key, n1)
            else:
                assert torch.equal(a, b), (key, n1)


def minmax(maps) -> np.ndarray:
    """Per-image min-max normalisation (float64) of maps (B, ...); constant maps -> 0."""
    m = np.asarray(maps.detach() if isinstance(maps, torch.Tensor) else maps, dtype=np.float64)
    flat = m.reshape(m.shape[0], -1)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    out = np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out.reshape(m.shape)


def assert_close_maps(ours, ref, label: str = "", tol: float = 1e-4) -> float:
    """Both maps normalised per image; max |difference| <= tol. Returns that difference.

    A comparison of two constant maps would prove nothing: every reference map must have
    some structure.
    """
    ours_n, ref_n = minmax(ours), minmax(ref)
    assert ours_n.shape == ref_n.shape, (ours_n.shape, ref_n.shape)
    raw = np.asarray(ref.detach() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    raw = raw.reshape(ref_n.shape[0], -1)
    assert np.all(raw.max(axis=1) > raw.min(axis=1)), "reference map is constant"
    diff = float(np.abs(ours_n - ref_n).max())
    if label:
        print(f"\n[{label}] max abs difference (normalised): {diff:.3g}")
    assert diff <= tol, f"{label}: max abs difference {diff:.3g} > {tol:g}"
    return diff
