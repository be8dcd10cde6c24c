"""The Keras EfficientNet-Lite0 (camlens._keras_models) computes the bundled PyTorch model.

Measured (float32, the four demo photos, logits up to |11.5|): max |keras - torch| 5.5e-6
on the torch backend, 6.4e-6 on tensorflow (7.2e-6 with TF_ENABLE_ONEDNN_OPTS=0), the same
with torch and oneDNN limited to SSE4.1 or AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA).
Both are float32 round-off: against a float64 run of the torch model the torch logits are
8.4e-6 off, the Keras ones 7.5e-6. The 1e-4 bound leaves a margin of >10x for other CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch

import camlens
from camlens._keras_models import LAST_CONV_LAYER, efficientnet_lite0_keras
from camlens.models import LITE_PREPROCESS

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")  # the demo's photos
TOL = 1e-4  # max |logit difference|; measured 5e-6 to 7e-6 (see the module docstring)


def _photos() -> torch.Tensor:
    from skimage import data

    return torch.stack([LITE_PREPROCESS(getattr(data, name)()) for name in PHOTOS])


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


@pytest.fixture(scope="module")
def torch_model() -> torch.nn.Module:
    return camlens.load_model("efficientnet-lite0")[0]


@pytest.fixture(scope="module")
def keras_model(torch_model):
    return efficientnet_lite0_keras(torch_model)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return _photos()


def test_logits_match_pytorch(torch_model, keras_model, photos) -> None:
    with torch.no_grad():
        ref = torch_model(photos).numpy()
    out = keras.ops.convert_to_numpy(keras_model(_nhwc(photos), training=False))
    assert out.shape == ref.shape == (len(PHOTOS), 1000)
    assert out.dtype == ref.dtype == np.float32
    diff = np.abs(out.astype(np.float64) - ref)
    scale = float(np.abs(ref).max())
    print(
        f"\n[keras {keras.backend.backend()}] max abs {diff.max():.3g}, "
        f"max rel {diff.max() / scale:.3g} (logits up to {scale:.3g})"
    )
    assert scale > 5  # real logits, not a degenerate model
    assert diff.max() < TOL
    np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))


def test_structure_and_features(torch_model, keras_model, photos) -> None:
    assert keras_model.name == "efficientnet_lite0"
    names = [layer.name for layer in keras_model.layers]
    assert len(names) == len(set(names))
    for name in ("stem_conv_pad", "stem_conv", "stem_bn", "stem_activation", "block1a_dwconv",
                 "block2a_dwconv_pad", "block2b_add", "block7a_project_bn", "top_conv",
                 "top_bn", "avg_pool", "top_dropout", "predictions"):
        assert name in names
    assert names[-4] == LAST_CONV_LAYER  # then avg_pool, top_dropout, predictions
    assert isinstance(keras_model.get_layer(LAST_CONV_LAYER), keras.layers.ReLU)
    # (not get_config(): its serialisation imports tensorflow, seconds, when installed)
    assert keras_model.get_layer("predictions").activation is keras.activations.linear
    assert keras_model.count_params() == sum(
        p.numel() for p in torch_model.parameters()
    ) + sum(b.numel() for n, b in torch_model.named_buffers() if "running" in n)

    # The Grad-CAM layer equals the torch model's features, also for an odd input size
    # (the padding of every convolution is the torch model's). Measured: 3.5e-5 at most.
    features = keras.Model(keras_model.input, keras_model.get_layer(LAST_CONV_LAYER).output)
    odd = torch.nn.functional.interpolate(photos[:1], size=(193, 231), mode="bilinear")
    for x, size in ((photos[:2], (7, 7)), (odd, (6, 7))):
        with torch.no_grad():
            ref = torch_model.extract_features(x).permute(0, 2, 3, 1).numpy()
        out = keras.ops.convert_to_numpy(features(_nhwc(x), training=False))
        assert out.shape == ref.shape == (len(x), *size, 1280)
        assert np.abs(out - ref).max() < 1e-3


TF_CHECK = """
import json
import numpy as np, torch, keras
import camlens
from camlens._keras_models import efficientnet_lite0_keras
from camlens.models import LITE_PREPROCESS
from skimage import data

torch_model = camlens.load_model("efficientnet-lite0")[0]
model = efficientnet_lite0_keras(torch_model)
x = torch.stack([LITE_PREPROCESS(getattr(data, n)()) for n in PHOTOS])
with torch.no_grad():
    ref = torch_model(x).numpy()
out = keras.ops.convert_to_numpy(model(x.permute(0, 2, 3, 1).numpy(), training=False))
diff = np.abs(out.astype(np.float64) - ref)
print(json.dumps({
    "backend": keras.backend.backend(),
    "dtype": str(out.dtype),
    "max_abs": float(diff.max()),
    "max_rel": float(diff.max() / np.abs(ref).max()),
    "top1_equal": bool((out.argmax(1) == ref.argmax(1)).all()),
}))
"""


def test_logits_match_pytorch_on_tensorflow(tmp_path) -> None:
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "KERAS_HOME": str(tmp_path),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = f"PHOTOS = {PHOTOS!r}\n{TF_CHECK}"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n[keras tensorflow] {result}")
    assert result["backend"] == "tensorflow"
    assert result["dtype"] == "float32"
    assert result["max_abs"] < TOL
    assert result["top1_equal"]


def test_importing_camlens_does_not_import_keras() -> None:
    code = (
        "import sys, camlens, camlens._keras_models, camlens.models; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


# the same layer in both models: the head's ReLU6 (torch: the last call of the shared
# `_swish`), and block 2b's projection batch norm (24 channels, for Score-CAM)
_HEAD = (LAST_CONV_LAYER, "_swish")
_PROJECT = ("block2b_project_bn", "_blocks.2._bn2")


@pytest.mark.parametrize("method, layers, photos_used", [
    ("gradcam", _HEAD, 4), ("gradcam++", _HEAD, 4), ("scorecam", _PROJECT, 1),
])
def test_maps_match_pytorch(torch_model, keras_model, photos, method, layers, photos_used):
    """The same weights through two frameworks give the same maps to 1e-4 (maps in [0, 1]).
    Score-CAM runs one forward per distinct channel mask: at block 2b's 24-channel
    projection on one photo, to keep the test short (the head's 1280 channels: bench_keras;
    the last block's 320 took a minute here)."""
    x = photos[:photos_used]
    got = camlens.explain(keras_model, _nhwc(x), method=method, layer=layers[0])
    want = camlens.explain(torch_model, x, method=method, layer=layers[1])
    assert got.shape == want.shape == (photos_used, 224, 224)
    assert float((got - want).abs().max()) < TOL
    assert float(want.std()) > 0.1  # real maps, not flat ones


def test_guided_maps_match_pytorch(torch_model, keras_model, photos):
    """Keras's ReLU6 layers (on torch: ``F.relu6``) are guided as the PyTorch model's
    ``nn.ReLU6``: the same Guided Grad-CAM and guided backpropagation maps (measured 5e-7)."""
    x = photos[:1]
    got = camlens.compare(keras_model, _nhwc(x), ["guided-backprop", "guided-gradcam"],
                          layer=LAST_CONV_LAYER)
    want = camlens.compare(torch_model, x, ["guided-backprop", "guided-gradcam"],
                           layer="_swish")
    for name in ("guided-backprop", "guided-gradcam"):
        assert got[name].shape == want[name].shape == (1, 224, 224)
        assert float((got[name] - want[name]).abs().max()) < TOL, name
        assert float(want[name].amax()) == 1.0 and float(want[name].std()) > 0.01
