"""Golden values computed by hand for every method on a model whose A and dy/dA are known.

The "layer" is a 1x1 convolution with identity weights, so its activations A are the
input itself; the head is ``Linear(flatten(A))``, so dy_0/dA is row 0 of the linear
weight. With

    A0 = [[1, 2], [1, 1]]      A1 = [[0, 1], [3, -1]]
    G0 = [[1, 0], [-1, 2]]     G1 = [[0.5, -1], [1, -2]]

every formula below was worked out on paper (see each test's comment).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import camlens

A = torch.tensor([[[1.0, 2.0], [1.0, 1.0]], [[0.0, 1.0], [3.0, -1.0]]])
G = torch.tensor([[[1.0, 0.0], [-1.0, 2.0]], [[0.5, -1.0], [1.0, -2.0]]])


class HandModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            self.layer.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.head.weight.copy_(torch.stack([G.flatten(), -G.flatten(), torch.zeros(8)]))
            self.head.bias.copy_(torch.tensor([10.0, 0.0, 5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.layer(x), 1))


def raw(method: str, target=0, **kw) -> torch.Tensor:
    model = HandModel().eval()
    return camlens.explain(
        model, A[None], method=method, layer="layer", target=target, size=None,
        normalize=False, **kw
    )[0]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_gradcam():
    # alpha0 = mean(G0) = 2/4 = 0.5 ; alpha1 = mean(G1) = -1.5/4 = -0.375
    # 0.5*A0 - 0.375*A1 = [[0.5, 0.625], [-0.625, 0.875]] -> ReLU
    assert torch.allclose(raw("gradcam"), t([[0.5, 0.625], [0.0, 0.875]]), atol=1e-6)


def test_gradcam_counterfactual():
    # negated gradients: -0.5*A0 + 0.375*A1 = [[-0.5, -0.625], [0.625, -0.875]] -> ReLU
    m = camlens.explain(HandModel(), A[None], layer="layer", target=0, size=None,
                        normalize=False, counterfactual=True)[0]
    assert torch.allclose(m, t([[0.0, 0.0], [0.625, 0.0]]), atol=1e-6)


def test_gradcam_plus_plus():
    # a = g^2 / (2 g^2 + S g^3), S0 = sum A0 = 5, S1 = sum A1 = 3
    # ch0, g = 1, 0, -1, 2: a = 1/7, 0, -1/3, 1/12 ; w0 = 1/7 + 2/12 = 13/42
    # ch1, g = .5, -1, 1, -2: a = 2/7, -1, 1/5, -1/4 ; w1 = 2/7*.5 + 1/5 = 12/35
    # 13/42*A0 + 12/35*A1 = [[13/42, 101/105], [281/210, -1/30]] -> ReLU
    want = t([[13 / 42, 101 / 105], [281 / 210, 0.0]])
    assert torch.allclose(raw("gradcam++"), want, atol=1e-6)


def test_xgradcam():
    # w0 = sum(G0*A0)/5 = 2/5 ; w1 = sum(G1*A1)/3 = 4/3
    # 0.4*A0 + 4/3*A1 = [[0.4, 0.8 + 4/3], [0.4 + 4, 0.4 - 4/3]] -> ReLU
    want = t([[0.4, 0.8 + 4 / 3], [4.4, 0.0]])
    assert torch.allclose(raw("xgradcam"), want, atol=1e-6)


def test_xgradcam_eps():
    # w_k = sum(G_k A_k) / (sum A_k + eps), eps = 1: w0 = 2 / 6, w1 = 4 / 4
    # A0 / 3 + A1 = [[1/3, 2/3 + 1], [1/3 + 3, 1/3 - 1]] -> ReLU
    want = t([[1 / 3, 5 / 3], [10 / 3, 0.0]])
    with pytest.warns(UserWarning, match=r"eps=1 is not negligible.*median sum \|A\| 5\.0e\+00"):
        assert torch.allclose(raw("xgradcam", eps=1.0), want, atol=1e-6)


def test_xgradcam_warns_where_a_channel_nearly_cancels():
    # A1 + delta at A1[1, 1] (-1 -> -4 + 1e-4): sum A1 = 1e-4, sum |A1| = 8, ratio 1.25e-5
    a = A.clone()
    a[1, 1, 1] = -4.0 + 1e-4
    model = HandModel()
    with pytest.warns(UserWarning, match=r"1 of the 2 channel sums .* down to 1\.2e-05 x sum"):
        camlens.explain(model, a[None], method="xgradcam", layer="layer", target=0)


def test_hirescam():
    # G0*A0 = [[1, 0], [-1, 2]] ; G1*A1 = [[0, -1], [3, 2]] ; sum -> ReLU
    assert torch.allclose(raw("hirescam"), t([[1.0, 0.0], [2.0, 4.0]]), atol=1e-6)


def test_gradcam_elementwise():
    # ReLU(G0*A0) + ReLU(G1*A1) = [[1, 0], [0, 2]] + [[0, 0], [3, 2]]
    assert torch.allclose(raw("gradcam-elementwise"), t([[1.0, 0.0], [3.0, 4.0]]), atol=1e-6)


def test_layercam():
    # ReLU(G0)*A0 + ReLU(G1)*A1 = [[1, 0], [0, 2]] + [[0, 0], [3, 0]]
    assert torch.allclose(raw("layercam"), t([[1.0, 0.0], [3.0, 2.0]]), atol=1e-6)


def test_eigencam():
    # rows (one per location) X = [[1,0],[2,1],[1,3],[1,-1]]; X^T X = [[7,4],[4,11]]
    # top eigenvalue 9 + 2*sqrt(5), eigenvector ~ (2, 1 + sqrt(5)); project, ReLU
    v = torch.tensor([2.0, 1.0 + math.sqrt(5.0)])
    v = v / v.norm()
    x = A.flatten(1).T
    want = torch.relu(x @ v).view(2, 2)
    assert torch.allclose(raw("eigencam"), want, atol=1e-5)
    assert torch.allclose(want, t([[0.52573, 1.90211], [3.07768, 0.0]]), atol=1e-4)


def test_eigengradcam():
    # rows of G*A: [[1,0],[0,-1],[-1,3],[2,2]]; Gram [[6,1],[1,14]]
    # top eigenvalue 10 + sqrt(17), eigenvector ~ (1, 4 + sqrt(17)); sign agrees with sum_k G_k A_k
    v = torch.tensor([1.0, 4.0 + math.sqrt(17.0)])
    v = v / v.norm()
    x = (G * A).flatten(1).T
    want = torch.relu(x @ v).view(2, 2)
    assert torch.allclose(raw("eigengradcam"), want, atol=1e-5)
    assert torch.allclose(want, t([[0.12218, 0.0], [2.85535, 2.22939]]), atol=1e-4)


class GapModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.layer.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[2.0, -1.0], [0.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer(x)).flatten(1))


def test_cam():
    # class 0: 2*A0 - A1 = [[2, 3], [-1, 3]] -> ReLU ; class 1: A1 -> ReLU
    m = camlens.explain(GapModel(), A[None], method="cam", layer="layer",
                        target=camlens.TopK(2), size=None, normalize=False)[0]
    # logits: class 0 = 2*mean(A0) - mean(A1) = 2.5 - 0.75 = 1.75 ; class 1 = 0.75
    assert torch.allclose(m[0], t([[2.0, 3.0], [0.0, 3.0]]))
    assert torch.allclose(m[1], t([[0.0, 1.0], [3.0, 0.0]]))


def test_cam_gradcam_hirescam_agree_on_gap_linear():
    model = GapModel()
    cam = camlens.explain(model, A[None], method="cam", layer="layer", size=None, normalize=False)
    grad = camlens.explain(model, A[None], method="gradcam", layer="layer", size=None,
                           normalize=False)
    hires = camlens.explain(model, A[None], method="hirescam", layer="layer", size=None,
                            normalize=False)
    # dy/dA = w / (H*W): Grad-CAM and HiResCAM are CAM / 4 here
    assert torch.allclose(grad * 4, cam) and torch.allclose(hires * 4, cam)


def test_topk_orders_classes_by_score():
    # logits: 10 + sum(G*A) = 10 + 2 + 4 = 16 ; -(6) = -6 ; 5 -> order 0, 2, 1
    model = HandModel()
    explainer = camlens.Explainer(model, "hirescam", layer="layer")
    maps = explainer(A[None], target=camlens.TopK(3), size=None, normalize=False)
    assert maps.shape == (1, 3, 2, 2)
    assert explainer.last_classes.tolist() == [[0, 2, 1]]
    assert torch.allclose(maps[0, 0], t([[1.0, 0.0], [2.0, 4.0]]))
    assert torch.equal(maps[0, 1], torch.zeros(2, 2))  # class 2 has zero weights
    # class 1 has weights -G: sum -G*A = [[-1, 1], [-2, -4]] -> ReLU
    assert torch.allclose(maps[0, 2], t([[0.0, 1.0], [0.0, 0.0]]))


def test_normalize_and_upsample():
    m = camlens.explain(HandModel(), A[None], method="hirescam", layer="layer", target=0,
                        size=None)
    assert torch.allclose(m[0], t([[0.25, 0.0], [0.5, 1.0]]))
    big = camlens.explain(HandModel(), A[None], method="hirescam", layer="layer", target=0,
                          size=(4, 4), normalize=False)[0]
    # bilinear, align_corners=False: output pixel centres at (i + .5)/2 - .5 = -0.25, 0.25, ...
    assert big.shape == (4, 4)
    assert torch.allclose(big[0, 0], torch.tensor(1.0))  # clamped corner
    want = 0.5625 * 1 + 0.1875 * 0 + 0.1875 * 2 + 0.0625 * 4
    assert torch.allclose(big[1, 1], torch.tensor(want))


# Methods that cannot run on HandModel, and the clear error each gives instead.
NOT_HERE = {
    "guided-backprop": "needs ReLUs",
    "guided-gradcam": "needs ReLUs",
    "fullgrad": "with a bias",
    "rise": "larger than",
}


@pytest.mark.parametrize("method", camlens.available_methods())
def test_all_zero_map_stays_zero(method):
    model = HandModel()
    with torch.no_grad():
        model.head.weight.zero_()
    if method == "cam":  # cam needs a GAP head: GapModel with zero weights
        model = GapModel()
        with torch.no_grad():
            model.fc.weight.zero_()
    x = torch.zeros(1, 2, 2, 2)
    if method in NOT_HERE:
        with pytest.raises(ValueError, match=NOT_HERE[method]):
            camlens.explain(model, x, method=method, layer="layer", target=0)
        return
    out = camlens.explain(model, x, method=method, layer="layer", target=0)
    assert torch.equal(out, torch.zeros(1, 2, 2))


def test_ablationcam():
    # linear head: removing channel k lowers y_0 by sum(G_k * A_k): 2 (ch0) and 4 (ch1)
    # y_0 = 10 + 2 + 4 = 16 -> w = (2/16, 4/16); 0.125 * A0 + 0.25 * A1
    want = torch.relu(0.125 * A[0] + 0.25 * A[1])
    assert torch.allclose(raw("ablationcam"), want, atol=1e-6)


def test_shapleycam_equals_gradcam_on_a_linear_head():
    # the score is linear in A: the Hessian term vanishes
    assert torch.allclose(raw("shapleycam"), raw("gradcam"), atol=1e-6)


def test_fem():
    # ch0 = [1, 2, 1, 1]: mean 1.25, std sqrt(0.1875) = 0.433 -> k = 1: 1.683 -> only the 2
    # ch1 = [0, 1, 3, -1]: mean 0.75, std 1.479 -> 2.229 -> only the 3; w = (1/4, 1/4)
    want = torch.relu(0.25 * A[0] + 0.25 * A[1])
    assert torch.allclose(raw("fem", k=1.0), want, atol=1e-6)


def test_finercam_mean_weighting():
    # logits y = (16, -6, 5); target 0: the nearest classes are 2 (|16 - 5| = 11), then 1
    # (22); only ranks 1 and 2 exist among 3 classes. "mean": s = y0 - alpha (y2 + y1) / 2,
    # ds/dA = G - alpha (0 - G) / 2 = (1 + alpha / 2) G: Grad-CAM times 1 + alpha / 2.
    gradcam = t([[0.5, 0.625], [0.0, 0.875]])
    assert torch.allclose(raw("finercam", weighting="mean"), 1.5 * gradcam, atol=1e-6)
    assert torch.allclose(raw("finercam", weighting="mean", alpha=0.6), 1.3 * gradcam,
                          atol=1e-6)
    # only the nearest class (2, whose gradient is 0): s = y0 - alpha y2, Grad-CAM itself
    assert torch.allclose(raw("finercam", weighting="mean", comparison=(1,)), gradcam,
                          atol=1e-6)
    # alpha = 0: Grad-CAM of y0 itself
    assert torch.allclose(raw("finercam", weighting="mean", alpha=0), gradcam, atol=1e-6)


class PoisonedModel(HandModel):
    """HandModel whose layer output gets ``value`` at A1[1, 0] (3 in A) after the layer."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.poison = nn.Identity()
        self.poison.register_forward_hook(self._poison)

    def _poison(self, module, args, out):
        out = out.clone()
        out[:, 1, 1, 0] = self.value
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.poison(self.layer(x))
        return self.head(torch.flatten(torch.nan_to_num(a, 0.0, 0.0, 0.0), 1))


@pytest.mark.parametrize("method", ["eigencam", "kpcacam"])
def test_non_finite_activations_nan_as_zero_inf_as_largest(method):
    # Eigen-CAM and KPCA-CAM handle NaN / inf activations alike (torch.nan_to_num): NaN
    # counts as 0, +-inf as the largest finite float32; both give finite maps (KPCA-CAM
    # used to raise LinAlgError).
    big = torch.finfo(torch.float32).max

    def maps(value: float) -> torch.Tensor:
        return camlens.explain(PoisonedModel(value), A[None], method=method, layer="poison",
                               target=0, size=None, normalize=False)[0]

    assert torch.equal(maps(float("nan")), maps(0.0))
    assert torch.equal(maps(float("inf")), maps(big))
    assert torch.equal(maps(float("-inf")), maps(-big))
    for value in (float("nan"), float("inf"), float("-inf")):
        assert torch.isfinite(maps(value)).all()
    # NaN as 0: with A1[1, 0] = 0 instead of 3 the map is the one of that clean input
    clean = A.clone()
    clean[1, 1, 0] = 0.0
    want = camlens.explain(HandModel(), clean[None], method=method, layer="layer", target=0,
                           size=None, normalize=False)[0]
    assert torch.allclose(maps(float("nan")), want, atol=1e-6)


def test_randomcam_uses_seeded_uniform_weights():
    w = torch.rand(2, generator=torch.Generator().manual_seed(5)) * 2 - 1
    want = torch.relu(w[0] * A[0] + w[1] * A[1])
    got = camlens.explain(HandModel(), A[None], method="randomcam", layer="layer", target=0,
                          size=None, normalize=False, seed=5)[0]
    assert torch.allclose(got, want, atol=1e-6)


def test_scorecam_on_a_hand_model():
    # masks: min-max of each channel (2 x 2, no resize): H0 = [[0, 1], [0, 0]],
    # H1 = [[.25, .5], [1, 0]]; y_0(A * H) = 10 + sum(G * A * H)
    h0 = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    h1 = torch.tensor([[0.25, 0.5], [1.0, 0.0]])
    scores = torch.stack([10 + (G * A * h).sum() for h in (h0, h1)])
    w = torch.softmax(scores, 0)
    want = torch.relu(w[0] * A[0] + w[1] * A[1])
    assert torch.allclose(raw("scorecam"), want, atol=1e-5)


def test_rise_by_hand_with_one_all_ones_mask():
    # p = 1 keeps every cell: every mask is all ones, so S = f(X) * 1 / 1 for every pixel
    model = HandModel()
    out = camlens.explain(model, A[None], method="rise", target=0, size=None, normalize=False,
                          n_masks=3, grid=1, p=1.0)[0]
    prob = torch.softmax(model(A[None]).detach(), 1)[0, 0]
    assert torch.allclose(out, torch.full((2, 2), float(prob)), atol=1e-6)
