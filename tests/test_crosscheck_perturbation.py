"""Cross-checks of camlens' perturbation, "extra" and guided methods against references.

References (installed in the test environment, nothing downloaded):

* pytorch-grad-cam: ScoreCAM, AblationCAM, FullGrad, ShapleyCAM, FEM, KPCA_CAM, FinerCAM,
  GuidedBackpropReLUModel.
* torchcam: ScoreCAM, SSCAM, ISCAM, FinerCAM (SmoothGradCAMpp is not comparable, see
  below).
* captum: GuidedBackprop, GuidedGradCam (bilinear and its default nearest upsampling).

Models: torchvision resnet18 and vgg11 with seeded random weights (``weights=None``), in
eval mode and in float64, each built once per module. Inputs: one seeded batch of two
float64 images, each with its own explicit target class (``TARGETS``), unless a test
says otherwise.

Why float64: in float32 both sides round differently (other kernels, batch shapes,
summation orders, which differ between CPUs), and some maps amplify that rounding:
Ablation-CAM's (y - y_k) / y on vgg11's tiny logits (|y| ~ 0.01-0.05) differed by 1.4e-4
here and by 3.2e-4 on another AMD EPYC, over the old 1e-4 tolerance. In float64 those
differences vanish and what remains is each library's float32 output (camlens returns
float32 maps; pytorch-grad-cam resizes in float32) and, for Ablation-CAM, pytorch-grad-cam's
float32 scores (see ABLATION_TOL). Measured float32 -> float64: at most 1.5e-5 -> 4.2e-7
for every map but Ablation-CAM's (kpcacam/vgg11 1.5e-5 -> 1.5e-7; on an AVX-512 Xeon),
Ablation-CAM 1.7e-5 -> 3.4e-6 (resnet18) and 1.4e-4 -> 5.9e-7 (vgg11); guided gradients
1.6e-7 -> 4.8e-8 relative (the Ablation-CAM figures on an AMD EPYC, with the 32 x 32
inputs below; the perturbation methods' other maps 7.4e-7 -> 2.7e-7 there). Hence
TOL = 1e-5, RTOL = 1e-6.

To keep the module fast on a small CPU the images are small:

* gradient and activation methods: 128 x 128 images. resnet18 ``layer4`` and vgg11
  ``features.20`` (the last MaxPool) are then 512 x 4 x 4: still spatial, with 16
  locations (FEM's mean + 2 std threshold and KPCA need a few locations).
* perturbation methods (one forward per channel and image): 32 x 32 images (the
  smallest vgg11 takes: five 2x2 MaxPools) and a 64-channel layer: resnet18 ``layer1``
  (64 x 8 x 8, the output of a residual block, after its ReLU) and vgg11 ``features.2``
  (64 x 16 x 16, the MaxPool after the first conv + ReLU). 2 images x 64 channels = 128
  masked forwards per method and library.

Comparisons: both maps min-max normalised per image at the same size, max |difference|
<= TOL, and the reference map must not be constant. Guided methods are compared on raw
gradients with a relative tolerance. Where a reference deviates from the paper camlens
follows, the camlens option reproducing it is passed and the deviation is explained next
to the test. The measured maximum differences are printed (``pytest -s``).

These checks found two camlens bugs, now fixed: iscam lacked the 1/N before the softmax,
and ablationcam scored the unablated image and the ablations on two numerically different
paths (a fused copy vs the original model).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import GuidedGradCam as CaptumGuidedGradCam
from conftest import Zoo, assert_close_maps, minmax
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel
from torch import Tensor, nn
from torchcam import methods as tcm
from torchvision import models as tvm

import camlens

SEED = 0
# One explicit class per image (both give non-constant maps for every method here).
TARGETS = [0, 111]
TOL = 1e-5
# Relative tolerance on raw guided gradients: max |ours - ref| <= RTOL * max |ref|.
RTOL = 1e-6
MODELS = ["resnet18", "vgg11"]

BIG = 128  # input side for gradient / activation methods
SMALL = 32  # input side for perturbation methods
LAYERS = {"resnet18": "layer4", "vgg11": "features.20"}  # 512 x 4 x 4 at 128 x 128
SMALL_LAYERS = {"resnet18": "layer1", "vgg11": "features.2"}  # 64 channels at 32 x 32
GRID = {"resnet18": 4, "vgg11": 4}

_ORIGINAL_RELU = F.relu


def _build(name: str) -> nn.Module:
    torch.manual_seed(SEED)
    return getattr(tvm, name)(weights=None).double().eval()


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo(_build)


def _images(side: int, seed: int) -> Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed)).double()


@pytest.fixture(scope="module")
def big() -> Tensor:
    return _images(BIG, SEED)


@pytest.fixture(scope="module")
def small() -> Tensor:
    return _images(SMALL, SEED + 1)


@pytest.fixture(scope="module")
def cache() -> dict:
    """Maps shared between tests (each expensive map is computed once)."""
    return {}


# --------------------------------------------------------------------------- helpers


def assert_close_raw(ours, ref, label: str, rtol: float = RTOL) -> float:
    """Raw values, per image: max |ours - ref| <= rtol * max |ref| (ref not all zero)."""
    ours = np.asarray(ours.detach() if isinstance(ours, Tensor) else ours, dtype=np.float64)
    ref = np.asarray(ref.detach() if isinstance(ref, Tensor) else ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    worst = 0.0
    for i in range(ref.shape[0]):
        scale = np.abs(ref[i]).max()
        assert scale > 0, "reference is all zero"
        rel = float(np.abs(ours[i] - ref[i]).max() / scale)
        worst = max(worst, rel)
    print(f"\n[{label}] max relative difference (raw): {worst:.3g}")
    assert worst <= rtol, f"{label}: relative difference {worst:.3g} > {rtol:g}"
    return worst


def explain(model, images, method, layer, target=TARGETS, **options) -> Tensor:
    maps = camlens.explain(model, images, method=method, layer=layer, target=target, **options)
    assert maps.shape[0] == 2 and maps.dtype == torch.float32
    return maps


def pgc_targets() -> list[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(c) for c in TARGETS]


def run_pgc(cam_cls, model: nn.Module, layer_name: str, images: Tensor, targets="default",
            batch_size: int | None = None, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's map (B, H, W) at input size (ReLU, min-max, cv2 bilinear)."""
    layer = model.get_submodule(layer_name)
    with cam_cls(model=model, target_layers=[layer], **kwargs) as cam:
        if batch_size is not None:
            cam.batch_size = batch_size
        out = cam(input_tensor=images, targets=pgc_targets() if targets == "default" else targets)
    assert out.shape == (2, *images.shape[2:])
    return out


def run_torchcam(extractor_cls, model: nn.Module, layer_name: str, images: Tensor,
                 **kwargs) -> Tensor:
    """torchcam's raw map at the layer's resolution (hooks removed afterwards)."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with extractor_cls(model, target_layer=layer_name, input_shape=tuple(images.shape[1:]),
                       **kwargs) as extractor:
        with torch.no_grad():
            scores = model(images)
        cams = extractor(class_idx=TARGETS, scores=scores, normalized=False)
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert after == hooks, "torchcam left hooks"
    assert len(cams) == 1
    return cams[0].detach()


# ------------------------------------------------------------- Score-CAM and friends


@pytest.mark.parametrize("name", MODELS)
def test_scorecam_matches_pytorch_grad_cam(zoo, small, name):
    # pytorch-grad-cam upsamples the activations first (UpsamplingBilinear2d, i.e.
    # bilinear with align_corners=True), then min-max normalises each upsampled channel
    # (dividing by max - min + 1e-8: equal to camlens' exact division but for channels
    # of near-zero span; constant channels give 0 in both). Weights: softmax over the
    # channels of the target's logit for the masked inputs, as in camlens.
    # camlens: mask_order="upsample" (the paper's order, its default) + align_corners=True.
    model = zoo[name]
    ref = run_pgc(pgc.ScoreCAM, model, SMALL_LAYERS[name], small, batch_size=64)
    ours = explain(model, small, "scorecam", SMALL_LAYERS[name], mask_order="upsample",
                   align_corners=True)
    assert_close_maps(ours, ref, f"scorecam/pgc/{name}")


def _scorecam_normalize(zoo, small, cache) -> Tensor:
    """camlens Score-CAM with torchcam's mask order, at the layer's resolution (cached)."""
    if "scorecam-normalize" not in cache:
        cache["scorecam-normalize"] = explain(
            zoo["resnet18"], small, "scorecam", SMALL_LAYERS["resnet18"], size=None,
            normalize=False, mask_order="normalize", align_corners=False,
        )
    return cache["scorecam-normalize"]


def test_scorecam_matches_torchcam(zoo, small, cache):
    # torchcam min-max normalises each channel at the layer's resolution (dividing by
    # max + 1e-8 after subtracting the min), then upsamples bilinearly with
    # align_corners=False, and weights with softmax(score(masked) - score(image)): the
    # baseline is one constant per image, which the softmax over channels ignores.
    # camlens: mask_order="normalize", align_corners=False. Compared at layer resolution
    # (torchcam's output). resnet18 only (the masking is the same code for any model).
    ref = run_torchcam(tcm.ScoreCAM, zoo["resnet18"], SMALL_LAYERS["resnet18"], small,
                       batch_size=64)
    ours = _scorecam_normalize(zoo, small, cache)
    assert ours.shape == ref.shape == (2, SMALL // 4, SMALL // 4)
    assert_close_maps(ours, ref, "scorecam/torchcam/resnet18")


class _CamlensNoise:
    """Stands in for torchcam SSCAM's ``torch.distributions.Normal(0, std)``.

    torchcam draws ``Normal(0, std).sample((B, C, H, W))`` from the global RNG: a separate
    noise map for every image and channel. camlens draws, per sample, one (C, H, W)
    tensor from its own generator seeded with ``seed`` (``torch.randn`` * std), shared by
    the images of the batch. Neither can reproduce the other's draws, so the test feeds
    torchcam camlens' noise: this stand-in returns exactly camlens' draws, repeated over
    the batch, in the same order. Everything but the noise generation is then compared.
    """

    def __init__(self, std: float, seed: int) -> None:
        self.std = std
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(self, size: torch.Size) -> Tensor:
        noise = torch.randn(tuple(size[1:]), generator=self.generator) * self.std
        return noise.expand(size[0], *noise.shape).clone()


def test_sscam_matches_torchcam_with_the_same_noise(zoo, small):
    # torchcam SSCAM: masks normalised at layer resolution then upsampled
    # (align_corners=False), noise added to the upsampled masks, weights
    # softmax(1/N sum_i (score(X * (M_k + n_i)) - score(X))) (the baseline cancels in the
    # softmax). camlens' sscam defaults (mask_order="normalize") follow it; only the noise
    # differs (see _CamlensNoise), so torchcam gets camlens' noise. num_samples=2 (speed).
    model = zoo["resnet18"]
    layer = SMALL_LAYERS["resnet18"]
    std, n = 2.0, 2
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with tcm.SSCAM(model, target_layer=layer, batch_size=64, num_samples=n, std=std,
                   input_shape=tuple(small.shape[1:])) as extractor:
        extractor._distrib = _CamlensNoise(std, SEED)
        with torch.no_grad():
            scores = model(small)
        ref = extractor(class_idx=TARGETS, scores=scores, normalized=False)[0].detach()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) \
        == hooks
    ours = explain(model, small, "sscam", layer, size=None, num_samples=n, std=std, seed=SEED)
    assert_close_maps(ours, ref, "sscam/torchcam(same noise)/resnet18")


def test_sscam_without_noise_is_scorecam(zoo, small, cache):
    # With std=0 every sample is the noiseless mask: SS-CAM reduces to Score-CAM with the
    # same mask order (torchcam's Normal(0, 0) is not even a valid distribution, so this
    # limit can only be checked within camlens).
    ours = explain(zoo["resnet18"], small, "sscam", SMALL_LAYERS["resnet18"], size=None,
                   normalize=False, num_samples=1, std=0.0)
    ref = _scorecam_normalize(zoo, small, cache)
    assert_close_maps(ours, ref, "sscam(std=0)/scorecam(normalize)/resnet18", tol=1e-6)


def test_iscam_matches_torchcam(zoo, small):
    # torchcam ISCAM: masks as torchcam's ScoreCAM (normalise at layer resolution, upsample
    # with align_corners=False), M_i = (sum_{j<=i} j/N) * mask * X for i = 1..N, weights
    # softmax(1/N sum_i (score(M_i) - score(X))). camlens' iscam defaults
    # (mask_order="normalize") use the same masks and coefficients. num_samples=2 (speed).
    model = zoo["resnet18"]
    layer = SMALL_LAYERS["resnet18"]
    ref = run_torchcam(tcm.ISCAM, model, layer, small, batch_size=64, num_samples=2)
    ours = explain(model, small, "iscam", layer, size=None, num_samples=2)
    assert_close_maps(ours, ref, "iscam/torchcam/resnet18")


# Targets chosen so that neither reference map is constant (vgg11's logits are tiny with
# random weights, |y| ~ 0.01-0.05, and e.g. class 5 gives image 1 an all-zero Ablation-CAM
# map there), and, for resnet18, so that pytorch-grad-cam's float32 scores show (see
# test_ablationcam_difference_is_pytorch_grad_cams_float32_scores; [50, 111]: 7e-7).
ABLATION_TARGETS = {"resnet18": [19, 5], "vgg11": [50, 100]}

# Where the two libraries' paths differ (the float32 failure, 3.2e-4 on an AMD EPYC):
# * pytorch-grad-cam takes y from a forward of the whole 2-image batch, and each y_k from
#   a forward of `batch_size` copies of one image whose target layer is swapped for an
#   AblationLayer returning the cached activations with channel k zeroed. The part after
#   the layer thus runs with batch 2 for y and batch 64 for y_k: other GEMM shapes in the
#   classifier, other summation orders. In float32 vgg11's y for image 2 (class 100) is
#   -0.0267685466 at batch 2 and -0.0267686043 at batch 64 here: a 5.8e-8 offset in every
#   y - y_k, divided by |y| = 0.027, shifts every weight by 2.2e-6, the same for all
#   channels, and so shifts the map by 2.2e-6 * sum_k A_k. How large the offset is depends
#   on the CPU's kernels and thread count.
# * camlens scores the unablated layer output as item 0 of the first chunk of ablations,
#   so y and the y_k of equal-sized chunks come from the same kernels; only a smaller
#   last chunk (65 items in chunks of 32: 32, 32, 1) runs another GEMM shape (in float32,
#   3.5e-8 apart from the batch-32 value for vgg11's image 2).
# * pytorch-grad-cam also rounds every score to float32 (``np.float32([... .item()])``)
#   and computes the weights in float32, whatever the model's dtype; camlens' scorer keeps
#   float64 scores for a float64 model.
# In float64 the batch-shape offsets are ~1e-17 and vanish. What remains is
# pytorch-grad-cam's float32 rounding of y and y_k: each weight is off by ~1e-7, which
# shows as 3.4e-6 (resnet18) and 5.9e-7 (vgg11) on the normalised maps, deterministically
# (rounding float64 values to float32 does not depend on the CPU). With those scores kept
# in float64 (test_ablationcam_difference_is_pytorch_grad_cams_float32_scores) the maps
# agree to 1.6e-7 (resnet18) and 2.1e-7 (vgg11): the two libraries compute the same
# thing, and the residual is pytorch-grad-cam's float32 scores.
ABLATION_TOL = 2e-5


def _ablation_ref(model: nn.Module, layer: str, small: Tensor, targets: list[int]) -> np.ndarray:
    captured = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.setdefault("a", out.detach().clone()))
    with torch.no_grad():
        model(small)
    handle.remove()
    assert captured["a"].min() == 0, "pytorch-grad-cam would not zero the channel"
    assert captured["a"].dtype == torch.float64
    return run_pgc(pgc.AblationCAM, model, layer, small, batch_size=64,
                   targets=[ClassifierOutputTarget(c) for c in targets])


def _ablation_maps(zoo, small, cache, name: str) -> tuple[Tensor, np.ndarray]:
    """(camlens, pytorch-grad-cam) Ablation-CAM maps, computed once per model."""
    key = ("ablationcam", name)
    if key not in cache:
        model, layer, targets = zoo[name], SMALL_LAYERS[name], ABLATION_TARGETS[name]
        ref = _ablation_ref(model, layer, small, targets)
        ours = explain(model, small, "ablationcam", layer, target=targets)
        cache[key] = (ours, ref)
    return cache[key]


# Both: w_k = (y - y_k) / y with y_k the target's logit when channel k of the layer is
# zeroed; ReLU(sum_k w_k A_k). pytorch-grad-cam zeroes only when the layer's minimum is
# exactly 0 (else it sets the channel to min - 1e7, deviating from the paper); both layers
# used here end with a ReLU (resnet18 layer1: a residual block's final ReLU; vgg11
# features.2: a MaxPool of ReLU outputs; checked in _ablation_ref), so both libraries
# zero the channel, as the paper does.


@pytest.mark.parametrize("name", MODELS)
def test_ablationcam_matches_pytorch_grad_cam(zoo, small, cache, name):
    ours, ref = _ablation_maps(zoo, small, cache, name)
    assert_close_maps(ours, ref, f"ablationcam/pgc/{name}", tol=ABLATION_TOL)


class _Float64Scores:
    """numpy for pytorch_grad_cam.ablation_cam, with ``float32`` meaning ``float64``."""

    def __getattr__(self, attr: str):
        return np.float64 if attr == "float32" else getattr(np, attr)


def test_ablationcam_difference_is_pytorch_grad_cams_float32_scores(zoo, small, cache,
                                                                     monkeypatch):
    # The same comparison with pytorch-grad-cam's scores and weights kept in float64 (its
    # ablation_cam module sees a numpy whose float32 is float64): the residual difference
    # above drops to the float32 output maps' rounding.
    import pytorch_grad_cam.ablation_cam as ablation_module

    from camlens._scorer import Scorer

    name = "resnet18"
    ours, ref32 = _ablation_maps(zoo, small, cache, name)
    # camlens' scores (y and the y_k) stay float64 for a float64 model
    dtypes = []
    original = Scorer.with_layer_output

    def spy(self, *args, **kwargs):
        scores = original(self, *args, **kwargs)
        dtypes.append(scores.dtype)
        return scores

    monkeypatch.setattr(Scorer, "with_layer_output", spy)
    again = explain(zoo[name], small, "ablationcam", SMALL_LAYERS[name],
                    target=ABLATION_TARGETS[name])
    assert dtypes == [torch.float64, torch.float64] and torch.equal(again, ours)
    monkeypatch.setattr(ablation_module, "np", _Float64Scores())
    ref64 = _ablation_ref(zoo[name], SMALL_LAYERS[name], small, ABLATION_TARGETS[name])
    assert_close_maps(ours, ref64, f"ablationcam/pgc(float64 scores)/{name}", tol=1e-6)
    # ... and the float32 scores are what made the difference
    assert np.abs(minmax(ours) - minmax(ref32)).max() > 1e-6


# ------------------------------------------------------------ gradient / activation


@pytest.mark.parametrize("name", MODELS)
def test_fullgrad_matches_pytorch_grad_cam(zoo, big, name):
    # pytorch-grad-cam normalises each channel as (x - min) / (max - min + 1e-7)
    # (scale_cam_image); the paper's psi has no eps: camlens eps=1e-7 reproduces it.
    # Both use every Conv2d / BatchNorm2d with a bias (BatchNorm: the effective bias
    # b - mean * w / sqrt(var + eps)) and |input gradient * input|, resize the bias-gradient
    # maps bilinearly (cv2 INTER_LINEAR = half-pixel centres = align_corners=False) and sum.
    # The layer argument is ignored by both.
    model = zoo[name]
    ref = run_pgc(pgc.FullGrad, model, LAYERS[name], big)
    ours = explain(model, big, "fullgrad", LAYERS[name], eps=1e-7)
    assert_close_maps(ours, ref, f"fullgrad/pgc/{name}")


@pytest.mark.parametrize("name", MODELS)
def test_shapleycam_matches_pytorch_grad_cam(zoo, big, name):
    # Both: w_k = mean_ij(dy/dA - 1/2 H A)_k. Note: resnet18 and vgg11 are piecewise
    # linear after these layers (ReLU, MaxPool, Linear), so H A = 0 and ShapleyCAM is
    # Grad-CAM here; test_shapleycam_hessian_term_matches_pytorch_grad_cam checks the
    # Hessian term on a smooth model.
    model = zoo[name]
    ref = run_pgc(pgc.ShapleyCAM, model, LAYERS[name], big)
    ours = explain(model, big, "shapleycam", LAYERS[name])
    assert_close_maps(ours, ref, f"shapleycam/pgc/{name}")


class _SmoothNet(nn.Module):
    """conv-SiLU-conv-SiLU-conv-SiLU -> GAP -> fc: curved after ``conv2`` (H A != 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(self.conv1(x))
        x = F.silu(self.conv2(x))
        x = F.silu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def test_shapleycam_hessian_term_matches_pytorch_grad_cam():
    torch.manual_seed(SEED)
    model = _SmoothNet().double().eval()
    x = _images(32, SEED + 2)
    targets = [1, 4]
    layer = model.get_submodule("conv2")
    with pgc.ShapleyCAM(model=model, target_layers=[layer]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    ours = camlens.explain(model, x, method="shapleycam", layer="conv2", target=targets)
    assert_close_maps(ours, ref, "shapleycam/pgc/smooth-net")
    # The Hessian term matters here: ShapleyCAM is not Grad-CAM on this model.
    gradcam = camlens.explain(model, x, method="gradcam", layer="conv2", target=targets)
    assert np.abs(minmax(gradcam) - minmax(ours)).max() > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_fem_matches_pytorch_grad_cam(zoo, big, name):
    # Both: w_k = mean_ij [A_k > mean(A_k) + 2 std(A_k)] with the population std (numpy's
    # default ddof=0 = torch unbiased=False); class-agnostic; ReLU(sum_k w_k A_k).
    model = zoo[name]
    ref = run_pgc(pgc.FEM, model, LAYERS[name], big)
    ours = explain(model, big, "fem", LAYERS[name])
    assert_close_maps(ours, ref, f"fem/pgc/{name}")


class _KPCASignAligned(pgc.KPCA_CAM):
    """pytorch-grad-cam's KPCA-CAM with the sign of scikit-learn's projection aligned.

    scikit-learn's KernelPCA fixes each eigenvector's sign with ``svd_flip`` (its entry of
    largest magnitude made positive); camlens fixes it so that the projection correlates
    positively with the (centred) channel sum. Both are the same eigenvector up to sign,
    but after the ReLU the two signs give different maps (the two sides of the
    projection). Here sklearn's raw projection is flipped, per image, when it disagrees
    with camlens' convention; the rest of pytorch-grad-cam's pipeline (ReLU, min-max,
    resize) is unchanged. ``record`` keeps the raw projections and the flips.
    """

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads,
                      eigen_smooth):
        proj = get_2d_projection_kernel(activations, self.kernel, self.gamma)  # (B, h, w)
        b, c = activations.shape[:2]
        rows = activations.reshape(b, c, -1).transpose(0, 2, 1).astype(np.float64)
        rows = rows - rows.mean(axis=1, keepdims=True)  # centred as pytorch-grad-cam does
        agreement = (proj.reshape(b, -1) * rows.sum(axis=-1)).sum(axis=1)
        sign = np.where(agreement < 0, -1.0, 1.0)
        self.record = {"proj": proj, "sign": sign}
        return (proj * sign[:, None, None]).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_kpcacam_matches_pytorch_grad_cam(zoo, big, name):
    # Kernel PCA with the sigmoid kernel tanh(<a, b> / C + 1) on the locations' centred
    # channel vectors, kernel matrix centred, first component scaled by sqrt(eigenvalue):
    # scikit-learn (dense eigh for 16 samples) and camlens (torch.linalg.eigh, float64)
    # compute the same projection up to its sign (see _KPCASignAligned). With this seed
    # sklearn's sign happens to agree with camlens' for all four images (0 flips printed);
    # that depends on the data, so the alignment stays.
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    with _KPCASignAligned(model=model, target_layers=[layer]) as cam:
        ref = cam(input_tensor=big, targets=None)
        record = cam.record
    assert record["proj"].shape == (2, GRID[name], GRID[name])
    print(f"\n[kpcacam/pgc/{name}] sklearn signs flipped to camlens': "
          f"{int((record['sign'] < 0).sum())} of 2")
    ours = explain(model, big, "kpcacam", LAYERS[name])
    assert_close_maps(ours, ref, f"kpcacam/pgc/{name}")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("target", [None, 111])
def test_finercam_matches_pytorch_grad_cam(zoo, big, name, target):
    # pytorch-grad-cam's FinerCAM picks the target (top-1 class, or target_idx for every
    # image), sorts the classes by |logit - target logit|, compares with ranks 1, 2, 3 and
    # runs Grad-CAM on FinerWeightedTarget: sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9).
    # camlens' finercam (alpha=1, comparison=(1, 2, 3)) is the same score (it adds the
    # 1e-9 too); target=None is the top-1 class in both.
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    with pgc.FinerCAM(model=model, target_layers=[layer]) as cam:
        ref = cam(input_tensor=big, targets=None, target_idx=target)
    ours = explain(model, big, "finercam", LAYERS[name], target=target)
    assert_close_maps(ours, ref, f"finercam/pgc/{name}/target={target}")


@pytest.mark.parametrize("name", MODELS)
def test_finercam_mean_matches_torchcam(zoo, big, name):
    # torchcam's FinerCAM (base GradCAM): s = y_c - gamma * mean_t y_{d_t} over the
    # num_references classes whose logits are nearest y_c (the target excluded), then
    # Grad-CAM of s; defaults gamma=0.6, num_references=3. A plain mean where camlens'
    # default (like the authors' code and pytorch-grad-cam) weights the classes by their
    # softmax: weighting="mean", alpha=0.6 and the default ranks (1, 2, 3) reproduce it.
    model = zoo[name]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with tcm.FinerCAM(model, target_layer=LAYERS[name], input_shape=tuple(big.shape[1:]),
                      gamma=0.6, num_references=3) as extractor:
        scores = model(big)
        ref = extractor(class_idx=TARGETS, scores=scores, normalized=False)[0].detach()
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert after == hooks, "torchcam left hooks"
    assert ref.shape == (2, GRID[name], GRID[name])
    ours = explain(model, big, "finercam", LAYERS[name], size=None, alpha=0.6,
                   weighting="mean")
    assert_close_maps(ours, ref, f"finercam(mean, alpha=0.6)/torchcam/{name}")
    # camlens' default (softmax weights, alpha=1) is another map
    default = explain(model, big, "finercam", LAYERS[name], size=None)
    diff = np.abs(minmax(default) - minmax(ref)).max()
    print(f"[finercam(default)/torchcam/{name}] max abs difference (normalised): {diff:.3g}")
    assert diff > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_smoothgradcampp_without_noise_is_gradcampp(zoo, big, name):
    # camlens follows the Smooth Grad-CAM++ paper: with D = dy/dA at noisy inputs,
    # alpha = mean(D^2) / (2 mean(D^2) + sum_ab(A_ab) mean(D^3)), w = sum_ij alpha
    # ReLU(mean(D)). With one sample and no noise (std=0) this is Grad-CAM++ exactly.
    # torchcam's SmoothGradCAMpp is not comparable: its denominator is
    # 2 mean(D^2) + sum_ij(mean(D^3) * A) + 1e-8 (the product summed over the locations,
    # one number per channel), it weights with ReLU of the *last* sample's gradient instead
    # of the mean, and it cannot run without noise (Normal(0, 0) is invalid).
    model = zoo[name]
    ours = explain(model, big, "smoothgradcam++", LAYERS[name], num_samples=1, std=0.0)
    ref = explain(model, big, "gradcam++", LAYERS[name])
    assert_close_maps(ours, ref, f"smoothgradcam++(1, std=0)/gradcam++/{name}", tol=1e-6)


# --------------------------------------------------------------------------- guided


def _pgc_guided_backprop(model: nn.Module, images: Tensor) -> np.ndarray:
    """pytorch-grad-cam's guided backprop, image by image, as (B, 3, H, W).

    GuidedBackpropReLUModel handles one image (it backpropagates output[0, target]) and
    swaps the model's nn.ReLU modules for its guided ReLU, then back for new
    ``nn.ReLU()`` (no longer in-place): it runs on a copy so the shared model is untouched.
    """
    gb = GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")
    out = [gb(images[i : i + 1].clone(), target_category=TARGETS[i]) for i in range(2)]
    return np.stack(out).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", MODELS)
def test_guided_backprop_matches_references(zoo, big, name):
    # All three: the input gradient with every ReLU passing back grad * [input > 0] *
    # [grad > 0] (captum: ReLU(grad_input) in a backward hook on each nn.ReLU;
    # pytorch-grad-cam: a custom autograd ReLU). Raw signed gradients per colour channel.
    model = zoo[name]
    ours = camlens.explain(model, big, method="guided-backprop", target=TARGETS,
                           normalize=False, channels=True)
    assert ours.shape == (2, 3, BIG, BIG)
    ref_pgc = _pgc_guided_backprop(model, big)
    assert_close_raw(ours, ref_pgc, f"guided-backprop/pgc/{name}")
    ref_captum = CaptumGuidedBackprop(model).attribute(big.clone(), target=TARGETS)
    assert_close_raw(ours, ref_captum, f"guided-backprop/captum/{name}")


@pytest.mark.parametrize("name", MODELS)
def test_guided_gradcam_matches_captum(zoo, big, name):
    # captum's GuidedGradCam = GuidedBackprop * LayerAttribution.interpolate(Grad-CAM).
    # Its default interpolate_mode is "nearest"; the paper (and camlens) upsample
    # bilinearly, so interpolate_mode="bilinear" is passed: captum then calls
    # F.interpolate(mode="bilinear") with align_corners left at its default False, which
    # is what camlens does. The Grad-CAM part uses ordinary gradients in both.
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    ref = CaptumGuidedGradCam(model, layer).attribute(big.clone(), target=TARGETS,
                                                      interpolate_mode="bilinear")
    ours = explain(model, big, "guided-gradcam", LAYERS[name], normalize=False, channels=True)
    assert ours.shape == ref.shape == (2, 3, BIG, BIG)
    assert_close_raw(ours, ref, f"guided-gradcam/captum/{name}")
    # Normalised too (camlens' default normalize=True): the shapes of the maps agree.
    ours_n = explain(model, big, "guided-gradcam", LAYERS[name], channels=True)
    assert_close_maps(ours_n, ref, f"guided-gradcam(normalised)/captum/{name}")


@pytest.mark.parametrize("name", MODELS)
def test_guided_gradcam_nearest_matches_captum_default(zoo, big, name):
    # captum's default interpolate_mode="nearest": LayerAttribution.interpolate calls
    # F.interpolate(grad_cam, size, mode="nearest"), each 4 x 4 Grad-CAM cell becoming a
    # 32 x 32 block. camlens' interpolate="nearest" does the same.
    model = zoo[name]
    layer = model.get_submodule(LAYERS[name])
    ref = CaptumGuidedGradCam(model, layer).attribute(big.clone(), target=TARGETS)
    ours = explain(model, big, "guided-gradcam", LAYERS[name], normalize=False, channels=True,
                   interpolate="nearest")
    assert ours.shape == ref.shape == (2, 3, BIG, BIG)
    assert_close_raw(ours, ref, f"guided-gradcam(nearest)/captum default/{name}")
    # The bilinear default is another map: up to this far from captum's default, relative
    # to the largest value
    bilinear = explain(model, big, "guided-gradcam", LAYERS[name], normalize=False,
                       channels=True)
    scale = ref.abs().amax(dim=(1, 2, 3), keepdim=True)
    gap = float(((bilinear - ref).abs() / scale).max())
    print(f"[guided-gradcam(bilinear)/captum default/{name}] max relative difference: {gap:.3g}")
    assert gap > 1e-2


class _TinyReLUNet(nn.Module):
    """conv-ReLU-conv-ReLU -> GAP -> fc, with F.relu calls or with nn.ReLU modules."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)
        if not functional:
            self.relu1 = nn.ReLU(inplace=True)
            self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.functional:
            x = F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)))
        else:
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _plain_input_gradient(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.gather(1, torch.tensor(targets).view(-1, 1)).sum().backward()
    return x.grad.detach()


def test_guided_methods_with_functional_relu():
    torch.manual_seed(SEED)
    functional = _TinyReLUNet(functional=True).double().eval()
    modules = _TinyReLUNet(functional=False).double().eval()
    modules.load_state_dict(functional.state_dict())
    x = _images(24, SEED + 3)
    targets = [2, 4]
    plain_before = _plain_input_gradient(functional, x, targets)
    with torch.no_grad():
        out_before = functional(x)

    for method, layer in (("guided-backprop", None), ("guided-gradcam", "conv2")):
        extra = {} if layer is None else {"layer": layer}
        maps_f = camlens.explain(functional, x, method=method, target=targets,
                                 normalize=False, channels=True, **extra)
        maps_m = camlens.explain(modules, x, method=method, target=targets,
                                 normalize=False, channels=True, **extra)
        assert maps_f.shape == (2, 3, 24, 24)
        assert_close_raw(maps_f, maps_m, f"{method}/F.relu vs nn.ReLU", rtol=1e-6)
    # The guided override was applied to the F.relu calls: it is not the plain gradient,
    # and on the nn.ReLU twin it equals captum's GuidedBackprop (which hooks modules only).
    guided_f = camlens.explain(functional, x, method="guided-backprop", target=targets,
                               normalize=False, channels=True)
    assert (guided_f - plain_before).abs().max() > 1e-3 * plain_before.abs().max()
    ref = CaptumGuidedBackprop(modules).attribute(x.clone(), target=targets)
    assert_close_raw(guided_f, ref, "guided-backprop/F.relu vs captum(nn.ReLU)")

    # Afterwards F.relu is the original function and the model behaves as before: same
    # outputs, ordinary (not guided) gradients.
    assert F.relu is _ORIGINAL_RELU
    with torch.no_grad():
        assert torch.equal(functional(x), out_before)
    assert torch.equal(_plain_input_gradient(functional, x, targets), plain_before)
    assert torch.allclose(_plain_input_gradient(modules, x, targets), plain_before,
                          rtol=1e-5, atol=1e-7)
