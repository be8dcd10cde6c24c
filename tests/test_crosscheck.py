"""Cross-checks of camlens against independent implementations of the same methods.

References (all installed in the test environment, nothing downloaded):

* pytorch-grad-cam (``pytorch_grad_cam``): every method the two libraries share, on
  resnet18, vgg11 and a small ViT, at input size (its output is always at input size).
* captum ``LayerGradCam``: Grad-CAM on resnet18 and vgg11, upsampled the same way.
* torchcam (``torchcam.methods``): GradCAM, XGradCAM, LayerCAM on all three models and
  CAM on resnet18, at the layer's resolution (torchcam's output resolution).
* pytorch-grad-cam ``XGradCAM`` on mobilenet_v3_small's last Hardswish layer (signed
  activations), with camlens' ``eps=1e-7``.

All models have seeded random weights (``weights=None``) and run in eval mode, in
float64, on one seeded batch of two 128x128 images (224x224 for mobilenet_v3_small);
each image gets its own explicit target class. The ViT is a small one (``VIT``): the
full vit_b_16 at 224 px took most of this module's time. Maps are min-max normalised per
image on both sides before comparing, so only the shape of a map matters, not its scale.

Why float64: in float32 the two sides' activations and gradients differ by rounding
(different kernels, batch shapes, MultiheadAttention's fused path under ``no_grad``),
and where a method divides by nearly cancelling sums (XGrad-CAM on a LayerNorm output)
that showed as 1.7e-5 here (5.5e-5 on vit_b_16 at 224 px), a margin that depends on the
CPU. In float64 those differences vanish; what remains is each library's float32 output
(camlens returns float32 maps, pytorch-grad-cam resizes in float32): at most 2.4e-6 here
(XGrad-CAM on the ViT; every other map 1.7e-6 or less; measured on an AMD EPYC with
AVX-512), so the tolerance is 1e-5.

Where a reference's definition deviates from the paper camlens follows, the test passes
the camlens option that reproduces the reference (``eps=1e-6`` for Grad-CAM++,
``center=True`` for the eigen methods) and the deviation is written next to the test.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from captum.attr import LayerAttribution, LayerGradCam
from conftest import Zoo, assert_close_maps, minmax
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import Tensor, nn
from torchcam import methods as tcm
from torchvision import models as tvm

import camlens
from camlens.methods._base import first_principal_projection

SEED = 0
INPUT_SIZE = 128
# Two different explicit classes, one per image. Neither is an image's top-1 class, and
# both give non-constant maps for every method on every model: with random weights many
# classes have an all-negative Grad-CAM sum on vgg11 (e.g. class 742 for image 1), whose
# map is all zeros after the ReLU and would make the comparison vacuous.
TARGETS = [0, 111]
TOL = 1e-5

# resnet18 "layer4": the last residual stage (512 x 4 x 4 at 128 px), feeding GAP + fc (so
# CAM applies). vgg11 "features.20": the last MaxPool, i.e. the output of the last conv
# block (512 x 4 x 4), the layer pytorch-grad-cam's docs use for VGG (``model.features[-1]``).
# The last conv ("features.18") is not a good target: the in-place ReLU that follows it
# overwrites its output, so hook-based references would read post-ReLU activations with
# pre-ReLU gradients; nothing modifies the MaxPool's output in place.
# vit: the first LayerNorm of the last encoder block (tokens (B, 65, 192); vit_b_16's
# would be encoder_layer_11.ln_1); the references get a reshape that drops the class
# token and lays the 64 patches on 8x8.
LAYERS = {
    "resnet18": "layer4",
    "vgg11": "features.20",
    "vit": "encoder.layers.encoder_layer_1.ln_1",
}
GRID = {"resnet18": 4, "vgg11": 4, "vit": 8}
ALL_MODELS = list(LAYERS)


# torchvision's VisionTransformer as in vit_b_16 (patches of 16 pixels, a class token,
# pre-norm encoder blocks) with ViT-Ti/16's width (192, 3 heads) and 2 blocks instead
# of 12, on 128 x 128 inputs (8 x 8 patches), so that the module runs in seconds.
VIT = dict(patch_size=16, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768)


def vit_reshape(t: Tensor) -> Tensor:
    """(B, 1 + n*n, C) tokens -> (B, C, n, n), class token dropped (row-major patches)."""
    b, n, c = t.shape
    side = int(round((n - 1) ** 0.5))
    return t[:, 1:, :].reshape(b, side, side, c).permute(0, 3, 1, 2)


RESHAPE = {"resnet18": None, "vgg11": None, "vit": vit_reshape}


def _build(name: str) -> nn.Module:
    torch.manual_seed(SEED)
    if name == "vit":
        model = tvm.VisionTransformer(image_size=INPUT_SIZE, **VIT)
    else:
        model = getattr(tvm, name)(weights=None)
    if name == "vit":
        # torchvision initialises the ViT head to zeros: every logit would be 0 and every
        # gradient vanish, so give it seeded random weights.
        with torch.no_grad():
            nn.init.normal_(model.heads.head.weight, std=0.02)
            nn.init.normal_(model.heads.head.bias, std=0.02)
    return model.double().eval()


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo(_build)


def _images(side: int) -> Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(SEED)).double()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return _images(INPUT_SIZE)


@pytest.fixture(scope="module")
def pgc_maps(zoo, images):
    """pytorch-grad-cam's maps, each computed once per module (two tests share some)."""
    cache: dict[tuple[type, str], np.ndarray] = {}

    def get(cam_cls: type, name: str) -> np.ndarray:
        if (cam_cls, name) not in cache:
            cache[cam_cls, name] = run_pgc(cam_cls, zoo, images, name)
        return cache[cam_cls, name]

    return get


# --------------------------------------------------------------------------- helpers


def explain(zoo: Zoo, images: Tensor, name: str, method: str, size="input", **options) -> Tensor:
    maps = camlens.explain(
        zoo[name],
        images,
        method=method,
        layer=LAYERS[name],
        target=TARGETS,
        size=size,
        **options,
    )
    assert maps.shape[0] == 2 and maps.dtype == torch.float32
    return maps


def pgc_targets() -> list[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(c) for c in TARGETS]


@contextmanager
def backward_stops_at(layer: nn.Module, model: nn.Module) -> Iterator[None]:
    """Speed only: make pytorch-grad-cam's ``loss.backward()`` stop at ``layer``.

    pytorch-grad-cam needs only d(score)/d(layer output) but calls ``loss.backward()``,
    which also backpropagates through everything before the layer, down to the first
    convolution's weights. A forward hook registered before pytorch-grad-cam's own
    replaces the layer's output by a detached copy that requires grad, so its hooks see
    that copy and the backward pass ends there. Forward values (computed exactly as
    without the hook) and the gradient at the layer are unchanged, so is every map.
    The ``.grad`` that ``backward()`` leaves on the parameters after the layer is reset.
    """
    grads = [(p, p.grad) for p in model.parameters()]
    handle = layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()
        for p, grad in grads:
            p.grad = grad


def run_pgc(cam_cls: type, zoo: Zoo, images: Tensor, name: str) -> np.ndarray:
    """pytorch-grad-cam's map (B, H, W) at input size: ReLU, min-max per image, cv2 resize."""
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    with (
        backward_stops_at(layer, model),
        cam_cls(model=model, target_layers=[layer], reshape_transform=RESHAPE[name]) as cam,
    ):
        out = cam(input_tensor=images, targets=pgc_targets())
    assert out.shape == (2, INPUT_SIZE, INPUT_SIZE)
    return out


# ------------------------------------------------------------- pytorch-grad-cam (input size)

# camlens name -> (pytorch-grad-cam class, camlens options reproducing its definition)
PGC_METHODS = {
    "gradcam": (pgc.GradCAM, {}),
    # pytorch-grad-cam adds eps=1e-6 to Grad-CAM++'s alpha denominator
    # (g^2 / (2 g^2 + sum(A) g^3 + 1e-6)); the paper (and camlens' default) has none.
    "gradcam++": (pgc.GradCAMPlusPlus, {"eps": 1e-6}),
    # pytorch-grad-cam divides by sum(A) + 1e-7, camlens by sum(A) exactly (0 if the sum
    # is 0); the smallest |sum(A)| here is 0.016 (the ViT), so the eps is negligible.
    # XGrad-CAM on a LayerNorm output is ill-conditioned, though: its channels are
    # near zero-mean (two channel sums are down to 3.3e-4 x their sum |A|: camlens warns),
    # so the two sides' float32 rounding is amplified up to 3e3 times: 1.7e-5 on the
    # ViT's XGrad-CAM map in float32 (5.5e-5 on vit_b_16, where camlens' no_grad pass
    # through nn.MultiheadAttention's fused path differed from the references' autograd
    # path by ~3e-6); in float64 it is 2.4e-6.
    "xgradcam": (pgc.XGradCAM, {}),
    "hirescam": (pgc.HiResCAM, {}),
    "gradcam-elementwise": (pgc.GradCAMElementWise, {}),
    "layercam": (pgc.LayerCAM, {}),
}


def cancelling(method: str, name: str):
    """XGrad-CAM on the ViT's LayerNorm output warns (a channel sum nearly cancels)."""
    if (method, name) == ("xgradcam", "vit"):
        return pytest.warns(UserWarning, match="xgradcam: 2 of the 384 channel sums")
    return nullcontext()


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("method", list(PGC_METHODS))
def test_matches_pytorch_grad_cam(zoo, images, pgc_maps, name, method):
    cam_cls, options = PGC_METHODS[method]
    ref = pgc_maps(cam_cls, name)
    with cancelling(method, name):
        ours = explain(zoo, images, name, method, **options)
    assert_close_maps(ours, ref, f"{method}/pgc/{name}")


# Max abs difference between camlens' default Grad-CAM++ (eps=0, the paper) and
# pytorch-grad-cam's (eps=1e-6), both normalised, at 128x128, measured with seed 0:
#   resnet18 0.024, vgg11 0.040, vit 0.33 (at 224x224 with vit_b_16: 0.053, 0.021, 0.69).
# The gradients at these layers are tiny: g^2 has median 2e-6 (resnet18), 4e-6 (vgg11)
# and 3e-8 (vit), so pytorch-grad-cam's 1e-6 is as large as or far larger
# than the 2 g^2 + sum(A) g^3 it is added to, and its alpha degenerates towards
# g^2 / 1e-6 (ViT: the map is then essentially sum_k (sum_ij g^2 ReLU(g)) A_k, far from
# Grad-CAM++). The bound asserted is well below these and well above TOL.
DEFAULT_EPS_MIN_DIFF = 1e-2


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradcampp_default_eps_differs_from_pytorch_grad_cam(zoo, images, pgc_maps, name):
    """camlens' Grad-CAM++ follows the paper (eps=0); pytorch-grad-cam adds 1e-6."""
    ref = minmax(pgc_maps(pgc.GradCAMPlusPlus, name))
    paper = minmax(explain(zoo, images, name, "gradcam++"))
    assert np.abs(paper - ref).max() >= DEFAULT_EPS_MIN_DIFF


# ------------------------------------------- XGrad-CAM on signed activations (MobileNetV3)

# mobilenet_v3_small "features.12": its last Conv2dNormActivation, whose output is a
# Hardswish (>= -0.375: signed). With seeded random weights its activations are tiny
# (|A| ~ 1e-9, channel sums down to 6.5e-11), so pytorch-grad-cam's sum(A) + 1e-7 is ~1e-7
# for every channel: its weights are ~sum(G A) / 1e-7, not XGrad-CAM's sum(G A) / sum(A).
# camlens' eps=1e-7 reproduces it (2.5e-7) and warns that eps swamps the sums (and that one
# sum + 1e-7 nearly cancels: 2.2e-4 x its sum |A|). camlens' default
# (eps=0, the paper) gives a completely different map (normalised difference 1.0) and
# warns as well: two channel sums nearly cancel (|sum A| = 1.2e-4 and 2.6e-4 x sum |A|).
MOBILENET_LAYER = "features.12"


def test_xgradcam_eps_matches_pytorch_grad_cam_on_hardswish(zoo):
    images = _images(224)
    model = zoo["mobilenet_v3_small"]
    layer = model.get_submodule(MOBILENET_LAYER)
    assert isinstance(layer[-1], nn.Hardswish)
    with (
        backward_stops_at(layer, model),
        pgc.XGradCAM(model=model, target_layers=[layer]) as cam,
    ):
        ref = cam(input_tensor=images, targets=pgc_targets())
    with pytest.warns(UserWarning, match=r"eps=1e-07 is not negligible"):
        ours = camlens.explain(model, images, method="xgradcam", layer=MOBILENET_LAYER,
                               target=TARGETS, eps=1e-7)
    assert_close_maps(ours, ref, "xgradcam(eps=1e-7)/pgc/mobilenet_v3_small")
    with pytest.warns(UserWarning, match=r"2 of the 1152 channel sums .* nearly cancel"):
        paper = camlens.explain(model, images, method="xgradcam", layer=MOBILENET_LAYER,
                                target=TARGETS)
    assert np.abs(minmax(paper) - minmax(ref)).max() > 0.5


@pytest.mark.parametrize("eps", [0.0, 1e-7])
def test_xgradcam_does_not_warn_after_a_relu(zoo, images, eps):
    # resnet18 layer4 ends with a ReLU: every channel sum is sum |A|, far above 1e-7.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="xgradcam")
        maps = explain(zoo, images, "resnet18", "xgradcam", size=None, eps=eps)
    assert torch.isfinite(maps).all()


class _SignAligned:
    """pytorch-grad-cam eigen CAM whose SVD projection is recorded and sign-aligned.

    The SVD's sign is arbitrary: ``X = U S V^T = (-U) S (-V)^T``, so numpy may return
    ``-v1`` and pytorch-grad-cam's map is then ``ReLU(-X v1)``: the other side of the
    projection, not the evidence (here numpy's sign disagrees with camlens' for 4 of the
    12 image/model/method cases; which ones depends on the LAPACK build). camlens fixes
    the sign: its projection correlates positively with the channel sum. To compare the
    maps, each image's pytorch-grad-cam projection is flipped when it disagrees in sign
    with camlens' projection of the very same matrix; the rest of pytorch-grad-cam's
    pipeline (ReLU, min-max, resize) runs unchanged.
    """

    @staticmethod
    def make(base: type, product) -> type:
        class Aligned(base):
            def get_cam_image(
                self, input_tensor, target_layer, targets, activations, grads, eigen_smooth
            ):
                x = product(activations, grads)
                proj = get_2d_projection(x)  # what the base class returns
                ours = first_principal_projection(torch.from_numpy(x), center=True).numpy()
                sign = np.where((proj * ours).sum(axis=(1, 2)) < 0, -1.0, 1.0)
                self.record = {"x": x, "proj": proj, "ours": ours, "sign": sign}
                return (proj * sign[:, None, None]).astype(np.float32)

        return Aligned


EIGEN = {
    "eigencam": _SignAligned.make(pgc.EigenCAM, lambda a, g: a),
    "eigengradcam": _SignAligned.make(pgc.EigenGradCAM, lambda a, g: g * a),
}


def run_pgc_eigen(method: str, zoo: Zoo, images: Tensor, name: str):
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    with (
        backward_stops_at(layer, model),
        EIGEN[method](model=model, target_layers=[layer], reshape_transform=RESHAPE[name]) as cam,
    ):
        out = cam(input_tensor=images, targets=pgc_targets())
        record = cam.record
    return out, record


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("method", list(EIGEN))
def test_eigen_matches_pytorch_grad_cam(zoo, images, name, method):
    ref, rec = run_pgc_eigen(method, zoo, images, name)

    # Raw projections of the same matrix: equal up to one sign per image.
    proj, ours, x = rec["proj"].astype(np.float64), rec["ours"].astype(np.float64), rec["x"]
    assert proj.shape == ours.shape == (2, GRID[name], GRID[name])
    for i in range(2):
        scale = np.abs(proj[i]).max()
        assert scale > 0
        best = min(np.abs(ours[i] - proj[i]).max(), np.abs(ours[i] + proj[i]).max())
        print(f"\n[{method}/pgc/{name}] image {i}: raw projection relative difference "
              f"{best / scale:.3g}")
        assert best <= TOL * scale, (i, best / scale)
    # camlens' sign convention: positive correlation with the (centred) channel sum, or,
    # where that sum is ~0 (ViT's tokens after a LayerNorm), a positive largest value.
    ref_sum = x.sum(axis=1).reshape(2, -1)
    ref_sum = ref_sum - ref_sum.mean(axis=1, keepdims=True)
    rows = x.reshape(2, x.shape[1], -1)
    rows = rows - rows.mean(axis=2, keepdims=True)
    for i in range(2):
        flat = ours[i].reshape(-1)
        if np.linalg.norm(ref_sum[i]) <= 1e-4 * np.linalg.norm(rows[i]):
            assert flat[np.abs(flat).argmax()] > 0
        else:
            assert (flat * ref_sum[i]).sum() > 0

    # Final maps (pytorch-grad-cam with its projection's sign aligned to ours).
    maps = explain(zoo, images, name, method, center=True)
    assert_close_maps(maps, ref, f"{method}/pgc/{name}")


# ----------------------------------------------------------------- captum (input size)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_gradcam_matches_captum(zoo, images, name):
    # captum's LayerGradCam averages the gradients over the spatial dims, as the paper
    # does, and relu_attributions=True applies the final ReLU. Its output is at the
    # layer's resolution; LayerAttribution.interpolate with "bilinear" calls
    # F.interpolate(align_corners=False by default), exactly camlens' size="input".
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    attr = LayerGradCam(model, layer).attribute(images, target=TARGETS, relu_attributions=True)
    assert attr.shape == (2, 1, GRID[name], GRID[name])
    up = LayerAttribution.interpolate(attr, (INPUT_SIZE, INPUT_SIZE), interpolate_mode="bilinear")
    ref = up[:, 0].detach()
    ours = explain(zoo, images, name, "gradcam")
    assert_close_maps(ours, ref, f"gradcam/captum/{name}")
    # Also at the layer's resolution, before any resizing.
    assert_close_maps(explain(zoo, images, name, "gradcam", size=None), attr[:, 0].detach(),
                      f"gradcam(layer resolution)/captum/{name}")


# -------------------------------------------------------------- torchcam (layer resolution)

# torchcam's definitions (torchcam/methods/gradient.py, activation.py, 0.5.0):
# * GradCAM: w = mean_ij(g); ReLU(sum_k w_k A_k)                     == camlens gradcam
# * XGradCAM: w = sum_ij(g A) / (sum_ij A + 1e-8); ReLU(...)         == camlens xgradcam
#   (the 1e-8 is negligible against these channel sums; in float32 the ViT's map
#   differed by 8.4e-7, ~5e-5 on vit_b_16, for the reason given at
#   PGC_METHODS["xgradcam"])
# * LayerCAM: ReLU(sum_k ReLU(g_k) A_k)                               == camlens layercam
#   (torchcam's tanh scaling only applies when fusing several layers: not used here)
# * CAM: sum_k w_fc[c, k] A_k with NO ReLU (torchcam sets _relu=False for CAM, like the
#   CAM paper), camlens applies a ReLU. The test applies the ReLU to torchcam's raw map.
# * GradCAMpp: NOT comparable. Its alpha is meant to be g^2 / (2 g^2 + sum(A) g^3 + 1e-8),
#   but the division is done as ``alpha[idx][mask].div_(...)``: boolean-mask indexing
#   returns a copy, so the in-place division is lost and alpha stays g^2, i.e. the
#   weights are sum_ij g^2 ReLU(g). No camlens option reproduces that (it is not
#   Grad-CAM++); test_torchcam_gradcampp_is_not_gradcampp pins this observation.
TORCHCAM_METHODS = {
    "gradcam": tcm.GradCAM,
    "xgradcam": tcm.XGradCAM,
    "layercam": tcm.LayerCAM,
}


def run_torchcam(
    extractor_cls: type, model: nn.Module, name: str, images: Tensor, **kwargs
) -> Tensor:
    """torchcam's raw (unnormalised) map at layer resolution; hooks removed afterwards."""
    extra = {} if RESHAPE[name] is None else {"reshape_transform": RESHAPE[name]}
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    with extractor_cls(model, target_layer=LAYERS[name], **extra, **kwargs) as extractor:
        scores = model(images)
        cams = extractor(class_idx=TARGETS, scores=scores, normalized=False)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks, "torchcam left hooks"
    assert len(cams) == 1 and cams[0].shape == (2, GRID[name], GRID[name])
    return cams[0].detach()


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("method", list(TORCHCAM_METHODS))
def test_matches_torchcam(zoo, images, name, method):
    ref = run_torchcam(TORCHCAM_METHODS[method], zoo[name], name, images)
    with cancelling(method, name):
        ours = explain(zoo, images, name, method, size=None)
    assert ours.shape == (2, GRID[name], GRID[name])
    assert_close_maps(ours, ref, f"{method}/torchcam/{name}")


def test_cam_matches_torchcam(zoo, images):
    # resnet18: layer4 -> AdaptiveAvgPool2d(1) -> flatten -> fc, the architecture CAM needs.
    ref = run_torchcam(tcm.CAM, zoo["resnet18"], "resnet18", images, fc_layer="fc")
    ours = explain(zoo, images, "resnet18", "cam", size=None)
    # torchcam's CAM has no ReLU (as in the CAM paper); camlens' has (see camlens.methods
    # CAM's docstring), so compare with ReLU(torchcam).
    assert_close_maps(ours, torch.relu(ref), "cam/torchcam/resnet18")


def test_torchcam_gradcampp_is_not_gradcampp(zoo, images):
    """torchcam's GradCAMpp uses alpha = g^2 (its masked in-place division is a no-op).

    Checked from torchcam's own stored activations and gradients, so this pins the
    reason no agreement with camlens' Grad-CAM++ is asserted.
    """
    model = zoo["resnet18"]
    with tcm.GradCAMpp(model, target_layer="layer4") as extractor:
        scores = model(images)
        cam = extractor(class_idx=TARGETS, scores=scores, normalized=False)[0].detach()
        a, g = extractor.hook_a[0], extractor.hook_g[0]
    weights = (g.pow(2) * torch.relu(g)).flatten(2).sum(-1)
    no_alpha = torch.relu((weights[:, :, None, None] * a).sum(1))
    assert_close_maps(no_alpha, cam, "gradcampp(alpha=g^2)/torchcam/resnet18")
    # ... and that it is far from Grad-CAM++ (measured: 0.11 with eps=0 and with 1e-8).
    paper = minmax(explain(zoo, images, "resnet18", "gradcam++", size=None))
    assert np.abs(paper - minmax(cam)).max() > 1e-2
