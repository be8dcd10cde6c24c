"""The GPU suite: every method on CUDA gives the CPU's maps, GPU memory stays flat over 200
batches, and no method copies to the host inside its loop.

Run it with ``pytest tests/gpu`` (or ``pytest -m gpu``) on a machine with CUDA. Every test is
parametrised by the device: the ``cpu`` cases are a dry run of the same code, part of every
``make test``; the ``cuda`` cases skip, with one line, where torch sees no CUDA device.
"""

from __future__ import annotations

import collections
import copy
import gc
import re
from typing import Any

import pytest
import torch
from conftest import FAST, TinyNet, randomize_bn
from torch.utils._python_dispatch import TorchDispatchMode

import camlens
from camlens._registry import method_class

pytestmark = pytest.mark.gpu

METHODS = camlens.available_methods()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the GPU suite's cuda cases need torch.cuda.is_available()"))]

# Aten ops that make the host wait for the device: a scalar read (.item(), bool(), int()),
# or an output whose size depends on the data (nonzero, boolean masks, unique).
SYNCING = {"_local_scalar_dense", "nonzero", "argwhere", "masked_select", "unique_dim",
           "_unique", "_unique2", "unique_consecutive", "repeat_interleave", "bincount",
           "equal", "is_nonzero"}


def options(method: str, longer: bool = False) -> dict[str, Any]:
    """The matrices' quick settings; ``longer`` doubles a method's own loops (noise samples,
    RISE masks) and shrinks its forward chunks, so that each loop runs more times."""
    opts = dict(FAST.get(method, {}))
    if longer:
        for name in ("num_samples", "n_masks"):
            if name in opts:
                opts[name] *= 2
        opts["batch_size"] = 3
    return opts


@pytest.fixture(scope="module")
def tiny64() -> TinyNet:
    """TinyNet in float64: the CPU and CUDA passes differ only in rounding order."""
    torch.manual_seed(0)
    return randomize_bn(TinyNet()).eval().double()


@pytest.fixture(scope="module")
def images64() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))


def assert_same_maps(got: torch.Tensor, expected: torch.Tensor, method: str) -> None:
    """Maps computed in float64 agree to float32 rounding.

    camlens returns float32 maps, resized in float32 after the method's float64 maths: the
    two devices may round the cast and the bilinear resize's four-term sums differently,
    by a few float32 ulps (1.2e-7 each) of the map's scale, so 1e-6 of each image's largest
    value; a real difference (another layer, a missing term, a float32 pass) is far larger.
    """
    got, expected = got.cpu().double(), expected.double()
    assert got.shape == expected.shape, (method, got.shape, expected.shape)
    scale = expected.flatten(1).abs().amax(1)
    assert bool((scale > 0).all()), f"{method}: an all-zero reference map proves nothing"
    diff = (got - expected).abs().flatten(1).amax(1)
    assert bool((diff <= 1e-6 * scale).all()), f"{method}: {(diff / scale).tolist()}"


def on(device: str, model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` on ``device`` (the reference stays on the CPU)."""
    return copy.deepcopy(model).to(device)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_maps_on_the_device_equal_the_cpu_maps(device: str, method: str, tiny64: TinyNet,
                                               images64: torch.Tensor) -> None:
    expected = camlens.explain(tiny64, images64, method=method, normalize=False,
                               **options(method))
    got = camlens.explain(on(device, tiny64), images64.to(device), method=method,
                          normalize=False, **options(method))
    assert got.device.type == device
    assert_same_maps(got, expected, method)


@pytest.fixture(scope="module")
def bundled64() -> torch.nn.Module:
    """The bundled EfficientNet-Lite0 in float64 (no TF32 convolutions on either side)."""
    model, _, _ = camlens.load_model()
    return model.double()


@pytest.mark.parametrize("method", METHODS)
def test_bundled_model_on_cuda_equals_the_cpu(method: str, bundled64: torch.nn.Module) -> None:
    """The bundled model on 64x64 photos of noise (its 2x2 last layer keeps Score-CAM's
    1,280 CPU forwards short). A method the model cannot run refuses alike on both."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU suite's cuda cases need torch.cuda.is_available()")
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = on("cuda", bundled64)
    try:
        expected = camlens.explain(bundled64, x, method=method, normalize=False,
                                   **options(method))
    except ValueError as err:
        with pytest.raises(ValueError, match=re.escape(str(err))):
            camlens.explain(model, x.cuda(), method=method, normalize=False, **options(method))
        return
    got = camlens.explain(model, x.cuda(), method=method, normalize=False, **options(method))
    assert_same_maps(got, expected, method)


def held_bytes(device: str) -> int:
    """Bytes held by live tensors on ``device``: the caching allocator's count on CUDA, the
    storages of every tensor the garbage collector sees on the CPU."""
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == device:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_memory_is_flat_over_200_batches(device: str, method: str, tiny64: TinyNet,
                                         images64: torch.Tensor) -> None:
    """After three warm-up batches (caches, cuBLAS workspaces), 200 more leave the device's
    memory where it was. A tensor kept per batch, however small (512 bytes, the allocator's
    smallest block), would add 100 KiB; 64 KiB of slack is for nothing in particular.
    The CPU dry run runs 20 batches (tests/test_contract.py counts tensors over 200)."""
    model, x = on(device, tiny64), images64.to(device)
    explainer = camlens.Explainer(model, method, **options(method))
    for _ in range(3):
        explainer(x)
    before = held_bytes(device)
    for _ in range(200 if device == "cuda" else 20):
        explainer(x)
    grown = held_bytes(device) - before
    assert grown <= 64 * 1024, f"{method}: {grown} bytes more after the batches"


class HostWaits(TorchDispatchMode):
    """Counts the ops that copy from ``device`` to the host or make the host wait for it,
    and the convolutions run (to see that a loop ran more often)."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device
        self.waits: collections.Counter[str] = collections.Counter()
        self.convolutions = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[1]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        here = bool(tensors) and tensors[0].device.type == self.device
        if name == "convolution":
            self.convolutions += 1
        elif name in SYNCING and here:
            self.waits[name] += 1
        elif name == "_to_copy" and here and self.device != "cpu" and str(
                kwargs.get("device", self.device)) == "cpu":
            self.waits["copy to the host"] += 1
        elif name == "copy_" and len(tensors) == 2 and tensors[0].device.type == "cpu" and (
                tensors[1].device.type == self.device != "cpu"):
            self.waits["copy to the host"] += 1
        return func(*args, **kwargs)


def host_waits(device: str, model: torch.nn.Module, x: torch.Tensor, method: str,
               longer: bool) -> HostWaits:
    waits = HostWaits(device)
    with waits:
        camlens.explain(model, x, method=method, **options(method, longer))
    return waits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_no_host_copy_inside_a_method_loop(device: str, method: str, tiny64: TinyNet,
                                           images64: torch.Tensor) -> None:
    """The host waits for the device a fixed number of times per call (the input check, the
    target's classes, a per-image count of distinct channels), never once per forward
    chunk or noise sample: running each loop more often (chunks of 3 forwards instead of
    32, twice the samples or masks) adds no wait."""
    model, x = on(device, tiny64), images64.to(device)
    # a first call probes how often the layer runs (one forward, cached per model and input
    # shape): warm that cache so that both counted calls run the same passes but the loop's
    camlens.explain(model, x, method=method, **options(method))
    short = host_waits(device, model, x, method, longer=False)
    long = host_waits(device, model, x, method, longer=True)
    cls = method_class(method)
    if cls.needs_scorer or "num_samples" in cls.options:  # the loop did run more often
        assert long.convolutions > short.convolutions, method
    assert long.waits == short.waits, f"{method}: {dict(short.waits)} -> {dict(long.waits)}"
