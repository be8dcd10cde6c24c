"""Keras for a newcomer (issue 20): the preprocess that comes with a Keras model gives that
model's input (channels-last), ``layer="auto"`` takes a VGG's last convolution, a Keras
file says what pixels it is fed, and the adapter calls convolutions without layout copies.

Keras runs on the torch backend here (``tests/conftest.py``); the models are small and
seeded, saved to ``tmp_path`` (nothing is downloaded).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from keras import layers
from torch.utils._python_dispatch import TorchDispatchMode

import camlens
from camlens._adapters._keras import KerasModel
from camlens.models import engine_input, preprocessing

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.chelsea()


def _vgg_like() -> keras.Model:
    """VGG16's shape at 32 x 32: two blocks of conv, conv, pool, then flatten and dense
    layers with a final softmax (as ``keras.applications.VGG16``)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    h = layers.Rescaling(1 / 255)(inp)
    for block, width in ((1, 4), (2, 8)):
        for conv in (1, 2):
            h = layers.Conv2D(width, 3, padding="same", activation="relu",
                              name=f"block{block}_conv{conv}")(h)
        h = layers.MaxPooling2D(name=f"block{block}_pool")(h)
    h = layers.Dense(16, activation="relu", name="fc1")(layers.Flatten(name="flatten")(h))
    out = layers.Dense(3, activation="softmax", name="predictions")(h)
    return keras.Model(inp, out, name="vgg_like")


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg_like.keras"
    _vgg_like().save(path)
    return path


# ----------------------------------------------------------- the preprocess fits the model
def test_the_bundled_keras_model_takes_its_preprocess_as_it_is(photo) -> None:
    kmodel, kpre, _ = camlens.load_model("keras:efficientnet-lite0")
    tmodel, tpre, _ = camlens.load_model("efficientnet-lite0")
    x = kpre(photo)
    assert kpre.channels_last and not tpre.channels_last
    assert tuple(x.shape) == (224, 224, 3) and x.is_contiguous()
    assert torch.equal(x, tpre(photo).permute(1, 2, 0))  # the same pixels, channels-last
    assert torch.equal(engine_input(kpre, photo), tpre(photo))  # what the engine takes
    logits = kmodel(x[None], training=False)  # the Keras model's own call, as it is
    with torch.no_grad():
        want = tmodel(tpre(photo)[None])
    assert tuple(logits.shape) == (1, 1000)
    assert float((logits.detach() - want).abs().max()) < 1e-4  # measured ~6e-6
    got = camlens.explain(kmodel, x[None], layer="top_activation")
    ref = camlens.explain(tmodel, tpre(photo)[None], layer="_swish")
    assert float((got - ref).abs().max()) < 1e-4
    assert float(got.max()) == 1.0  # a real map, not an empty one


def test_a_keras_file_gets_a_channels_last_preprocess_with_any_convention(
        vgg_file, photo) -> None:
    loaded, pre, _ = camlens.load_model(str(vgg_file))
    x = pre(photo)
    assert tuple(x.shape) == (32, 32, 3)
    assert torch.equal(x, preprocessing("raw", 32)(photo).permute(1, 2, 0))
    assert float(x.max()) > 200  # raw 0..255
    probs = loaded(x[None], training=False)
    assert tuple(probs.shape) == (1, 3) and abs(float(probs.sum()) - 1) < 1e-5
    _, caffe, _ = camlens.load_model(str(vgg_file), preprocess="caffe")
    assert caffe.channels_last and caffe.bgr and caffe.crop == 32
    assert torch.equal(caffe(photo), preprocessing("caffe", 32)(photo).permute(1, 2, 0))


def test_every_consumer_of_the_preprocess_runs_a_keras_file(vgg_file, photo, tmp_path):
    """The runner (explain, labels, audit) and the page turn the channels-last preprocess
    to the engine's layout: their maps and predictions are those of the Keras model."""
    from PIL import Image

    from camlens.app._work import Model, make_photo

    Image.fromarray(photo).save(tmp_path / "cat.png")
    loaded, pre, names = camlens.load_model(str(vgg_file))
    want = camlens.explain(loaded, pre(photo)[None], layer="block2_conv2")
    summary = camlens.run(tmp_path / "cat.png", tmp_path / "out", model=str(vgg_file),
                          save="npy")
    assert summary["images"] == 1 and summary["layer"] == ["block2_conv2"]
    got = np.load(tmp_path / "out" / "cat_gradcam.npy")
    assert got.shape == (32, 32)
    assert np.abs(got - want[0].numpy()).max() < 1e-5
    from camlens.labels import make_labels

    done = make_labels(tmp_path / "cat.png", tmp_path / "labels", model=str(vgg_file))
    assert done["images"] == 1 and done["failed"] == 0 and done["layer"] == ["block2_conv2"]
    audited = camlens.audit(tmp_path / "cat.png", tmp_path / "audit", model=str(vgg_file),
                            min_images=1)
    assert audited.images == 1
    holder = Model.wrap(loaded, pre, names, "vgg_like")
    shown = make_photo(holder, photo, "cat")
    probs = loaded(pre(photo)[None], training=False)[0]
    top = shown.predictions[0]
    assert top["class"] == int(probs.argmax())
    assert abs(top["probability"] - float(probs.max())) < 1e-5


# ----------------------------------------------------------------- auto: the last conv
def test_auto_takes_the_last_convolution_before_the_pooling(vgg_file) -> None:
    model = keras.saving.load_model(vgg_file, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    with camlens.Explainer(model, "gradcam") as explainer:
        auto = explainer(x)
        assert explainer.layer_names == ["block2_conv2"]  # not block2_pool
    assert torch.equal(auto, camlens.explain(model, x, layer="block2_conv2"))
    # a dropout after the pooling is passed over too; a model without pooling keeps its
    # last spatial layer (an Activation after the convolution)
    inp = keras.Input((16, 16, 3))
    h = layers.Conv2D(4, 3, name="conv")(inp)
    h = layers.Activation("relu", name="act")(h)
    h = layers.SpatialDropout2D(0.2, name="drop")(layers.AveragePooling2D(2, name="pool")(h))
    dropped = keras.Model(inp, layers.Dense(2)(layers.Flatten()(h)))
    with camlens.Explainer(dropped, "gradcam") as explainer:
        explainer(x[:, :16, :16])
        assert explainer.layer_names == ["act"]
    plain = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(
        layers.Activation("relu", name="act2")(layers.Conv2D(4, 3)(inp)))))
    with camlens.Explainer(plain, "gradcam") as explainer:
        explainer(x[:, :16, :16])
        assert explainer.layer_names == ["act2"]


# ------------------------------------------------------------ the note on a file's pixels
def test_a_keras_file_without_preprocess_says_what_pixels_it_gets(vgg_file, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="camlens"):
        camlens.load_model(str(vgg_file))
    notes = [r.getMessage() for r in caplog.records if r.name == "camlens"]
    assert len(notes) == 1
    assert "vgg_like.keras gets raw 0..255 RGB pixels (32 x 32)" in notes[0]
    assert "--preprocess" in notes[0] and "caffe" in notes[0] and "\n" not in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="camlens"):
        camlens.load_model(str(vgg_file), preprocess="raw")  # said: no note
        camlens.load_model(str(vgg_file), preprocess="caffe")
    assert not [r for r in caplog.records if r.name == "camlens"]


def test_the_command_line_prints_the_note_once_and_picks_the_conv(vgg_file, photo,
                                                                   tmp_path) -> None:
    from PIL import Image

    Image.fromarray(photo).save(tmp_path / "cat.jpg")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("KERAS_BACKEND")  # the command line picks the torch backend itself
    runs = {}
    for name, extra in (("plain", []), ("said", ["--preprocess", "raw"])):
        runs[name] = subprocess.run(
            [sys.executable, "-m", "camlens", "explain", "cat.jpg", "--model", str(vgg_file),
             "--out", name, "--save", "npy", *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert runs[name].returncode == 0, runs[name].stderr
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["layer"] == ["block2_conv2"]
    lines = [line for line in runs["plain"].stderr.splitlines() if "0..255" in line]
    assert lines == [
        "camlens: vgg_like.keras gets raw 0..255 RGB pixels (32 x 32): a Keras file does not "
        "record its preprocessing. If the model was trained otherwise, pass --preprocess "
        "(preprocess=): caffe for keras.applications VGG16 and ResNet50, tf (-1..1) for "
        "MobileNet, unit (0..1) or imagenet; --preprocess raw keeps 0..255 without this note"
    ]
    assert "0..255" not in runs["said"].stderr


# ---------------------------------------------------- the layout without copies, same maps
def _layout_zoo() -> tuple[keras.Model, keras.Model]:
    """Every layer kind the adapter calls channels-first, in 2-d and 1-d models."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((17, 17, 3))
    h = layers.Conv2D(6, 3, padding="same", activation="relu", name="same")(inp)
    h = layers.Conv2D(6, 4, strides=2, padding="same", name="strided")(h)
    h = layers.Conv2D(6, 3, dilation_rate=2, padding="valid", use_bias=False, name="dilated")(h)
    h = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw")(h)
    h = layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(h)
    h = layers.MaxPooling2D(3, strides=1, padding="same", name="maxpool")(h)
    h = layers.AveragePooling2D(2, name="avgpool")(h)
    two = keras.Model(inp, layers.Dense(4, activation="softmax")(layers.Flatten()(h)))
    inp1 = keras.Input((20, 3))
    g = layers.Conv1D(5, 3, padding="same", activation="relu", name="c1")(inp1)
    g = layers.DepthwiseConv1D(3, strides=2, name="dw1")(g)
    g = layers.MaxPooling1D(2, name="mp1")(g)
    one = keras.Model(inp1, layers.Dense(2)(layers.GlobalAveragePooling1D()(g)))
    return two, one


class _Copies(TorchDispatchMode):
    """Counts copies of tensors with ``batch`` rows (activations; kernels have none)."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.seen: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        copies = (torch.ops.aten.clone.default, torch.ops.aten.copy_.default)
        if func in copies and args and getattr(args[0], "ndim", 0) >= 3 \
                and args[0].shape[0] == self.batch:
            self.seen[f"{func} {tuple(args[0].shape)}"] += 1
        return func(*args, **(kwargs or {}))


def test_the_adapter_calls_convolutions_without_layout_copies() -> None:
    two, one = _layout_zoo()
    rng = np.random.default_rng(0)
    for model, shape in ((two, (3, 17, 17, 3)), (one, (3, 20, 3))):
        x = torch.from_numpy(rng.normal(size=shape).astype("float32"))
        adapter = KerasModel(model)
        copies = _Copies(len(x))
        with torch.no_grad(), copies:
            got = adapter(x.movedim(-1, 1))  # the engine's channels-first view
        assert not copies.seen, dict(copies.seen)  # Keras alone copies each conv's input
        with torch.no_grad(), adapter.logits():  # Keras's own call, the softmax linear
            want = model(x, training=False)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-5
        # gradients through the channels-first calls equal those of Keras's own call
        xa = x.clone().requires_grad_(True)
        (g_adapter,) = torch.autograd.grad(adapter(xa.movedim(-1, 1)).square().sum(), xa)
        xk = x.clone().requires_grad_(True)
        with adapter.logits():
            (g_keras,) = torch.autograd.grad(model(xk, training=False).square().sum(), xk)
        assert float((g_adapter - g_keras).abs().max()) < 1e-5 * float(g_keras.abs().max())
        # every layer as it was: its own call, channels-last
        for layer in model.layers:
            assert "call" not in vars(layer), layer.name
            if hasattr(layer, "data_format"):
                assert layer.data_format == "channels_last", layer.name


def test_a_failing_call_leaves_the_layers_as_they_were() -> None:
    two, _ = _layout_zoo()
    adapter = KerasModel(two)
    with pytest.raises(Exception):  # noqa: B017 (whatever Keras raises for 5 channels)
        adapter(torch.zeros(1, 5, 17, 17))
    for layer in two.layers:
        assert "call" not in vars(layer), layer.name
        if hasattr(layer, "data_format"):
            assert layer.data_format == "channels_last", layer.name
    x = np.random.default_rng(2).normal(size=(2, 17, 17, 3)).astype("float32")
    assert camlens.explain(two, x, layer="sep").shape == (2, 17, 17)
