"""Vision transformers: ``layer="auto"``, tokens and channels-last, every method, references.

Models (seeded random weights, nothing downloaded): torchvision ViT-B/16 and Swin-T;
Hugging Face ViT, DeiT (class + distillation token) and Swin (tokens without a class
token, stages that downsample); timm ViT, DeiT (distilled) and Swin (channels-last).
Swin-T and the Hugging Face and timm models (small configurations) run on non-square
64 x 96 inputs, so that the token grids are not square either; ViT-B/16 needs 224 x 224.

For every family ``layer="auto"`` must pick the last block's first norm, and its map must
equal the map of that layer with the reshape that pytorch-grad-cam's tutorial writes by
hand (drop the leading tokens, lay the patches on the grid, channels first).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import pytorch_grad_cam as pgc
import timm
import torch
from conftest import Zoo, assert_close_maps
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_contract import FAST
from torch import Tensor, nn
from torchvision import models as tvm
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

import camlens
from camlens._explainer import _own_pass
from camlens._layers import (
    _token_grid,
    from_channels_first,
    output_tensor,
    to_channels_first,
)
from camlens._registry import create_method, method_class

SEED = 0
SMALL = (64, 96)  # Hugging Face and timm inputs: a 4 x 6 grid of 16 px patches


def tokens(extra: int, h: int, w: int) -> Callable[[Tensor], Tensor]:
    """pytorch-grad-cam's ViT reshape: drop ``extra`` leading tokens, (B, C, h, w)."""

    def reshape(t: Tensor) -> Tensor:
        return t[:, extra:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def channels_last(t: Tensor) -> Tensor:
    """pytorch-grad-cam's reshape for a Swin block's (B, H, W, C) output."""
    return t.permute(0, 3, 1, 2)


def _hf_small() -> dict:
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=5, image_size=SMALL, patch_size=16)


def _build(name: str) -> nn.Module:
    torch.manual_seed(SEED)
    if name == "torchvision-vit":
        model: nn.Module = tvm.vit_b_16(weights=None)
        # torchvision's ViT head starts at zero: every gradient would vanish.
        nn.init.normal_(model.heads.head.weight, std=0.02)
    elif name == "torchvision-swin":
        model = tvm.swin_t(weights=None)
    elif name == "hf-vit":
        model = ViTForImageClassification(ViTConfig(**_hf_small()))
    elif name == "hf-deit":
        model = DeiTForImageClassificationWithTeacher(DeiTConfig(**_hf_small()))
    elif name == "hf-swin":
        model = SwinForImageClassification(SwinConfig(
            image_size=SMALL, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2],
            window_size=4, num_labels=5))
    elif name == "timm-vit":
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SMALL,
                                  depth=2, num_classes=5)
    elif name == "timm-deit":
        model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                                  img_size=SMALL, depth=2, num_classes=5)
    elif name == "timm-swin":
        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
                                  img_size=SMALL, window_size=(2, 3), embed_dim=16,
                                  depths=(1, 1, 1, 2), num_heads=(1, 1, 2, 2), num_classes=5)
    else:
        raise KeyError(name)
    return model.eval()


# name -> (input size, the layer auto must pick, the reference reshape of that layer)
FAMILIES: dict[str, tuple[tuple[int, int], str, Callable[[Tensor], Tensor]]] = {
    "torchvision-vit": ((224, 224), "encoder.layers.encoder_layer_11.ln_1", tokens(1, 14, 14)),
    # Swin-T on a non-square input: stage grids 16x24, 8x12, 4x6, 2x3 (windows padded)
    "torchvision-swin": (SMALL, "features.7.1.norm1", channels_last),
    "hf-vit": (SMALL, "vit.layers.1.layernorm_before", tokens(1, 4, 6)),
    "hf-deit": (SMALL, "deit.layers.1.layernorm_before", tokens(2, 4, 6)),
    # patches of 4 px: 16 x 24, merged once: 8 x 12, no class token
    "hf-swin": (SMALL, "swin.encoder.layers.1.blocks.1.layernorm_before", tokens(0, 8, 12)),
    "timm-vit": (SMALL, "blocks.1.norm1", tokens(1, 4, 6)),
    "timm-deit": (SMALL, "blocks.1.norm1", tokens(2, 4, 6)),
    # patches of 4 px, merged three times: a 2 x 3 channels-last grid
    "timm-swin": (SMALL, "layers.3.blocks.1.norm1", channels_last),
}


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo(_build)


def images(name: str, batch: int = 1) -> Tensor:
    size = FAMILIES[name][0]
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(SEED))


# ------------------------------------------------------------------ auto layer and reshape

METHODS = camlens.available_methods()


def _one_pass(name: str) -> bool:
    cls = method_class(name)
    return not (cls.guided or cls.needs_hessian or cls.needs_scorer
                or _own_pass(create_method(name)))


# The methods that share one forward and gradient pass (``camlens.compare``).
SHARED = [m for m in METHODS if _one_pass(m)]
BIG = ("torchvision-vit", "torchvision-swin")


@pytest.fixture(scope="module")
def auto(zoo):
    """Per family: the shared methods' maps with ``layer="auto"`` (ONE pass) and the
    output of the layer auto should pick, captured during that pass."""
    cache: dict[str, tuple[camlens.Comparison, Tensor]] = {}

    def get(name: str) -> tuple[camlens.Comparison, Tensor]:
        if name not in cache:
            model = zoo[name]
            seen: list[Tensor] = []
            layer = model.get_submodule(FAMILIES[name][1])
            handle = layer.register_forward_hook(
                lambda _m, _a, out: seen.append(output_tensor(out)))
            try:
                x = images(name, 1 if name in BIG else 2)
                maps = camlens.compare(model, x, SHARED, errors="keep")
            finally:
                handle.remove()
            cache[name] = (maps, seen[-1].detach())  # seen[0]: auto's probe
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FAMILIES))
def test_auto_picks_the_last_blocks_first_norm_and_reshapes_it(name, auto):
    size, layer, reshape = FAMILIES[name]
    maps, output = auto(name)
    assert maps.layer_names == [layer]
    gradcam = maps["gradcam"]
    assert gradcam.shape == (output.shape[0], *size) and torch.isfinite(gradcam).all()
    flat = gradcam.flatten(1)
    assert (flat.amax(1) > flat.amin(1)).all(), "a constant map proves nothing"
    # the automatic reshape is the one pytorch-grad-cam's users write by hand
    x_shape = (output.shape[0], 3, *size)
    assert torch.equal(to_channels_first(output, x_shape, None), reshape(output))


def test_last_block_output_is_flat_for_a_class_token_head(zoo):
    """Why auto prefers the first norm: after the last block only the class token reaches
    the head, so the gradient at every patch token is zero and so is the Grad-CAM map."""
    model = zoo["hf-vit"]
    x = images("hf-vit", 2)
    flat = camlens.explain(model, x, layer="vit.layers.1", normalize=False)
    assert torch.count_nonzero(flat) == 0
    assert camlens.explain(model, x, normalize=False).flatten(1).amax(1).gt(0).all()


# ------------------------------------------------------------------ every registered method

# Methods that cannot apply to these models, and the reason their error must give.
CANNOT = {
    "cam": "global average pooling",  # no GAP + linear head after the first norm
    "guided-backprop": "needs ReLUs",  # transformers use GELU
    "guided-gradcam": "needs ReLUs",
}
# Methods with passes of their own (fullgrad, finercam, smoothgradcam++, shapleycam,
# guided-gradcam) and perturbation methods (one extra forward per channel or mask) would
# take minutes on ViT-B/16 and Swin-T on a CPU: they run on the small Hugging Face ViT
# and Swin.
OTHERS = [m for m in METHODS if m not in SHARED and m != "guided-backprop"]
def _cases() -> list:
    cases = [pytest.param(n, m, id=f"{n}-{m}") for n in BIG
             for m in [*SHARED, "guided-backprop"]]
    for name in ("hf-vit", "hf-swin"):  # 32 channels: 32 extra forwards per image
        for m in OTHERS:
            cases.append(pytest.param(name, m, id=f"{name}-{m}"))
    return cases


@pytest.mark.parametrize(("name", "method"), _cases())
def test_every_method_gives_maps_or_says_why_not(name, method, zoo, auto):
    x = images(name, 1)
    if method in SHARED:
        result: Tensor | Exception = auto(name)[0][method]
    else:
        try:
            result = camlens.explain(zoo[name], x, method=method, **FAST.get(method, {}))
        except ValueError as err:
            result = err
    if method in CANNOT:
        assert isinstance(result, ValueError), f"{method} on {name}: {result!r}"
        assert CANNOT[method] in str(result), str(result)
        return
    assert isinstance(result, Tensor), f"{method} on {name} raised {result!r}"
    assert result.shape[1:] == x.shape[2:] and result.dtype == torch.float32
    assert torch.isfinite(result).all() and result.min() >= 0 and result.max() <= 1


# ------------------------------------------------------------------ pytorch-grad-cam


class Logits(nn.Module):
    """A Hugging Face model with its logits as output, as pytorch-grad-cam needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


# torchvision's ViT (2 blocks) Grad-CAM at its last ln_1 against pytorch-grad-cam's tutorial
# reshape is in test_crosscheck.py (camlens reshapes automatically there too); the
# families below are the others: channels-last (torchvision, timm), tokens without a class
# token on a non-square grid (Hugging Face Swin), and two leading tokens (DeiT).
CROSS = ["torchvision-swin", "timm-swin", "hf-swin", "hf-deit"]


@pytest.mark.parametrize("name", CROSS)
def test_gradcam_matches_pytorch_grad_cam(name, zoo):
    _, layer, reshape = FAMILIES[name]
    model = zoo[name]
    x = images(name, 2)
    targets = [0, 3]
    ours = camlens.explain(model, x, target=targets)  # layer="auto", automatic reshape
    ref_model = Logits(model) if name.startswith("hf") else model
    module = model.get_submodule(layer)
    with pgc.GradCAM(model=ref_model, target_layers=[module], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    for p in model.parameters():  # pytorch-grad-cam's backward() fills .grad
        p.grad = None
    assert_close_maps(ours, ref, label=f"gradcam {name}", tol=1e-4)


# ------------------------------------------------------------------ shapes and errors


def test_channels_first_with_as_many_channels_as_rows_is_not_read_as_channels_last():
    # (B, C, H, W) with C == H: the old rule (shape[1] == shape[2] != shape[3]) permuted it
    for shape, size in [((2, 14, 14, 20), (224, 320)), ((2, 7, 7, 8), (224, 256)),
                        ((2, 16, 16, 16), (64, 64))]:
        x = torch.randn(shape)
        assert torch.equal(to_channels_first(x, (2, 3, *size), None), x)
        g = torch.randn(shape[0], 3, *shape[1:])
        assert torch.equal(to_channels_first(g, (2, 3, *size), None, lead=2), g)


def test_channels_first_cnn_with_as_many_channels_as_rows_explains_the_same():
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(3, 14, 16, stride=16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(14, 3)).eval()
    x = torch.randn(2, 3, 224, 320)  # conv output (2, 14, 14, 20): C == H
    auto = camlens.explain(model, x, normalize=False)
    as_is = camlens.explain(model, x, layer="1", reshape=lambda t: t, normalize=False)
    torch.testing.assert_close(auto, as_is)


def test_channels_last_on_non_square_inputs():
    for shape, size in [((2, 7, 10, 96), (224, 320)), ((2, 4, 5, 96), (100, 150)),
                        ((2, 8, 7, 768), (228, 226))]:  # Swin's padding rounds up
        x = torch.randn(shape)
        assert torch.equal(to_channels_first(x, (2, 3, *size), None), x.permute(0, 3, 1, 2))


def test_token_grids():
    assert _token_grid((1, 197, 8), (224, 224)) == (1, 14, 14)
    assert _token_grid((1, 198, 8), (224, 224)) == (2, 14, 14)  # DeiT
    assert _token_grid((1, 1 + 4 + 196, 8), (224, 224)) == (5, 14, 14)  # registers
    assert _token_grid((1, 20, 8), (100, 150)) == (0, 4, 5)  # Swin, padded: 100/32, 150/32
    assert _token_grid((1, 6, 8), (64, 64)) == (2, 2, 2)  # not 2 x 3 on a square image
    assert _token_grid((1, 96, 1), (64, 96)) is None  # a pooled (B, C, 1) output
    assert _token_grid((1, 3, 8), (64, 64)) is None


@pytest.mark.parametrize(("layer", "shape"), [("classifier", "(2, 5)"),
                                              ("pool", "(2, 1, 32)")])
def test_a_reshape_that_cannot_be_inferred_names_the_shape_and_reshape(layer, shape, zoo):
    class Pooled(nn.Module):
        """A ViT whose tokens are pooled into one query token before the head."""

        def __init__(self, vit: nn.Module) -> None:
            super().__init__()
            self.vit = vit
            self.pool = nn.MultiheadAttention(32, 2, batch_first=True)
            self.query = nn.Parameter(torch.randn(1, 1, 32))
            self.classifier = nn.Linear(32, 5)

        def forward(self, x: Tensor) -> Tensor:
            t = self.vit(pixel_values=x).last_hidden_state
            pooled, _ = self.pool(self.query.expand(len(t), -1, -1), t, t)
            return self.classifier(pooled[:, 0])

    torch.manual_seed(SEED)
    model = Pooled(zoo["hf-vit"].vit).eval()
    x = images("hf-vit", 2)
    with pytest.raises(ValueError, match="reshape=") as info:
        camlens.explain(model, x, layer=layer)
    assert f"output of shape {shape}" in str(info.value)
    if layer == "pool":  # with a reshape the same layer works: (B, 1, C) -> (B, C, 1, 1)
        maps = camlens.explain(model, x, layer=layer, reshape=lambda t: t.mT.unsqueeze(-1))
        assert maps.shape == (2, *SMALL)


def test_from_channels_first_inverts_to_channels_first():
    size = (2, 3, 64, 96)
    for like in [torch.randn(2, 2 + 24, 8), torch.randn(2, 24, 8), torch.randn(2, 4, 6, 8),
                 torch.randn(2, 8, 4, 6)]:
        cf = to_channels_first(like, size, None)
        assert torch.equal(from_channels_first(cf, like, size), like)
    tokens_ = torch.randn(1, 1 + 24, 8)
    edited = to_channels_first(tokens_, size, None).expand(3, -1, -1, -1).clone()
    edited[1, 5] = 0  # ablate channel 5 of the second copy
    back = from_channels_first(edited, tokens_, size)
    assert back.shape == (3, 25, 8) and torch.equal(back[:, 0], tokens_[:, 0].expand(3, -1))
    assert (back[1, 1:, 5] == 0).all() and torch.equal(back[2], tokens_[0])


def test_vision_transformer_example_writes_its_picture(tmp_path, capsys):
    """examples/vision_transformer.py: auto's layer carries a map, the last block's output
    of a class-token ViT does not (its patch tokens never reach the head)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "vision_transformer.py"
    spec = importlib.util.spec_from_file_location("_example_vision_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    assert (tmp_path / "transformers_layers.png").stat().st_size > 10_000
    peaks = {}
    for line in capsys.readouterr().out.splitlines():
        if "map max" in line:
            words = line.split()
            peaks[(words[0], words[1])] = float(words[-1])
    assert peaks[("ViT-B/16", "encoder.layers.encoder_layer_11.ln_1")] > 0
    assert peaks[("ViT-B/16", "encoder.layers.encoder_layer_11")] == 0.0
    assert peaks[("Swin-T", "features.7.1.norm1")] > 0
