"""camlens.augment: hand-checked regions and labels on a model whose map we set.

``Probe`` makes the map known: its layer is ReLU(channel 0 of the input) (a 1 x 1 conv),
followed by global average pooling and a bias-free linear layer. The Grad-CAM channel
weight of class c is fc_c / (H W), so the map of a class with a positive weight is
channel 0 of the image, min-max normalised; class 2 (weight -1) has an all-zero map.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, assert_same_state, model_state, randomize_bn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

import camlens
from camlens.augment import AttentiveCutMix, AugmentRecord, CamErase, SaliencyMix


class Probe(nn.Module):
    """Map = channel 0 of the input (classes 0 and 1); class 2's map is all zero."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.ReLU())
        self.fc = nn.Linear(1, 3, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0], [2.0], [-1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def image(channel0: torch.Tensor) -> torch.Tensor:
    """(3, H, W): channel 0 as given (the map), channels 1 and 2 distinct markers."""
    h, w = channel0.shape
    marks = torch.arange(h * w, dtype=torch.float32).view(h, w) / (h * w)
    return torch.stack([channel0, marks + 1, marks + 2])


def box_of(region: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of a boolean rectangle, checking it is one."""
    ys, xs = region.nonzero(as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    assert region.sum() == (y1 - y0) * (x1 - x0) and region[y0:y1, x0:x1].all()
    return y0, x0, y1, x1


# ---------------------------------------------------------------------- CamErase
def blob() -> torch.Tensor:
    """8 x 8: a 2 x 2 block of 1 at rows/cols 2-3 (protected at threshold 0.3), one pixel
    of 0.2 at (6, 6) (below it, erasable), 0 elsewhere."""
    a = torch.zeros(8, 8)
    a[2:4, 2:4] = 1.0
    a[6, 6] = 0.2
    return a


# A 4 x 4 box (area 0.25 of 64, ratio 1) misses rows 2-3 x cols 2-3 only if it starts at
# row 4 or column 4: 5 + 4 positions.
FREE_4X4 = {(4, x) for x in range(5)} | {(y, 4) for y in range(4)}


def erase_boxes(aug: CamErase, x: torch.Tensor, labels: torch.Tensor) -> set[tuple[int, int]]:
    out, y = aug(x, labels)
    record = aug.last
    assert isinstance(record, AugmentRecord)
    seen = set()
    for i in range(len(x)):
        y0, x0, y1, x1 = box_of(record.region[i])
        assert (y1 - y0, x1 - x0) == (4, 4)
        seen.add((y0, x0))
        # erased pixels hold the fill, the others are untouched
        assert torch.equal(out[i][:, record.region[i]], torch.full((3, 16), -1.0))
        assert torch.equal(out[i][:, ~record.region[i]], x[i][:, ~record.region[i]])
    assert torch.equal(y, F.one_hot(labels, 3).float())  # labels unchanged
    assert torch.equal(record.share, torch.zeros(len(x)))
    return seen


def test_erase_only_where_the_map_is_below_the_threshold():
    x = image(blob())[None].repeat(64, 1, 1, 1)
    before = x.clone()
    aug = CamErase(Probe(), p=1.0, area=(0.25, 0.25), ratio=(1.0, 1.0), threshold=0.3,
                   fill=-1.0, layer="features", num_classes=3, seed=0)
    seen = erase_boxes(aug, x, torch.zeros(64, dtype=torch.long))
    assert seen == FREE_4X4  # every free place drawn, no other
    assert torch.equal(x, before)  # the input batch is not changed in place
    record = aug.last
    expected_map = blob()  # channel 0, already in [0, 1] with min 0 and max 1
    assert torch.allclose(record.maps, expected_map.expand(64, 8, 8), atol=1e-6)
    assert not (record.region & camlens.masks(record.maps, 0.3)).any()
    assert record.applied.all() and torch.equal(record.partner, torch.arange(64))


def test_erase_follows_the_target_class():
    x = image(blob())[None].repeat(256, 1, 1, 1)
    kwargs = dict(p=1.0, area=(0.25, 0.25), ratio=(1.0, 1.0), fill=-1.0, layer="features",
                  num_classes=3, seed=1)
    two = torch.full((256,), 2, dtype=torch.long)
    # class 2's map is all zero: nothing is protected, all 5 x 5 places are free
    anywhere = erase_boxes(CamErase(Probe(), **kwargs), x, two)
    assert anywhere == {(y, x) for y in range(5) for x in range(5)}
    # the top-1 class (1: weight 2) has the blob's map
    predicted = erase_boxes(CamErase(Probe(), target="predicted", **kwargs), x, two)
    assert predicted == FREE_4X4


def test_erase_leaves_the_image_when_no_place_is_free():
    a = torch.ones(8, 8)
    a[0, 0] = 0.0  # everything protected but the corner
    x = image(a)[None].repeat(3, 1, 1, 1)
    labels = torch.zeros(3, dtype=torch.long)
    big = CamErase(Probe(), p=1.0, area=(0.25, 0.25), ratio=(1.0, 1.0), layer="features",
                   num_classes=3, tries=3)
    out, _ = big(x, labels)
    assert torch.equal(out, x) and not big.last.applied.any() and not big.last.region.any()
    # a 1 x 1 box (area 1/64) fits in the corner only
    tiny = CamErase(Probe(), p=1.0, area=(1 / 64, 1 / 64), ratio=(1.0, 1.0), fill=5.0,
                    layer="features", num_classes=3)
    out, _ = tiny(x, labels)
    changed = (out != x).any(1)
    assert changed[:, 0, 0].all() and changed.sum() == 3
    assert torch.equal(out[:, :, 0, 0], torch.full((3, 3), 5.0))


def test_erase_random_fill_stays_in_the_image_range_and_p_zero_changes_nothing():
    x = image(blob())[None].repeat(8, 1, 1, 1)
    labels = torch.zeros(8, dtype=torch.long)
    aug = CamErase(Probe(), p=1.0, layer="features", num_classes=3, seed=3)
    out, _ = aug(x, labels)
    region = aug.last.region[:, None].expand_as(out)
    assert region.any()
    assert out[region].min() >= 0.0 and out[region].max() <= x.amax()
    none = CamErase(Probe(), p=0.0, layer="features", num_classes=3)
    out, y = none(x, labels)
    assert torch.equal(out, x) and not none.last.applied.any()
    assert torch.equal(none.last.maps, torch.zeros(8, 8, 8))  # no pass was needed


def test_free_spots_match_a_brute_force_search():
    from camlens.augment import _free_spots, _summed_area

    g = torch.Generator().manual_seed(0)
    protected = torch.rand(6, 7, 9, generator=g) < 0.08
    sizes = torch.tensor([[1, 1], [2, 3], [3, 2], [4, 4], [7, 9], [8, 1]])
    for b in range(6):
        bh, bw = (int(v) for v in sizes[b])
        free = [y * 9 + x for y in range(7 - bh + 1) for x in range(9 - bw + 1)
                if not protected[b, y:y + bh, x:x + bw].any()]
        for k in range(len(free)):
            u = torch.full((6,), (k + 0.5) / len(free))
            got = _free_spots(_summed_area(protected), sizes[:, 0], sizes[:, 1], u)
            assert int(got[b]) == free[k]
        if not free:  # no place, or a box larger than the image
            table = _summed_area(protected)
            assert int(_free_spots(table, sizes[:, 0], sizes[:, 1], torch.zeros(6))[b]) == -1


# --------------------------------------------------------------- AttentiveCutMix
def test_attentive_cutmix_pastes_the_top_cells_and_mixes_by_area():
    # image 1's 2 x 2 cells (4 x 4 image) have means TL 0.75, TR 1, BL 0.5, BR 0: the top
    # two are TR and TL, the top half
    a1 = torch.zeros(4, 4)
    a1[:2, :2], a1[:2, 2:], a1[2:, :2] = 0.75, 1.0, 0.5
    # image 0's cells: BR 1, BL 0.75, TL 0.5, TR 0: the bottom half
    a0 = torch.zeros(4, 4)
    a0[2:, 2:], a0[2:, :2], a0[:2, :2] = 1.0, 0.75, 0.5
    x = torch.stack([image(a0), image(a1) + 10])
    labels = torch.tensor([0, 1])
    top, bottom = torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)
    top[:2], bottom[2:] = True, True
    pairings = set()
    for seed in range(12):
        aug = AttentiveCutMix(Probe(), cells=2, grid=2, layer="features", num_classes=3,
                              seed=seed)
        out, y = aug(x, labels)
        partner = aug.last.partner.tolist()
        pairings.add(tuple(partner))
        if partner == [0, 1]:  # each image paired with itself: nothing changes
            assert torch.equal(out, x) and torch.equal(y, F.one_hot(labels, 3).float())
            assert not aug.last.region.any() and not aug.last.applied.any()
            assert torch.equal(aug.last.share, torch.zeros(2))
            continue
        for i, j in enumerate(partner):
            region = top if j == 1 else bottom  # the top cells of the partner's map
            assert torch.equal(aug.last.region[i], region)
            assert torch.equal(out[i][:, region], x[j][:, region])
            assert torch.equal(out[i][:, ~region], x[i][:, ~region])
            expected = 0.5 * F.one_hot(labels[i], 3) + 0.5 * F.one_hot(labels[j], 3)
            assert torch.allclose(y[i], expected.float())
        assert torch.equal(aug.last.share, torch.full((2,), 0.5))
    assert pairings == {(0, 1), (1, 0)}  # both the swap and the identity were checked


def test_attentive_cutmix_breaks_ties_at_random():
    # cells TL 1, TR 0.5, BL 0.5, BR 0 with cells=2: TL, then TR or BL
    a = torch.zeros(4, 4)
    a[:2, :2], a[:2, 2:], a[2:, :2] = 1.0, 0.5, 0.5
    x = image(a)[None].repeat(64, 1, 1, 1)
    aug = AttentiveCutMix(Probe(), cells=2, grid=2, layer="features", num_classes=3)
    aug(x, torch.zeros(64, dtype=torch.long))
    region = aug.last.region
    assert region[:, :2, :2].all()
    second = region[:, :2, 2:].flatten(1).all(1)
    assert torch.equal(second, ~region[:, 2:, :2].flatten(1).all(1))
    assert 0 < int(second.sum()) < 64  # both ways drawn
    assert not region[:, 2:, 2:].any()
    # an all-zero map (class 2): any 2 cells
    aug(x, torch.full((64,), 2, dtype=torch.long))
    cells = aug.last.region[:, ::2, ::2].flatten(1)  # one pixel per cell
    assert (cells.sum(1) == 2).all() and cells.any(0).all()


def test_attentive_cutmix_uneven_cells_use_the_exact_pixel_share():
    # 5 x 5 in a 2 x 2 grid: rows/cols 0-2 form the first cell, 3-4 the second
    a = torch.zeros(5, 5)
    a[:3, :3] = 1.0  # the top-left cell (3 x 3 = 9 pixels) is the top one
    x = image(a)[None].repeat(4, 1, 1, 1)
    soft = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.2, 0.8, 0], [0.5, 0.5, 0]])
    aug = AttentiveCutMix(Probe(), cells=1, grid=2, layer="features", seed=0)
    _, y = aug(x, soft)
    moved = aug.last.partner != torch.arange(4)  # image 1 is paired with itself here
    share = 9 / 25 * moved.float()
    assert torch.allclose(aug.last.share, share)
    expected = (1 - share[:, None]) * soft + share[:, None] * soft[aug.last.partner]
    assert torch.allclose(y, expected)
    assert aug.last.region[moved, :3, :3].all() and aug.last.region.sum() == moved.sum() * 9


# ------------------------------------------------------------------ SaliencyMix
def peak_at(y: int, x: int, size: int) -> torch.Tensor:
    a = torch.full((size, size), 0.1)
    a[y, x] = 1.0
    return a


def test_saliencymix_box_is_centred_on_the_partners_peak():
    # 9 x 9, peak at the centre: no box (at most 9 x 9) is ever clipped
    x = image(peak_at(4, 4, 9))[None].repeat(32, 1, 1, 1)
    labels = torch.arange(32) % 2  # classes 0 and 1, whose map is channel 0
    aug = SaliencyMix(Probe(), layer="features", num_classes=3, seed=0)
    out, y = aug(x, labels)
    sizes = set()
    for i in range(32):
        if not aug.last.region[i].any():  # lam close to 1: a box of 0 pixels
            continue
        y0, x0, y1, x1 = box_of(aug.last.region[i])
        bh, bw = y1 - y0, x1 - x0
        assert bh == bw and (y0 + bh // 2, x0 + bw // 2) == (4, 4)
        sizes.add(bh)
        share = bh * bw / 81
        assert aug.last.share[i] == pytest.approx(share)
        j = int(aug.last.partner[i])
        expected = (1 - share) * F.one_hot(labels[i], 3) + share * F.one_hot(labels[j], 3)
        assert torch.allclose(y[i], expected.float())
    assert len(sizes) >= 5  # lam is drawn per image


def test_saliencymix_takes_a_random_centre_for_an_all_zero_map():
    x = image(peak_at(4, 4, 9))[None].repeat(64, 1, 1, 1)
    aug = SaliencyMix(Probe(), layer="features", num_classes=3, seed=0)
    aug(x, torch.full((64,), 2, dtype=torch.long))  # class 2: all-zero maps
    boxes = {box_of(r) for r in aug.last.region if r.any()}
    assert len(boxes) >= 20
    # the channel-0 peak (4, 4) plays no part: many boxes miss it
    assert sum(not (y0 <= 4 < y1 and x0 <= 4 < x1) for y0, x0, y1, x1 in boxes) >= 5


def test_saliencymix_uses_the_partner_map_and_clips_at_the_border():
    # image 0 peaks at the corner (0, 0), image 1 at (5, 2), 8 x 8
    x = torch.stack([image(peak_at(0, 0, 8)), image(peak_at(5, 2, 8)) + 10])
    labels = torch.tensor([0, 1])
    for seed in range(10):
        aug = SaliencyMix(Probe(), layer="features", num_classes=3, seed=seed)
        out, _ = aug(x, labels)
        for i, j in enumerate(aug.last.partner.tolist()):
            region = aug.last.region[i]
            if not region.any():
                continue
            y0, x0, y1, x1 = box_of(region)
            assert torch.equal(out[i][:, region], x[j][:, region])
            assert torch.equal(out[i][:, ~region], x[i][:, ~region])
            if j == 0:  # a k x k box centred on (0, 0), clipped: rows/cols 0 .. k - k // 2
                assert (y0, x0) == (0, 0) and y1 == x1
            else:  # centred on (5, 2) unless clipped by the border
                for lo, hi, c, n in ((y0, y1, 5, 8), (x0, x1, 2, 8)):
                    assert lo <= c < hi
                    if 0 < lo and hi < n:
                        assert lo + (hi - lo) // 2 == c


def test_beta_draws_have_the_beta_moments():
    from camlens.augment import _beta

    g = torch.Generator().manual_seed(0)
    for alpha in (0.4, 1.0, 2.5):
        draws = _beta(alpha, 40000, g)
        assert draws.min() >= 0 and draws.max() <= 1
        assert draws.mean().item() == pytest.approx(0.5, abs=0.01)
        assert draws.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


# ------------------------------------------------------------- shared guarantees
AUGMENTS = [
    lambda m, **k: CamErase(m, p=1.0, **k),
    lambda m, **k: AttentiveCutMix(m, cells=3, grid=4, **k),
    lambda m, **k: SaliencyMix(m, **k),
]


@pytest.mark.parametrize("make", AUGMENTS, ids=["erase", "attentive", "saliency"])
def test_same_seed_same_output(make):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    model = randomize_bn(TinyNet()).eval()
    a, b, c = (make(model, num_classes=5, seed=s) for s in (7, 7, 8))
    xa, ya = a(x, labels)
    xb, yb = b(x, labels)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = c(x, labels)
    assert not torch.equal(xa, xc)
    x2, _ = a(x, labels)  # the stream goes on
    assert not torch.equal(x2, xa)
    a.manual_seed(7)  # and restarts
    x3, y3 = a(x, labels)
    assert torch.equal(x3, xa) and torch.equal(y3, ya)


@pytest.mark.parametrize("make", AUGMENTS, ids=["erase", "attentive", "saliency"])
def test_model_untouched_and_explained_in_eval_mode(make):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).train()  # BatchNorm and dropout in train mode
    model.features[0].weight.grad = torch.ones_like(model.features[0].weight)
    model.fc.bias.requires_grad_(False)
    model.features[3].register_forward_hook(lambda *a: None)
    before = model_state(model)
    rng = torch.get_rng_state()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 2, 3, 4])
    aug = make(model, num_classes=5, seed=0)
    aug(x, labels)
    assert_same_state(before, model_state(model))  # BN running stats included
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is not used
    assert model.training
    # the maps are the eval-mode Grad-CAM of the labelled class (dropout would change them)
    rec = aug.last
    own = rec.partner[rec.applied]
    want = camlens.explain(model, x[own], target=labels[own].tolist())
    assert torch.allclose(rec.maps[rec.applied], want, atol=1e-6)


@pytest.mark.parametrize("make", AUGMENTS, ids=["erase", "attentive", "saliency"])
def test_no_graph_reaches_the_training_step(make):
    model = TinyNet().train()
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    soft = torch.softmax(torch.randn(4, 5), 1).requires_grad_(True)
    aug = make(model, seed=0)
    out, y = aug(x, soft)
    for t in (out, y):
        assert not t.requires_grad and t.grad_fn is None
    loss = F.cross_entropy(model(out), y)  # the step runs as usual
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert x.grad is None


def test_dataloader_workers_get_their_own_reproducible_streams():
    x = image(peak_at(4, 4, 9))[None].repeat(8, 1, 1, 1)
    labels = torch.tensor([0, 1] * 4)
    aug = SaliencyMix(Probe(), layer="features", num_classes=3, seed=0)

    def collate(batch):
        images, y = default_collate(batch)
        return aug(images, y)

    def run() -> list[torch.Tensor]:
        loader = DataLoader(TensorDataset(x, labels), batch_size=4, num_workers=2,
                            collate_fn=collate, generator=torch.Generator().manual_seed(0))
        return [y for _, y in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # same content, each worker its own draws


# ------------------------------------------------------------------------ errors
def make_probe(cls=SaliencyMix, **kwargs):
    return cls(Probe(), layer="features", **kwargs)


@pytest.mark.parametrize(
    "images, labels, kwargs, error, match",
    [
        ([[0.0]], torch.tensor([0]), {"num_classes": 3}, TypeError, "torch.Tensor"),
        (torch.rand(3, 8, 8), torch.tensor([0]), {"num_classes": 3}, ValueError,
         r"\(B, C, H, W\), got \(3, 8, 8\); add a batch"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), {"num_classes": 3},
         TypeError, "floating point"),
        (torch.rand(2, 3, 8, 8), [0, 1], {"num_classes": 3}, TypeError, "as_tensor"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0, 1, 2]), {"num_classes": 3}, ValueError,
         r"\(3,\) do not fit 2 images"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0.0, 1.0]), {"num_classes": 3}, TypeError,
         "labels.long"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), {}, ValueError, "num_classes=..."),
        (torch.rand(2, 3, 8, 8), torch.tensor([0, 3]), {"num_classes": 3}, ValueError,
         r"class index 3 is outside 0..2"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 4), {"num_classes": 3}, ValueError,
         "4 columns but num_classes is 3"),
        (torch.rand(2, 3, 8, 8), -torch.ones(2, 3), {}, ValueError, ">= 0"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 3, dtype=torch.long), {}, TypeError,
         "labels.float"),
    ],
)
def test_bad_batches(images, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_probe(**kwargs)(images, labels)


def test_grid_larger_than_the_images():
    aug = make_probe(AttentiveCutMix, grid=7, num_classes=3)
    with pytest.raises(ValueError, match="use grid <= 5"):
        aug(torch.rand(2, 3, 5, 6), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "cls, kwargs, error, match",
    [
        (SaliencyMix, {"p": 1.5}, ValueError, r"p must be a number in \[0, 1\], got 1.5"),
        (SaliencyMix, {"alpha": 0}, ValueError, "alpha must be a finite number > 0"),
        (SaliencyMix, {"target": "top1"}, ValueError, "'label'.*'predicted'.*'top1'"),
        (SaliencyMix, {"seed": 1.5}, TypeError, "seed must be a whole number"),
        (SaliencyMix, {"num_classes": 0}, ValueError, "num_classes must be a positive"),
        (SaliencyMix, {"method": "gradcamm"}, ValueError, "gradcam"),
        (SaliencyMix, {"eval_mode": False}, ValueError, "always explains the model in eval"),
        (AttentiveCutMix, {"cells": 50}, ValueError, r"cells must be a whole number in 1..49"),
        (AttentiveCutMix, {"grid": 0}, ValueError, "grid must be a whole number >= 1"),
        (CamErase, {"area": (0.5, 0.2)}, ValueError, "area must be \\(lo, hi\\) with 0 < lo"),
        (CamErase, {"ratio": (0, 1)}, ValueError, "ratio must be"),
        (CamErase, {"threshold": -0.1}, ValueError, "threshold must be a number in"),
        (CamErase, {"fill": "noise"}, ValueError, "fill must be a number or 'random'"),
        (CamErase, {"fill": None}, TypeError, "fill must be a finite number"),
        (CamErase, {"tries": 0}, ValueError, "tries must be a whole number >= 1"),
    ],
)
def test_bad_options(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_probe(cls, **kwargs)
