"""Grad-CAM on Keras 3 models: camlens against hand-written bare limits and tf-keras-vis.

Setting: ``keras.applications.VGG16(weights=None)`` seeded with
``keras.utils.set_random_seed`` (no download), layer ``block5_conv3``, a seeded random
batch of images (``vgg16.preprocess_input`` of uniform 0..255 pixels), channels-last
numpy, target = top-1 logit (the final softmax made linear), maps at input size min-max
normalised to [0, 1]. Keras fixes its backend at import, so every backend runs in a child
process of its own (this script re-run with ``--backend``); one plain run does all:

    python bench/bench_keras.py                  # full run: batch 8, 224 x 224, 5 timed rounds
    python bench/bench_keras.py --quick          # smoke run: batch 2, 64 x 64, 2 timed rounds
    python bench/bench_keras.py --backend torch  # one backend only (sections 1 and 3)
    python bench/bench_keras.py --skip-vgg       # section 3 only (--skip-lite0: 1 and 2)
    python bench/bench_keras.py --json out.json  # also write the results as JSON

Sections (per backend process):

1. torch backend, VGG16: camlens Grad-CAM against the bare limit written by hand (forward
   hook on the Keras layer, ``torch.autograd.grad``), goal <= 1.10x;
2. tensorflow backend, VGG16: camlens against a hand-written ``tf.function`` +
   ``GradientTape`` Grad-CAM (goal <= 1.20x) and tf-keras-vis's ``Gradcam``;
3. both backends: the Keras EfficientNet-Lite0 (``camlens._keras_models``, the bundled
   PyTorch weights copied in) against the PyTorch one, forward and camlens Grad-CAM; on
   torch also camlens's Grad-CAM with Keras's own layout copies (the adapter's
   ``native_layout`` switched off: what it saves, side by side).

The first call of every row is an untimed warm-up that gives the maps compared (camlens
must equal the bare limit within 1e-4, else the exit status is 1); then the timed calls
run round-robin (one call of each row per round) and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import load, machine, profile_call

VGG_LAYER = "block5_conv3"
TOL = 1e-4
GOALS = {"torch": 1.10, "tensorflow": 1.20}  # camlens / bare limit, VGG16

# row names (also the JSON keys)
BARE = "bare: no_grad until the layer"
BARE_GRAD = "bare: grad mode throughout"
CL = "camlens Explainer"
CL_EXPLAIN = "camlens.explain (set-up per call)"
BARE_TF = "bare limit (tf.function + GradientTape)"
BARE_EAGER = "bare, eager (no tf.function)"
TKV = "tf-keras-vis Gradcam"


# ----------------------------------------------------------------------------- helpers


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("camlens", "torch", "keras", "tensorflow-cpu", "tensorflow", "tf-keras-vis"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def minmax(maps: Any) -> Any:
    """Min-max normalise each map (B, H, W) of a torch tensor; constant -> 0."""
    import torch

    flat = maps.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    ok = span > 0
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), 0.0)
    return out.view_as(maps)


def as_torch(maps: Any) -> Any:
    import torch

    if isinstance(maps, torch.Tensor):
        return maps.detach().float()
    return torch.from_numpy(np.asarray(maps, dtype=np.float32))


def max_diff(a: Any, b: Any) -> float:
    return float((as_torch(a) - as_torch(b)).abs().max())


def softmax_heads(model: Any) -> list[Any]:
    """The model's output layers with a softmax activation (made linear for the logits)."""
    import keras

    return [layer for layer in model.layers[-1:]
            if getattr(layer, "activation", None) is keras.activations.softmax]


def images(args: argparse.Namespace, kind: str) -> np.ndarray:
    """A seeded random batch (B, S, S, 3) float32, preprocessed for ``kind``."""
    rng = np.random.default_rng(args.seed)
    pixels = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    if kind == "vgg16":
        from keras.applications.vgg16 import preprocess_input

        return np.ascontiguousarray(preprocess_input(pixels), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).astype(np.float32)  # camlens.models.LITE_PREPROCESS


def run_rounds(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, short: dict[str, str]
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Warm-up calls (the first one's outputs are returned), then ``repeats`` rounds of
    one timed call of each row in turn. Prints one progress line per round."""
    first: dict[str, Any] = {}
    for w in range(max(warmup, 1)):
        line = []
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            line.append(f"{short[name]} {time.perf_counter() - t0:.2f}s")
            if w == 0:
                first[name] = out
        print(f"  warm-up {w + 1}: " + ", ".join(line), flush=True)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        line = []
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            line.append(f"{short[name]} {dt:.2f}s")
        print(f"  round {r + 1}/{repeats}: " + ", ".join(line), flush=True)
    return first, times


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                "times_s": [round(v, 5) for v in t]} for n, t in times.items()}


def ratios(rows: dict[str, dict[str, Any]], name: str, ref: str) -> tuple[float, float]:
    """(median ratio, ratio of the fastest calls) of row ``name`` over row ``ref``."""
    return (rows[name]["median_s"] / rows[ref]["median_s"],
            rows[name]["min_s"] / rows[ref]["min_s"])


def goal_line(label: str, ratio: float, ratio_min: float, goal: float) -> str:
    return (f"- {label}: {ratio:.3f}x (goal <= {goal:.2f}x: "
            f"{'met' if ratio <= goal else 'NOT met'}; ratio of the fastest calls "
            f"{ratio_min:.3f}x)")


def print_rows(rows: dict[str, dict[str, Any]], ref: str, ref_label: str) -> None:
    print(f"\n| row | median s/batch | x {ref_label} | min .. max s |")
    print("|---|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n} | {r['median_s']:.4f} | {r['median_s'] / rows[ref]['median_s']:.2f}x "
              f"| {r['min_s']:.4f} .. {r['max_s']:.4f} |")
    print()


def print_checks(checks: list[dict[str, Any]]) -> None:
    print("Correctness (max |difference| of the [0, 1] maps, or of the logits):\n")
    for c in checks:
        tag = "OK" if c["ok"] else ("FAIL" if c["required"] else "differs")
        tol = f", tolerance {c['tol']:g}" if c["required"] else ", for information"
        print(f"- {c['label']}: {c['diff']:.2e} ({tag}{tol})")
    print()


def check(label: str, diff: float, required: bool, tol: float = TOL) -> dict[str, Any]:
    return {"label": label, "diff": diff, "required": required, "tol": tol, "ok": diff <= tol}


def build_vgg16(args: argparse.Namespace) -> Any:
    import keras

    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    model = keras.applications.VGG16(weights=None, input_shape=(args.size, args.size, 3))
    print(f"VGG16 (weights=None, seed {args.seed}) built in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return model


# ----------------------------------------------------------------------------- 1. torch backend


def bare_torch(model: Any, layer_name: str, size: tuple[int, int],
               grad_throughout: bool = False) -> Callable[[np.ndarray], Any]:
    """The minimum a Grad-CAM of a Keras model on the torch backend needs, by hand.

    A forward hook on the Keras layer (a ``torch.nn.Module`` on this backend): the model
    runs under ``no_grad`` up to it, the hook turns its output into a leaf that requires
    grad and switches autograd on, so only the layer -> logits part is recorded. The
    softmax is made linear during the call. ``grad_throughout``: the plain variant, whole
    forward in grad mode (the graph recorded from the input on).
    """
    import keras
    import torch
    import torch.nn.functional as F

    layer = model.get_layer(layer_name)
    heads = softmax_heads(model)

    def run(x: np.ndarray) -> Any:
        xt = torch.from_numpy(x)
        captured: list[Any] = []

        def hook(module: Any, args: Any, out: Any) -> Any:
            if grad_throughout:
                captured.append(out)
                return None
            src = out.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # restored when the no_grad block below exits
            captured.append(src)
            return src

        handle = layer.register_forward_hook(hook)
        saved = [h.activation for h in heads]
        for h in heads:
            h.activation = keras.activations.linear
        try:
            if grad_throughout:
                logits = model(xt, training=False)
            else:
                with torch.no_grad():
                    logits = model(xt, training=False)
        finally:
            for h, a in zip(heads, saved):
                h.activation = a
            handle.remove()
        act = captured[-1]  # (B, h, w, C), channels-last
        top = logits.argmax(dim=1, keepdim=True)
        (grads,) = torch.autograd.grad(logits.gather(1, top).sum(), act)
        with torch.no_grad():
            weights = grads.mean(dim=(1, 2))  # (B, C)
            cam = torch.relu(torch.bmm(act.flatten(1, 2), weights.unsqueeze(2)))  # (B, hw, 1)
            cam = cam.view(act.shape[0], 1, act.shape[1], act.shape[2])
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
            return minmax(cam[:, 0])

    return run


def section_vgg_torch(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import camlens

    print(f"## 1. Keras on torch: VGG16, layer {VGG_LAYER}, batch {args.batch} x "
          f"{args.size} x {args.size} x 3\n")
    print(f"load average at start: {load()}\n", flush=True)
    model = build_vgg16(args)
    x = images(args, "vgg16")
    size = (args.size, args.size)
    explainer = camlens.Explainer(model, "gradcam", layer=VGG_LAYER)
    bare = bare_torch(model, VGG_LAYER, size)
    bare_grad = bare_torch(model, VGG_LAYER, size, grad_throughout=True)
    fns = {
        BARE: lambda: bare(x),
        BARE_GRAD: lambda: bare_grad(x),
        CL: lambda: explainer(x),
        CL_EXPLAIN: lambda: camlens.explain(model, x, method="gradcam", layer=VGG_LAYER),
    }
    short = {BARE: "bare", BARE_GRAD: "bare-grad", CL: "camlens", CL_EXPLAIN: "explain"}
    first, times = run_rounds(fns, args.warmup, args.repeats, short)
    rows = summarise(times)
    # the bare limit is the faster of the two hand-written versions (both give the same maps)
    ref = min((BARE, BARE_GRAD), key=lambda n: rows[n]["median_s"])
    zero = int((as_torch(first[BARE]).flatten(1).amax(1) == 0).sum())
    checks = [
        check("camlens Explainer vs bare limit", max_diff(first[CL], first[BARE]), True),
        check("camlens.explain vs bare limit", max_diff(first[CL_EXPLAIN], first[BARE]), True),
        check("bare (grad throughout) vs bare limit", max_diff(first[BARE_GRAD], first[BARE]),
              True),
    ]
    if zero == args.batch:
        checks.append(check("all maps are zero (degenerate comparison)", 1.0, True))
    print_rows(rows, ref, "bare limit")
    print(f"maps shape {tuple(as_torch(first[CL]).shape)}, all-zero maps in the batch: {zero}; "
          f"bare limit = the faster of the two bare rows: {ref!r}\n")
    print_checks(checks)
    ratio, ratio_min = ratios(rows, CL, ref)
    ratio_bare = rows[BARE]["median_s"] / rows[BARE_GRAD]["median_s"]
    ratio_explain = ratios(rows, CL_EXPLAIN, ref)[0]
    goal = GOALS["torch"]
    print(goal_line("camlens / bare limit", ratio, ratio_min, goal))
    print(f"- camlens.explain / bare limit: {ratio_explain:.3f}x; bare no_grad-until-layer / "
          f"grad-throughout: {ratio_bare:.3f}x")
    print(f"\nload average at end: {load()}\n", flush=True)
    out["vgg16"] = {"rows": rows, "reference": ref, "checks": checks, "ratio": ratio,
                    "ratio_of_minima": ratio_min, "ratio_explain": ratio_explain, "goal": goal,
                    "zero_maps": zero, "bare_no_grad_over_grad": ratio_bare}
    if args.profile == "always" or (args.profile == "auto" and ratio > goal):
        profile_call("camlens Explainer, Keras VGG16 on torch", lambda: explainer(x))
        profile_call("bare limit, Keras VGG16 on torch", lambda: bare(x))


# ----------------------------------------------------------------------------- 2. TF backend


def bare_tf(model: Any, layer_name: str, size: tuple[int, int],
            compiled: bool = True) -> Callable[[np.ndarray], Any]:
    """Grad-CAM by hand on TensorFlow: a clone of the model with linear logits, a sub-model
    with two outputs [layer output, logits] built once, the whole pass in one
    ``tf.function`` (traced once: fixed input signature).

    ``compiled=False``: the least an eager Grad-CAM needs, to tell graph execution from
    camlens' own work (camlens runs the model eagerly, to reach its layers): the layers of
    the chain (VGG16 is one) called in turn inside a tape that watches nothing until the
    layer's output, so only the layer -> logits part is recorded.
    """
    import keras
    import tensorflow as tf

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for head in softmax_heads(clone):
        head.activation = keras.activations.linear
    sub = keras.Model(clone.inputs, [clone.get_layer(layer_name).output, clone.outputs[0]])
    chain = [layer for layer in clone.layers if type(layer).__name__ != "InputLayer"]
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)

    def forward_eager(x: Any, tape: Any) -> tuple[Any, Any]:
        act = None
        for layer in chain:
            x = layer(x, training=False)
            if layer.name == layer_name:
                act = x
                tape.watch(act)
        return act, x

    def gradcam(x: Any) -> Any:
        with tf.GradientTape(watch_accessed_variables=compiled) as tape:
            act, logits = sub(x, training=False) if compiled else forward_eager(x, tape)
            top = tf.argmax(logits, axis=1)
            score = tf.reduce_sum(tf.gather(logits, top, axis=1, batch_dims=1))
        grads = tape.gradient(score, act)
        weights = tf.reduce_mean(grads, axis=(1, 2))  # (B, C)
        cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", act, weights))
        up = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]  # half-pixel
        lo = tf.reduce_min(up, axis=(1, 2), keepdims=True)
        span = tf.reduce_max(up, axis=(1, 2), keepdims=True) - lo
        ok = span > 0
        return tf.where(ok, (up - lo) / tf.where(ok, span, tf.ones_like(span)), 0.0)

    fn = tf.function(gradcam, input_signature=[spec]) if compiled else gradcam
    return lambda x: fn(tf.constant(x)).numpy()


def tf_keras_vis_gradcam(model: Any, top1: list[int]) -> Callable[[np.ndarray], Any]:
    """tf-keras-vis ``Gradcam`` created once (it clones the model and makes its softmax
    linear); the top-1 classes are computed before timing (its score needs them given)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    score = CategoricalScore(top1)
    return lambda x: gradcam(score, x, penultimate_layer=VGG_LAYER)


def section_vgg_tf(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import tensorflow as tf
    import torch.nn.functional as F

    import camlens

    print(f"## 2. Keras on TensorFlow: VGG16, layer {VGG_LAYER}, batch {args.batch} x "
          f"{args.size} x {args.size} x 3\n")
    print(f"load average at start: {load()}\n", flush=True)
    model = build_vgg16(args)
    x = images(args, "vgg16")
    size = (args.size, args.size)
    explainer = camlens.Explainer(model, "gradcam", layer=VGG_LAYER)
    bare = bare_tf(model, VGG_LAYER, size)
    bare_eager = bare_tf(model, VGG_LAYER, size, compiled=False)
    fns: dict[str, Callable[[], Any]] = {
        BARE_TF: lambda: bare(x),
        BARE_EAGER: lambda: bare_eager(x),
        CL: lambda: explainer(x),
        CL_EXPLAIN: lambda: camlens.explain(model, x, method="gradcam", layer=VGG_LAYER),
    }
    short = {BARE_TF: "bare-tf", BARE_EAGER: "bare-eager", CL: "camlens", CL_EXPLAIN: "explain",
             TKV: "tf-keras-vis"}
    tkv_status = "runnable"
    try:  # tf-keras-vis is written for tf.keras 2; see whether it runs on Keras 3
        top1 = [int(i) for i in np.argmax(model(tf.constant(x), training=False), axis=1)]
        tkv = tf_keras_vis_gradcam(model, top1)
        tkv(x)
        fns[TKV] = lambda: tkv(x)
    except Exception as err:  # report whatever it raises
        tkv_status = f"not runnable ({type(err).__name__}: {err})"
        print(f"tf-keras-vis: {tkv_status}\n")
    first, times = run_rounds(fns, args.warmup, args.repeats, short)
    rows = summarise(times)
    zero = int((as_torch(first[BARE_TF]).flatten(1).amax(1) == 0).sum())
    checks = [
        check("camlens Explainer vs bare limit (TF)", max_diff(first[CL], first[BARE_TF]), True),
        check("camlens.explain vs bare limit (TF)", max_diff(first[CL_EXPLAIN], first[BARE_TF]),
              True),
        check("bare eager vs bare limit (TF)", max_diff(first[BARE_EAGER], first[BARE_TF]), True),
    ]
    if zero == args.batch:
        checks.append(check("all maps are zero (degenerate comparison)", 1.0, True))
    if TKV in first:
        # tf-keras-vis upsamples with scipy.ndimage.zoom(order=1): corner-aligned bilinear,
        # and divides by (max - min + 1e-7); compare with camlens' layer-size maps upsampled
        # the same way, and with camlens' own (half-pixel) maps
        small = explainer(x, size=None, normalize=False)
        aligned = minmax(F.interpolate(small[:, None], size=size, mode="bilinear",
                                       align_corners=True)[:, 0])
        tkv_maps = minmax(as_torch(first[TKV]))
        checks.append(check("tf-keras-vis (renormalised) vs camlens upsampled corner-aligned",
                            max_diff(tkv_maps, aligned), False))
        checks.append(check("tf-keras-vis (renormalised) vs camlens (half-pixel upsampling)",
                            max_diff(tkv_maps, first[CL]), False))
    print_rows(rows, BARE_TF, "bare limit")
    print(f"maps shape {tuple(as_torch(first[CL]).shape)}, all-zero maps in the batch: {zero}; "
          f"tf-keras-vis: {tkv_status}\n")
    print_checks(checks)
    ratio, ratio_min = ratios(rows, CL, BARE_TF)
    ratio_explain = ratios(rows, CL_EXPLAIN, BARE_TF)[0]
    ratio_eager = ratios(rows, CL, BARE_EAGER)
    goal = GOALS["tensorflow"]
    print(goal_line("camlens / bare limit (TF)", ratio, ratio_min, goal))
    print(f"- camlens.explain / bare limit: {ratio_explain:.3f}x; camlens / bare run eagerly: "
          f"{ratio_eager[0]:.3f}x (fastest calls {ratio_eager[1]:.3f}x); bare eager / "
          f"tf.function: {ratios(rows, BARE_EAGER, BARE_TF)[0]:.3f}x")
    if TKV in rows:
        print(f"- tf-keras-vis / camlens: {rows[TKV]['median_s'] / rows[CL]['median_s']:.2f}x")
    print(f"\nload average at end: {load()}\n", flush=True)
    out["vgg16"] = {"rows": rows, "reference": BARE_TF, "checks": checks, "ratio": ratio,
                    "ratio_of_minima": ratio_min, "ratio_explain": ratio_explain, "goal": goal,
                    "ratio_over_eager": ratio_eager[0], "zero_maps": zero,
                    "tf_keras_vis": tkv_status}
    if args.profile == "always" or (args.profile == "auto" and ratio > goal):
        profile_call("camlens Explainer, Keras VGG16 on TensorFlow", lambda: explainer(x))
        profile_call("bare limit, Keras VGG16 on TensorFlow", lambda: bare(x))
        profile_call("bare run eagerly, Keras VGG16 on TensorFlow", lambda: bare_eager(x))


# ----------------------------------------------------------------------------- 3. Lite0


def section_lite0(args: argparse.Namespace, out: dict[str, Any], backend: str) -> None:
    import keras
    import torch

    import camlens

    print(f"## 3. EfficientNet-Lite0: Keras ({backend} backend) vs PyTorch, batch "
          f"{args.batch} x {args.size} x {args.size} x 3\n")
    print(f"load average at start: {load()}\n", flush=True)
    torch_model = camlens.load_model("efficientnet-lite0")[0]
    try:
        from camlens._keras_models import LAST_CONV_LAYER, efficientnet_lite0_keras
    except ImportError as err:
        msg = (f"Keras EfficientNet-Lite0 not available: camlens._keras_models."
               f"efficientnet_lite0_keras cannot be imported ({err}); section skipped")
        print(msg + "\n")
        out["lite0"] = {"skipped": msg}
        return
    t0 = time.perf_counter()
    keras_model = efficientnet_lite0_keras(torch_model)
    print(f"Keras Lite0 built and weights copied in {time.perf_counter() - t0:.1f} s\n",
          flush=True)
    x = images(args, "lite0")
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels-first view, NHWC memory
    if backend == "tensorflow":
        import tensorflow as tf

        x_keras = tf.constant(x)
    else:
        x_keras = torch.from_numpy(x)

    def torch_forward() -> Any:
        with torch.no_grad():
            return torch_model(x_torch)

    def keras_forward() -> Any:
        with torch.no_grad():
            y = keras_model(x_keras, training=False)
        return y if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))

    pt_fwd, pt_cam = "PyTorch Lite0 forward", "PyTorch Lite0 camlens gradcam (layer auto)"
    k_fwd = f"Keras Lite0 ({backend}) forward"
    k_cam = f"Keras Lite0 ({backend}) camlens gradcam ({LAST_CONV_LAYER})"
    k_copies = f"Keras Lite0 ({backend}) camlens gradcam, Keras's layout copies"

    def keras_cam() -> Any:
        return camlens.explain(keras_model, x, method="gradcam", layer=LAST_CONV_LAYER)

    fns = {
        pt_fwd: torch_forward,
        k_fwd: keras_forward,
        pt_cam: lambda: camlens.explain(torch_model, x_torch, method="gradcam"),
        k_cam: keras_cam,
    }
    short = {pt_fwd: "pt-fwd", k_fwd: "keras-fwd", pt_cam: "pt-cam", k_cam: "keras-cam",
             k_copies: "keras-cam-copies"}
    pairs = [(pt_fwd, pt_fwd), (k_fwd, pt_fwd), (pt_cam, pt_cam), (k_cam, pt_cam)]
    if backend == "torch":  # the adapter without its channels-first calls, as before
        fns[k_copies] = lambda: with_keras_layout(keras_cam)
        pairs.append((k_copies, pt_cam))
    first, times = run_rounds(fns, args.warmup, args.repeats, short)
    rows = summarise(times)
    checks = [
        check("Keras vs PyTorch logits", max_diff(first[k_fwd], first[pt_fwd]), False),
        check("Keras vs PyTorch Grad-CAM maps", max_diff(first[k_cam], first[pt_cam]), False),
    ]
    if k_copies in first:
        checks.append(check("Keras Grad-CAM with and without the layout copies",
                             max_diff(first[k_cam], first[k_copies]), True))
    print("\n| row | median s/batch | Keras / PyTorch | min .. max s |")
    print("|---|---:|---:|---:|")
    for n, ref in pairs:
        r = rows[n]
        print(f"| {n} | {r['median_s']:.4f} | {r['median_s'] / rows[ref]['median_s']:.2f}x "
              f"| {r['min_s']:.4f} .. {r['max_s']:.4f} |")
    print()
    print_checks(checks)
    print(f"load average at end: {load()}\n", flush=True)
    out["lite0"] = {"rows": rows, "checks": checks, "keras_backend": keras.backend.backend(),
                    "pairs": pairs,
                    "forward_ratio": rows[k_fwd]["median_s"] / rows[pt_fwd]["median_s"],
                    "gradcam_ratio": rows[k_cam]["median_s"] / rows[pt_cam]["median_s"]}
    if k_copies in rows:
        out["lite0"]["gradcam_ratio_with_copies"] = (rows[k_copies]["median_s"]
                                                     / rows[pt_cam]["median_s"])
    if args.profile == "always":
        profile_call("camlens gradcam, Keras Lite0", keras_cam)


def with_keras_layout(fn: Callable[[], Any]) -> Any:
    """``fn()`` with the Keras adapter calling convolutions and pooling in Keras's own way
    (a copy of the activations to channels-first memory and back per layer): the cost the
    adapter's ``native_layout`` saves, measured side by side."""
    from contextlib import nullcontext

    from camlens._adapters._keras import KerasModel

    saved = KerasModel.native_layout
    KerasModel.native_layout = lambda self: nullcontext()  # type: ignore[method-assign]
    try:
        return fn()
    finally:
        KerasModel.native_layout = saved  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- processes


def child(args: argparse.Namespace) -> int:
    """One backend's sections, in this process (Keras imported after KERAS_BACKEND is set)."""
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    if args.backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    if keras.backend.backend() != args.backend:
        print(f"Keras runs on {keras.backend.backend()!r}, not {args.backend!r}: KERAS_BACKEND "
              "was fixed before this process imported Keras")
        return 2
    print(f"# backend process: Keras {keras.__version__} on {args.backend}, torch threads "
          f"{torch.get_num_threads()}, pid {os.getpid()}\n", flush=True)
    out: dict[str, Any] = {"backend": args.backend}
    if args.skip_vgg:
        pass
    elif args.backend == "torch":
        section_vgg_torch(args, out)
    else:
        section_vgg_tf(args, out)
    if not args.skip_lite0:
        section_lite0(args, out, args.backend)
    if args.child_json:
        with open(args.child_json, "w") as f:
            json.dump(out, f, indent=1)
    failed = [c for s in ("vgg16", "lite0") for c in out.get(s, {}).get("checks", [])
              if c["required"] and not c["ok"]]
    return 1 if failed else 0


def summary(results: dict[str, Any]) -> bool:
    """The compact table of every backend's results; returns whether all required checks
    passed."""
    print("## Summary\n")
    print("| backend | model | row | median s/batch | x reference | ratio over |")
    print("|---|---|---|---:|---:|---|")
    ok = True
    for backend, res in results.items():
        if "error" in res:
            print(f"| {backend} | — | process failed: {res['error']} | | | |")
            ok = False
            continue
        vgg = res.get("vgg16", {})
        ref = vgg.get("reference")
        for n, r in vgg.get("rows", {}).items():
            print(f"| {backend} | VGG16 | {n} | {r['median_s']:.3f} "
                  f"| {r['median_s'] / vgg['rows'][ref]['median_s']:.2f}x | bare limit |")
        lite = res.get("lite0", {})
        if "skipped" in lite:
            print(f"| {backend} | Lite0 | {lite['skipped']} | | | |")
        rows = lite.get("rows", {})
        for n, ref_n in lite.get("pairs", []):  # each row over its PyTorch row
            r = rows[n]
            print(f"| {backend} | Lite0 | {n} | {r['median_s']:.3f} "
                  f"| {r['median_s'] / rows[ref_n]['median_s']:.2f}x | PyTorch Lite0 |")
    print("\n### Goals and checks\n")
    for backend, res in results.items():
        vgg = res.get("vgg16")
        if not vgg:
            continue
        print(goal_line(f"{backend}: camlens / bare limit", vgg["ratio"],
                        vgg["ratio_of_minima"], vgg["goal"]))
        if "tf_keras_vis" in vgg:
            print(f"- tf-keras-vis: {vgg['tf_keras_vis']}")
        for c in vgg["checks"] + res.get("lite0", {}).get("checks", []):
            if c["required"] and not c["ok"]:
                ok = False
            tag = "OK" if c["ok"] else ("FAIL" if c["required"] else "differs")
            print(f"- {backend}: {c['label']}: {c['diff']:.2e} ({tag})")
    print(f"\nload average at the end: {load()}")
    return ok


def parent(args: argparse.Namespace) -> int:
    print("## Grad-CAM on Keras 3 models: camlens vs bare limits (VGG16, EfficientNet-Lite0)\n")
    print(f"- {versions()}, Python {platform.python_version()}")
    print(f"- machine: {machine()}; threads {args.threads} (torch and "
          f"TensorFlow), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"- load average at start: {load()}; on a busy machine set OMP_WAIT_POLICY=PASSIVE "
          "or --threads 1 (spinning OpenMP threads wait on each other)")
    print(f"- batch {args.batch} x {args.size} x {args.size} x 3, warm-up {args.warmup} "
          f"(the first call gives the compared maps), median of {args.repeats} timed rounds, "
          "round-robin\n", flush=True)
    backends = ["torch", "tensorflow"] if args.backend == "all" else [args.backend]
    results: dict[str, Any] = {}
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "result.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend,
                   "--child-json", path, "--batch", str(args.batch), "--size", str(args.size),
                   "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--seed", str(args.seed),
                   "--profile", args.profile] + (["--skip-lite0"] if args.skip_lite0 else [])
            cmd += ["--skip-vgg"] if args.skip_vgg else []
            env = dict(os.environ, KERAS_BACKEND=backend)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, env=env, check=False).returncode
            print(f"(backend process {backend}: exit status {rc}, "
                  f"{time.perf_counter() - t0:.0f} s)\n", flush=True)
            try:
                with open(path) as f:
                    results[backend] = json.load(f)
            except (OSError, json.JSONDecodeError):
                results[backend] = {"error": f"exit status {rc}, no results"}
    ok = summary(results)
    if args.json:
        meta = {"versions": versions(), "machine": machine(), "threads": args.threads,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "load_end": os.getloadavg(), "batch": args.batch, "size": args.size,
                "repeats": args.repeats, "warmup": args.warmup}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"results written to {args.json}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="image side (VGG16's top needs it fixed)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row (>= 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, 64 x 64, 2 rounds")
    p.add_argument("--backend", choices=["all", "torch", "tensorflow"], default="all")
    p.add_argument("--skip-lite0", action="store_true", help="leave out section 3")
    p.add_argument("--skip-vgg", action="store_true", help="leave out sections 1 and 2")
    p.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                   help="cProfile one camlens call (auto: when a VGG16 goal is not met)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.batch, args.size, args.repeats = 2, 64, 2
    if args.child_json is not None:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
