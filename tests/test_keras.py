"""Keras 3 models on the torch backend (set by conftest before keras is imported).

The strongest check: one small CNN built in Keras and in PyTorch with the same float64
weights gives the same maps for every registered method. Then the promises of the
PyTorch path, kept for Keras: layers by Keras name, layouts checked, the model left
exactly as it was, clear errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from conftest import FAST
from keras import layers
from keras_twins import images, keras_twin, max_differences, torch_twin

import camlens
from camlens import metrics

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def twins():
    km = keras_twin()
    return km, torch_twin(km)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return images()


def _cf(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def test_twins_compute_the_same_function(twins, x):
    km, tm = twins
    probs = np.asarray(km(x, training=False).detach())
    logits = tm(_cf(x))
    assert np.allclose(probs, torch.softmax(logits, 1).detach().numpy(), atol=1e-12)


def test_every_method_gives_the_torch_twins_maps(twins, x):
    """Every registered method, float64 weights in both frameworks: maps equal to 1e-6
    (measured <= 1e-9 here; maps are float32 at the end, so 1e-6 is float32 rounding)."""
    km, tm = twins
    names = camlens.available_methods()
    options = {k: v for k, v in FAST.items() if k in names}
    got = camlens.compare(km, x, names, layer="relu2", errors="keep", options=options)
    want = camlens.compare(tm, _cf(x), names, layer="relu2", errors="keep", options=options)
    diffs = max_differences(got, want)
    for name, d in diffs.items():
        assert not isinstance(d, dict), (name, d)
        assert d < 1e-6, (name, d)
    assert got.classes.tolist() == want.classes.tolist()
    # the output explained is the logits (the Keras softmax is made linear during the call)
    assert torch.allclose(got.output, want.output.detach(), atol=1e-12)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "scorecam"])
def test_counterfactual_and_topk_and_classes_match(twins, x, method):
    km, tm = twins
    for kwargs in ({"counterfactual": True}, {"target": camlens.TopK(2)}, {"target": [3, 1]}):
        got = camlens.explain(km, x, method=method, layer="relu2", **kwargs)
        want = camlens.explain(tm, _cf(x), method=method, layer="relu2", **kwargs)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-6, kwargs


def test_nested_model_layers_by_path_and_auto(twins, x):
    km, tm = twins
    outer_in = keras.Input((16, 16, 3), dtype="float64")
    outer = keras.Model(outer_in, km(outer_in))  # its output: the nested model's softmax
    for spec in ("twin/relu2", "relu2", km.get_layer("relu2")):
        got = camlens.explain(outer, x, layer=spec)
        want = camlens.explain(tm, _cf(x), layer="relu2")
        assert float((got - want).abs().max()) < 1e-6, spec
    with camlens.Explainer(outer, "gradcam") as explainer:  # auto: the last spatial layer
        explainer(x)
        assert explainer.layer_names == ["twin/relu2"]


def test_auto_layer_and_layer_names(twins, x):
    km, _ = twins
    with camlens.Explainer(km, "gradcam") as explainer:
        explainer(x)
        assert explainer.layer_names == ["relu2"]
        assert "Functional" in repr(explainer) or "twin" in repr(explainer)


def test_unknown_and_foreign_layers_are_told(twins, x):
    km, _ = twins
    with pytest.raises(ValueError, match=r"unknown layer .*'relu3'.*closest.*'relu2'"):
        camlens.explain(km, x, layer="relu3")
    other = keras_twin(seed=1)
    with pytest.raises(ValueError, match="not part of the model"):
        camlens.explain(km, x, layer=other.get_layer("relu2"))
    with pytest.raises(TypeError, match="layer must be"):
        camlens.explain(km, x, layer=3)


def test_a_layer_outside_the_graph_is_told(x):
    inp = keras.Input((16, 16, 3))
    unused = layers.Conv2D(4, 3, name="unused")
    unused.build((None, 16, 16, 3))
    h = layers.Conv2D(4, 3, name="used")(inp)
    model = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(h)))
    # a layer that is not part of the graph is not one of the model's layers
    with pytest.raises(ValueError, match="not part of the model"):
        camlens.explain(model, x.astype("float32"), layer=unused)


class _Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.conv = layers.Conv2D(4, 3, activation="relu", name="conv")
        self.spare = layers.Conv2D(4, 3, name="spare")  # tracked, never called
        self.gap = layers.GlobalAveragePooling2D()
        self.fc = layers.Dense(3, activation="softmax", name="fc")

    def call(self, x):
        return self.fc(self.gap(self.conv(x)))


def test_subclassed_model_and_a_layer_it_never_calls():
    model = _Subclassed()
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    model(x)
    model.spare.build((None, 12, 12, 3))
    maps = camlens.explain(model, x, method="cam")
    assert maps.shape == (2, 12, 12)
    assert torch.allclose(maps, camlens.explain(model, x, method="gradcam"), atol=1e-6)
    with pytest.raises(ValueError, match=r"'spare' was not called.*model.summary"):
        camlens.explain(model, x, layer="spare")


def test_inputs_in_the_wrong_layout_are_told(twins, x):
    km, _ = twins
    with pytest.raises(ValueError, match=r"look channels-first.*\(0, 2, 3, 1\)"):
        camlens.explain(km, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with pytest.raises(ValueError, match="without a batch dimension.*x\\[None\\]"):
        camlens.explain(km, x[0])
    with pytest.raises(ValueError, match="do not fit.*resize"):
        camlens.explain(km, np.zeros((1, 20, 16, 3)))
    with pytest.raises(TypeError, match="floating point"):
        camlens.explain(km, x.astype(np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        bad = x.copy()
        bad[0, 0, 0, 0] = np.nan
        camlens.explain(km, bad)


def test_inputs_as_torch_and_list(twins, x):
    km, _ = twins
    ref = camlens.explain(km, x)
    assert torch.equal(camlens.explain(km, torch.from_numpy(x)), ref)
    assert torch.equal(camlens.explain(km, list(x)), ref)


def test_torch_only_options_are_refused(twins, x):
    km, _ = twins
    with pytest.raises(ValueError, match="training=False"):
        camlens.explain(km, x, eval_mode=False)
    with pytest.raises(ValueError, match="training=False"):
        camlens.compare(km, x, ["gradcam"], eval_mode=False)


def _keras_state(model):
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "trainable": [(layer.name, layer.trainable) for layer in model.layers],
        "activations": [(layer.name, getattr(layer, "activation", None))
                        for layer in model.layers],
        "calls": [(layer.name, "call" in vars(layer)) for layer in model.layers],
        "hooks": [(layer.name, len(layer._forward_hooks)) for layer in model.layers],
        "requires_grad": [w.value.requires_grad for w in model.weights],
        "grads": [w.value.grad for w in model.weights],
    }


def _same(a, b):
    assert a["trainable"] == b["trainable"]
    assert a["activations"] == b["activations"]
    assert a["calls"] == b["calls"]
    assert a["hooks"] == b["hooks"]
    assert a["requires_grad"] == b["requires_grad"]
    assert all(g is None for g in b["grads"])
    assert all(np.array_equal(p, q) for p, q in zip(a["weights"], b["weights"]))


def test_model_untouched_after_success_and_error(x):
    km = keras_twin()
    km.get_layer("conv1").trainable = False  # a mix of flags, kept as it is
    before = _keras_state(km)
    camlens.compare(km, x, ["gradcam", "cam", "scorecam", "ablationcam", "guided-backprop",
                            "fullgrad", "shapleycam"], layer="relu2")
    _same(before, _keras_state(km))

    def broken(output):
        raise RuntimeError("boom")

    for method in ("gradcam", "scorecam", "guided-backprop"):
        with pytest.raises(RuntimeError, match="boom"):
            camlens.explain(km, x, method=method, layer="relu2", target=broken)
        _same(before, _keras_state(km))
    with pytest.raises(KeyboardInterrupt):
        def interrupt(output):
            raise KeyboardInterrupt
        camlens.explain(km, x, method="gradcam", target=interrupt)
    _same(before, _keras_state(km))
    assert km.get_layer("fc").activation is keras.activations.softmax


def test_softmax_layer_and_activation_layer_are_explained_on_logits(x):
    km = keras_twin()
    inp = km.input
    logits_model = keras.Model(inp, km.get_layer("gap").output)
    dense = layers.Dense(5, dtype="float64", name="head")
    for last in (layers.Softmax(dtype="float64"), layers.Activation("softmax", dtype="float64")):
        model = keras.Model(inp, last(dense(logits_model.output)))
        with camlens.Explainer(model, "gradcam", layer="relu2") as explainer:
            explainer(x)
            logits = dense(logits_model(x))
            assert torch.allclose(explainer.last_output, logits.detach(), atol=1e-12)
        assert "call" not in vars(last)
        probs = np.asarray(model(x).detach())
        assert np.allclose(probs.sum(1), 1)


def test_softmax_target_explains_probabilities(twins, x):
    km, tm = twins
    got = camlens.explain(km, x, target=camlens.SoftmaxTarget(2), layer="relu2")
    want = camlens.explain(tm, _cf(x), target=camlens.SoftmaxTarget(2), layer="relu2")
    logit = camlens.explain(km, x, target=2, layer="relu2")
    assert float((got - logit).abs().max()) > 1e-3  # probabilities are not the logits
    assert float((got - want).abs().max()) < 1e-6


def test_fullgrad_refuses_biases_hidden_inside_activations():
    inp = keras.Input((16, 16, 3))
    h = layers.Conv2D(4, 3, activation="relu", name="c")(inp)
    model = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype("float32")
    with pytest.raises(ValueError, match="'c' applies relu inside"):
        camlens.explain(model, x, method="fullgrad")
    assert camlens.explain(model, x, method="gradcam").shape == (1, 16, 16)


def test_metrics_take_keras_models(twins, x):
    km, tm = twins
    maps = camlens.explain(tm, _cf(x), layer="relu2").double()
    for fn in (metrics.deletion, metrics.insertion):
        a = fn(km, x, maps, step=32)
        b = fn(tm, _cf(x), maps, step=32)
        assert torch.allclose(a, b, atol=1e-9)
    a = metrics.confidence_change(km, x, maps)
    b = metrics.confidence_change(tm, _cf(x), maps)
    assert torch.allclose(a.drop, b.drop, atol=1e-9)
    a = metrics.road(km, x, maps, percentiles=(20, 60))
    b = metrics.road(tm, _cf(x), maps, percentiles=(20, 60))
    assert torch.allclose(a, b, atol=1e-9)


def test_sanity_check_on_a_keras_copy(twins, x):
    km, tm = twins
    before = [np.array(w) for w in km.get_weights()]
    result = metrics.sanity_check(km, x, "gradcam", layer="relu2")
    assert result.layers == ["fc", "bn2", "conv2", "bn1", "conv1"]
    assert result.spearman.shape == (5, 2)
    # the weights are redrawn on a copy: the caller's model is unchanged
    assert all(np.array_equal(p, np.array(q)) for p, q in zip(before, km.get_weights()))
    # randomising everything decorrelates the map from the original one
    assert float(result.spearman[-1].abs().mean()) < 0.9


def test_other_backends_are_refused(monkeypatch, twins):
    km, _ = twins
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND=torch"):
        camlens.explain(km, images())


def test_unbuilt_and_plain_layers_are_refused():
    seq = keras.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        camlens.explain(seq, np.zeros((1, 4, 4, 3), "float32"))


# ------------------------------------------------------------------------ loading
def _small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    h = layers.Rescaling(1 / 255)(inp)
    h = layers.Conv2D(8, 3, activation="relu", name="c1")(h)
    h = layers.Conv2D(8, 3, strides=2, activation="relu", name="c2")(h)
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_load_model_reads_keras_files(tmp_path, suffix):
    model = _small_model()
    path = tmp_path / f"m{suffix}"
    model.save(path)
    loaded, pre, labels = camlens.load_model(str(path))
    assert pre.crop == 32 and pre.mean == (0.0,) * 3  # raw 0..255 by default
    assert labels == ["class 0", "class 1", "class 2"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.allclose(np.asarray(loaded(x).detach()), np.asarray(model(x).detach()), atol=1e-6)
    assert torch.allclose(camlens.explain(loaded, x), camlens.explain(model, x), atol=1e-6)
    _, pre, _ = camlens.load_model(str(path), preprocess="caffe")
    assert pre.bgr and pre.crop == 32


def test_load_model_names_a_missing_custom_class(tmp_path):
    @keras.saving.register_keras_serializable(package="camlens_test")
    class Doubler(layers.Layer):
        def call(self, x):
            return x * 2

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(Doubler()(inp))))
    path = tmp_path / "custom.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("camlens_test>Doubler")
    with pytest.raises(ValueError, match=r"custom class '[^']*Doubler'.*custom_objects"):
        camlens.load_model(str(path))
    with pytest.raises(ValueError, match="holds its weights"):
        camlens.load_model(str(path), weights="w.pt")
    with pytest.raises(ValueError, match="does not exist"):
        camlens.load_model(str(tmp_path / "none.keras"))


def test_cli_explains_a_keras_file(tmp_path):
    model = _small_model()
    model.save(tmp_path / "m.keras")
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(tmp_path / "cat.jpg")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("KERAS_BACKEND")  # the command line picks the torch backend itself
    done = subprocess.run(
        [sys.executable, "-m", "camlens", "explain", "cat.jpg", "--model", "m.keras",
         "--method", "all", "--layer", "c2", "--out", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["layer"] == ["c2"]
    written = {p.name for p in (tmp_path / "out").iterdir()}
    for method in summary["methods"]:
        assert f"cat_{method}.png" in written, method
    # the guided methods apply (Keras's relu is torch's relu); fullgrad refuses (relu inside)
    assert "guided-backprop" in summary["methods"]
    assert "fullgrad" in summary["skipped_methods"]
    (tmp_path / "boxes.json").write_text(json.dumps({"cat.jpg": [[60, 10, 400, 300]]}))
    done = subprocess.run(
        [sys.executable, "-m", "camlens", "evaluate", "cat.jpg", "--model", "m.keras",
         "--annotations", "boxes.json", "--method", "gradcam,cam", "--out", "ev"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "gradcam" in json.dumps(table) and "pointing_game" in json.dumps(table)
    done = subprocess.run(
        [sys.executable, "-m", "camlens", "explain", "cat.jpg", "--model", "m.keras",
         "--device", "cuda" if not torch.cuda.is_available() else "mps", "--out", "o2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and "drop --device" in done.stderr


def test_camlens_stays_light_without_keras():
    code = ("import sys, camlens; camlens.explain; "
            "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


def test_missing_keras_names_the_extra(tmp_path):
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "__init__.py").write_text("raise ImportError('no keras here')\n")
    code = "import camlens; camlens.load_model('m.keras')"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert "pip install 'camlens[keras]'" in done.stderr


# ------------------------------------------------------------------------ TensorFlow
_TF_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import numpy as np, torch, keras, camlens
from keras_twins import images, keras_twin, max_differences, torch_twin
assert keras.backend.backend() == "tensorflow"
km = keras_twin(); tm = torch_twin(km); x = images()
km.get_layer("conv1").trainable = False
flags = [l.trainable for l in km.layers]
names = camlens.available_methods()
opts = {{"rise": {{"n_masks": 40, "grid": 4}}, "sscam": {{"num_samples": 2}},
        "iscam": {{"num_samples": 2}}, "smoothgradcam++": {{"num_samples": 2}}}}
before = [np.array(w) for w in km.get_weights()]
got = camlens.compare(km, x, names, layer="relu2", errors="keep", options=opts)
want = camlens.compare(tm, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), names,
                       layer="relu2", errors="keep", options=opts)
result = {{"diffs": max_differences(got, want)}}
result["weights_same"] = all(np.array_equal(a, np.array(b))
                             for a, b in zip(before, km.get_weights()))
result["softmax_back"] = km.get_layer("fc").activation is keras.activations.softmax
result["calls_clean"] = not any("call" in vars(l) for l in km.layers)
result["flags_same"] = flags == [l.trainable for l in km.layers]
xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
maps = camlens.explain(tm, xt, layer="relu2").double()
result["deletion"] = float((camlens.metrics.deletion(km, x, maps, step=32)
                            - camlens.metrics.deletion(tm, xt, maps, step=32)).abs().max())
result["sanity_layers"] = camlens.metrics.sanity_check(km, x, layer="relu2").layers
result["topk"] = float((camlens.explain(km, x, target=camlens.TopK(2), layer="relu2")
    - camlens.explain(tm, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                      target=camlens.TopK(2), layer="relu2")).abs().max())
with camlens.Explainer(km, "gradcam") as e:
    e(x); result["auto"] = e.layer_names
    result["output_graph"] = e.last_output.requires_grad
try:
    camlens.explain(km, x, method="shapleycam")
except ValueError as err:
    result["shapley_error"] = str(err)
print("RESULT" + json.dumps(result))
"""

TF_METHODS = ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise",
              "layercam", "eigencam", "eigengradcam", "fem", "finercam", "scorecam", "sscam",
              "iscam", "ablationcam", "rise", "kpcacam", "randomcam"]


def test_tensorflow_backend_gives_the_torch_twins_maps(tmp_path):
    """The same twin on Keras's TensorFlow backend (a subprocess: the backend is fixed at
    import): the methods the issue lists work and equal the PyTorch maps; the methods
    that need torch-only autograd refuse, naming the torch backend."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(tmp_path),
           "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    script = _TF_SCRIPT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    diffs = result["diffs"]
    for name in TF_METHODS:
        assert not isinstance(diffs[name], dict), (name, diffs[name])
        assert diffs[name] < 1e-6, (name, diffs[name])
    for name in ("shapleycam", "guided-backprop", "guided-gradcam", "fullgrad",
                 "smoothgradcam++"):
        err = diffs[name]["keras_error"]
        assert err and "KERAS_BACKEND=torch" in err, (name, diffs[name])
    assert result["weights_same"] and result["softmax_back"] and result["calls_clean"]
    assert result["flags_same"]
    assert result["deletion"] < 1e-9
    assert result["sanity_layers"] == ["fc", "bn2", "conv2", "bn1", "conv1"]
    assert result["topk"] < 1e-6
    assert result["auto"] == ["relu2"]
    assert result["output_graph"] is False  # the output comes back without its graph
    assert "torch backend" in result["shapley_error"]
