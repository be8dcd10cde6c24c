"""The captioning and 1-D signal examples: measured behaviour on quickly trained models.

The examples' own building blocks (data, models, training) are imported from
``examples/``; every model trains for a few seconds on one CPU thread from a seed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import camlens
from camlens.targets import TokenTarget

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` under a private module name (dataclasses need it in
    ``sys.modules``)."""
    key = f"_camlens_example_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


captioning = _load("captioning")
signal_1d = _load("signal_1d")


@pytest.fixture(scope="module")
def captioner():
    model, _ = captioning.build(quick=True, seed=0, log=False)
    return model, captioning.held_out(96, seed=0)


@pytest.fixture(scope="module")
def signal_net():
    model, _ = signal_1d.build(quick=True, seed=0, log=False)
    return model, signal_1d.held_out(128, seed=0)


# ----------------------------------------------------------------------------- captioning
def test_caption_model_returns_token_logits(captioner):
    model, data = captioner
    with torch.no_grad():
        logits = model(captioning.normalise(data.images[:4]))
    assert logits.shape == (4, captioning.STEPS, len(captioning.VOCAB))


def test_steps_in_one_pass_equal_single_step_calls(captioner):
    model, data = captioner
    x = captioning.normalise(data.images[:16])
    both = camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(step=[0, 1]))
    first = camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(0))
    second = camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(1))
    assert both.shape == (16, 2, 64, 96)
    assert first.shape == (16, 64, 96)
    torch.testing.assert_close(both[:, 0], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[:, 1], second, atol=1e-5, rtol=0)
    assert not torch.allclose(both[:, 0], both[:, 1], atol=1e-2)  # different words, maps


def test_token_none_explains_the_generated_word(captioner):
    model, data = captioner
    x = captioning.normalise(data.images[:8])
    with torch.no_grad():
        words = model(x).argmax(-1)
    same = words[:, 0].eq(words[0, 0])  # images whose first word is image 0's
    free = camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(0))
    fixed = camlens.explain(model, x, layer=captioning.LAYER,
                            target=TokenTarget(0, token=int(words[0, 0])))
    torch.testing.assert_close(free[same], fixed[same], atol=1e-5, rtol=0)


def test_word_maps_point_at_their_digit(captioner):
    # measured with the quick model on these 96 canvases: gradcam hits about 65 % (left)
    # and 65 % (right), chance about 13 %; hirescam and layercam above 90 %
    model, data = captioner
    base = captioning.chance(data)
    maps = captioning.explain_words(model, data.images, method="gradcam")
    assert maps.shape == (96, 2, 64, 96)
    hits = {k: float(v.float().mean()) for k, v in captioning.pointing(maps, data).items()}
    assert max(base.values()) < 0.2
    assert hits["word 0 -> left"] > base["left"] + 0.2, hits
    assert hits["word 1 -> right"] > base["right"] + 0.2, hits
    assert hits["word 0 -> left"] > hits["word 0 -> right (wrong)"], hits
    assert hits["word 1 -> right"] > hits["word 1 -> left (wrong)"], hits
    hires_maps = captioning.explain_words(model, data.images, method="hirescam")
    hires = captioning.pointing(hires_maps, data)
    assert float(hires["word 0 -> left"].float().mean()) > 0.6
    assert float(hires["word 1 -> right"].float().mean()) > 0.6


def test_caption_picture(captioner):
    model, data = captioner
    sheet = captioning.picture(model, data, [0, 1])
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.shape[0] > 2 * 128


# ----------------------------------------------------------------------------- TokenTarget
def test_token_target_step_out_of_range(captioner):
    model, data = captioner
    x = captioning.normalise(data.images[:2])
    with pytest.raises(ValueError, match=r"step 3 is out of range for 3 decoding steps"):
        camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(step=[0, 3]))
    with pytest.raises(ValueError, match=r"step -4 is out of range"):
        camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(-4))


def test_token_target_token_out_of_range(captioner):
    model, data = captioner
    x = captioning.normalise(data.images[:2])
    with pytest.raises(ValueError, match=r"token 12 is out of range for a vocabulary of 12"):
        camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(0, token=12))
    with pytest.raises(ValueError, match=r"token -1 is out of range"):
        camlens.explain(model, x, layer=captioning.LAYER, target=TokenTarget(0, token=-1))


def test_token_target_needs_sequence_logits(signal_net):
    model, data = signal_net
    with pytest.raises(ValueError, match=r"TokenTarget needs \(B, steps, vocabulary\) logits"
                                         r".*shape \(2, 3\)"):
        camlens.explain(model, data.x[:2], layer=signal_1d.LAYER, target=TokenTarget(0))


def test_token_target_bad_arguments():
    with pytest.raises(ValueError, match="step must be an int or a non-empty sequence"):
        TokenTarget([])
    with pytest.raises(ValueError, match="one int per step"):
        TokenTarget([0, 1], token=[3])


# ----------------------------------------------------------------------------- 1-D signals
def test_signal_maps_are_1d_and_inside_the_pattern(signal_net):
    # measured with the quick model: energy inside the pattern about 85 % for all three
    # methods, against the uniform share 48 / 256 = 18.75 %
    model, data = signal_net
    uniform = signal_1d.PATTERN / signal_1d.LENGTH
    with torch.no_grad():
        accuracy = float(model(data.x).argmax(1).eq(data.y).float().mean())
    assert accuracy > 0.9
    for method in signal_1d.METHODS:
        maps = camlens.explain(model, data.x, method=method, layer=signal_1d.LAYER,
                               target=data.y.tolist())
        assert maps.shape == (128, signal_1d.LENGTH), method
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        share = signal_1d.energy_inside(maps, data.span)
        assert float(share.mean()) > 2.5 * uniform, (method, float(share.mean()))
        assert float((share > uniform).float().mean()) > 0.8, method


def test_signal_cam_equals_gradcam_on_gap_linear(signal_net):
    model, data = signal_net
    x, y = data.x[:16], data.y[:16].tolist()
    maps = camlens.compare(model, x, ["gradcam", "cam"], layer=signal_1d.LAYER, target=y)
    torch.testing.assert_close(maps["gradcam"], maps["cam"], atol=1e-5, rtol=0)


def test_energy_inside_by_hand():
    maps = torch.tensor([[0.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    span = torch.tensor([[1, 3], [0, 2]])
    torch.testing.assert_close(signal_1d.energy_inside(maps, span), torch.tensor([0.5, 0.0]))


def test_signal_pictures(signal_net):
    _, data = signal_net
    maps = {"gradcam": torch.rand(4, signal_1d.LENGTH)}
    pil = signal_1d._picture_pil(data, maps, [0, 1])
    assert pil.dtype == np.uint8 and pil.shape[2] == 3 and pil.shape[0] > 100
    plotted = signal_1d.picture(data, maps, [0, 1])
    assert plotted.dtype == np.uint8 and plotted.shape[2] == 3
