"""Metrics against direct loop-based references and independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyNet, assert_same_state, model_state, randomize_bn
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

import camlens
from camlens import metrics


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize_bn(TinyNet()).eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))


def _loop_curve(model, x, sal, cls, step, start, finish):
    """Reference: one image, one step at a time, pixels changed in saliency order."""
    h, w = sal.shape
    order = np.argsort(-sal.flatten().numpy(), kind="stable")
    n = int(np.ceil(h * w / step))
    out = []
    for i in range(n + 1):
        img = start.clone()
        for idx in order[: i * step]:
            r, c = divmod(int(idx), w)
            img[:, r, c] = finish[:, r, c]
        with torch.no_grad():
            out.append(float(torch.softmax(model(img[None]), 1)[0, cls]))
    curve = np.array(out)
    return (curve.sum() - (curve[0] + curve[-1]) / 2) / n


def test_deletion_and_insertion_match_a_loop_reference(model, x):
    maps = camlens.explain(model, x)
    before = model_state(model)
    dele = metrics.deletion(model, x, maps, step=10, batch_size=7)
    ins = metrics.insertion(model, x, maps, step=10)
    assert_same_state(before, model_state(model))
    cls = model(x).argmax(1).tolist()
    blur = metrics.gaussian_blur(x)
    for b in range(2):
        ref_d = _loop_curve(model, x[b], maps[b], cls[b], 10, x[b], torch.zeros_like(x[b]))
        ref_i = _loop_curve(model, x[b], maps[b], cls[b], 10, blur[b], x[b])
        assert abs(float(dele[b]) - ref_d) < 1e-5
        assert abs(float(ins[b]) - ref_i) < 1e-5
    curve = metrics.deletion(model, x, maps, step=10, return_curve=True)
    assert curve.shape == (2, 16)  # ceil(144 / 10) + 1 points


def test_gaussian_blur_is_normalised():
    flat = torch.ones(1, 3, 30, 30)
    assert torch.allclose(metrics.gaussian_blur(flat)[..., 10:20, 10:20], flat[..., 10:20, 10:20])


def test_confidence_change_by_hand(model, x):
    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(3))
    result = metrics.confidence_change(model, x, maps, target=[1, 2])
    with torch.no_grad():
        y = torch.softmax(model(x), 1)[[0, 1], [1, 2]]
        o = torch.softmax(model(x * maps[:, None]), 1)[[0, 1], [1, 2]]
    drop = 100 * torch.clamp(y - o, min=0) / y
    assert torch.allclose(result.drop, drop, atol=1e-5)
    assert abs(result.average_drop - float(drop.mean())) < 1e-4
    assert result.increase == pytest.approx(100 * float((o > y).float().mean()))


def test_confidence_change_matches_pytorch_grad_cam(model, x):
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(4))
    ours = metrics.confidence_change(model, x, maps, target=[0, 3])
    targets = [ClassifierOutputSoftmaxTarget(c) for c in (0, 3)]
    ref = CamMultImageConfidenceChange()(x, maps.numpy(), targets, model)  # O - Y per image
    with torch.no_grad():
        y = torch.softmax(model(x), 1)[[0, 1], [0, 3]]
    drop = 100 * np.maximum(-np.asarray(ref).flatten(), 0) / y.numpy()
    assert np.allclose(ours.drop.numpy(), drop, atol=1e-4)


def test_win_rate():
    a = torch.tensor([1.0, 5.0, 3.0, 2.0])
    b = torch.tensor([2.0, 4.0, 3.0, 9.0])
    assert metrics.win_rate(a, b) == pytest.approx(100 * (2 + 0.5) / 4)


def test_pointing_game_matches_a_loop():
    maps = torch.zeros(3, 40, 40)
    maps[0, 5, 5] = 1  # inside the box
    maps[1, 25, 25] = 1  # 8.5 px from the box's last pixel (19, 19): within 15
    maps[2, 39, 0] = 1  # far away
    boxes = torch.tensor([[0, 0, 20, 20]] * 3)
    hits = metrics.pointing_game(maps, boxes, tolerance=15)
    for i in range(3):
        y, x = divmod(int(maps[i].argmax()), 40)
        # distance from the peak to the nearest pixel of the box
        dx = max(0, x - 19, 0 - x)
        dy = max(0, y - 19, 0 - y)
        assert bool(hits[i]) == (dx * dx + dy * dy <= 15 * 15)
    assert hits.tolist() == [True, True, False]
    masks = torch.zeros(3, 40, 40, dtype=torch.bool)
    masks[:, :20, :20] = True
    assert metrics.pointing_game(maps, masks, tolerance=0).tolist() == [True, False, False]


def test_energy_pointing_game_and_localization_error():
    maps = torch.zeros(2, 10, 10)
    maps[0, :5, :5] = 1.0
    maps[0, 9, 9] = 1.0
    maps[1, 6:, 6:] = 1.0
    boxes = torch.tensor([[0, 0, 5, 5], [0, 0, 5, 5]])
    energy = metrics.energy_pointing_game(maps, boxes)
    assert torch.allclose(energy, torch.tensor([25 / 26, 0.0]))
    # map 0's largest component is the 5x5 square: IoU 1; map 1: IoU 0 -> one error of two
    err = metrics.localization_error(maps, torch.tensor([3, 3]), torch.tensor([3, 3]), boxes)
    assert err == pytest.approx(50.0)
    err = metrics.localization_error(maps, torch.tensor([1, 3]), torch.tensor([3, 3]), boxes)
    assert err == pytest.approx(100.0)


def test_pointing_games_accept_lists_of_boxes_and_several_objects():
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 2] = 1.0  # in image 0's box
    maps[1, 8, 8] = 1.0  # in image 1's second box only
    maps[2, 5, 5] = 1.0  # between image 2's two boxes
    maps[1, 0:2, 0:2] = 0.5  # energy: 4 * 0.5 in box one, 1.0 in box two, of 3.0
    maps[2, 0, 9] = 0.5  # energy: the corner pixel lies in the second box
    boxes = [[0, 0, 4, 4], [[0, 0, 3, 3], [7, 7, 10, 10]], [[0, 0, 3, 3], [8, 0, 10, 2]]]
    hits = metrics.pointing_game(maps, boxes, tolerance=0)
    assert hits.tolist() == [True, True, False]
    # (5, 5) is sqrt(3^2 + 3^2) = 4.2 px from box one's last pixel (2, 2)
    assert metrics.pointing_game(maps, boxes, tolerance=4).tolist() == [True, True, False]
    assert metrics.pointing_game(maps, boxes, tolerance=5).tolist() == [True, True, True]
    energy = metrics.energy_pointing_game(maps, boxes)
    assert torch.allclose(energy, torch.tensor([1.0, (2.0 + 1.0) / 3.0, 0.5 / 1.5]))
    # one box each: a list, a tuple of tensors, a (B, 4) array and tensor agree
    one = [[0, 0, 4, 4], [7, 7, 10, 10], [4, 4, 6, 6]]
    want = [True, True, True]
    for objects in (one, tuple(torch.tensor(b) for b in one), np.array(one), torch.tensor(one),
                    [[b] for b in one], [[torch.tensor(b)] for b in one]):
        assert metrics.pointing_game(maps, objects, tolerance=0).tolist() == want
    energy = metrics.energy_pointing_game(maps, one)
    assert torch.allclose(energy, torch.tensor([1.0, 1.0 / 3.0, 1.0 / 1.5]))
    # boolean masks (B, H, W) still work, as a tensor or an array
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, 7:, 7:] = True
    assert metrics.pointing_game(maps, masks.numpy(), tolerance=0).tolist() == [False, True,
                                                                                  False]
    assert torch.allclose(metrics.energy_pointing_game(maps, masks),
                          torch.tensor([0.0, 1.0 / 3.0, 0.0]))


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (torch.tensor([[[0, 0, 4, 4]]] * 2), r"\(2, 1, 4\).*list of per-image boxes.*squeeze"),
        (torch.zeros(2, 5, 5, dtype=torch.bool), r"\(2, 5, 5\) are neither masks like the maps"),
        (torch.tensor([[0, 0, 4, 4]]), "1 boxes for 2 maps"),
        ([[0, 0, 4, 4]], "1 entries of objects for 2 maps"),
        ([[0, 0, 4, 4], []], r"objects\[1\] has shape \(0,\)"),
        ([[0, 0, 4, 4], [0, 0, 4]], r"objects\[1\] has shape \(3,\)"),
        ([[0, 0, 4, 4], [[0, 0, 4, 4], [0, 0, 20, 4]]], "outside the 10 x 10 image"),
        (torch.zeros(2, 4, 4, 4), r"objects of shape \(2, 4, 4, 4\)"),
    ],
)
def test_pointing_game_says_which_objects_it_accepts(objects, message):
    maps = torch.rand(2, 10, 10)
    with pytest.raises(ValueError, match=message):
        metrics.pointing_game(maps, objects)
    with pytest.raises(ValueError, match=message):
        metrics.energy_pointing_game(maps, objects)


def test_spearman_and_ssim_match_scipy_and_skimage():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(3, 16, 16, generator=g)
    b = (a + 0.3 * torch.rand(3, 16, 16, generator=g)).clamp(0, 1)
    b[0, :4] = 0.5  # ties
    rho = metrics.spearman(a, b)
    s = metrics.ssim(a, b)
    for i in range(3):
        assert float(rho[i]) == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten())[0],
                                              abs=1e-5)
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0)
        assert float(s[i]) == pytest.approx(ref, abs=1e-5)


def test_sanity_check_never_touches_the_model_and_gradcam_falls(model, x):
    before = model_state(model)
    result = metrics.sanity_check(model, x, "gradcam")
    assert_same_state(before, model_state(model))
    assert result.layers[0] == "fc"  # top layer first
    assert result.spearman.shape == (len(result.layers), 2)
    # Grad-CAM reads the classifier: randomising it (the first step) changes the map
    assert float(result.spearman[0].mean()) < 0.9
    assert torch.isfinite(result.ssim).all() and (result.ssim <= 1 + 1e-6).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: metrics.deletion(m, x, torch.zeros(2, 5, 5)), "do not match"),
        (lambda m, x: metrics.deletion(m, x, torch.zeros(2, 12, 12), step=0), "step"),
        (lambda m, x: metrics.insertion(m, x, torch.zeros(2, 12, 12), baseline="x"), "baseline"),
        (lambda m, x: metrics.pointing_game(torch.zeros(2, 12, 12),
                                            torch.tensor([[0, 0, 20, 5]] * 2)), "outside"),
        (lambda m, x: metrics.energy_pointing_game(torch.zeros(2, 12, 12),
                                                   torch.tensor([[5, 0, 5, 5]] * 2)), "empty"),
        (lambda m, x: metrics.confidence_change(m, x, torch.full((2, 12, 12), float("nan"))),
         "NaN"),
    ],
)
def test_bad_input(model, x, call, message):
    with pytest.raises(ValueError, match=message):
        call(model, x)


def test_noisy_linear_imputation_matches_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 40, 40, generator=g)
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    for removed in (torch.rand(40, 40, generator=g) > 0.3, ((yy - 18) ** 2 + (xx - 22) ** 2) < 150):
        ref = NoisyLinearImputer(noise=0.0)(img, (~removed).float())
        ours = metrics.noisy_linear_impute(img[None], removed[None], noise=0.0, tol=1e-7)[0]
        assert torch.allclose(ours, ref, atol=1e-4)
        assert torch.equal(ours[:, ~removed], img[:, ~removed])  # known pixels untouched


def test_road_matches_pytorch_grad_cam_with_the_noise_off(model, x):
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    import camlens.metrics as m

    maps = camlens.explain(model, x)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in (0, 3)]
    ours_morf = m.road(model, x, maps, [0, 3], percentiles=(30, 70), order="morf", noise=0.0)
    ours_lerf = m.road(model, x, maps, [0, 3], percentiles=(30,), order="lerf", noise=0.0)
    import pytorch_grad_cam.metrics.road as road_module

    original = road_module.NoisyLinearImputer.__init__.__defaults__
    road_module.NoisyLinearImputer.__init__.__defaults__ = (0.0, original[1])  # noise off
    try:
        # pytorch-grad-cam's percentile q keeps the pixels below the q-th percentile:
        # MoRF(q) removes the top 100 - q %; LeRF(q) the bottom q % (of 1 - map's top)
        for col, q in ((0, 70), (1, 30)):
            ref = ROADMostRelevantFirst(q)(x, maps.numpy(), targets, model, return_diff=False)
            assert np.allclose(ours_morf[:, col].numpy(), np.asarray(ref).flatten(), atol=1e-4)
        ref = ROADLeastRelevantFirst(70)(x, maps.numpy(), targets, model, return_diff=False)
        assert np.allclose(ours_lerf[:, 0].numpy(), np.asarray(ref).flatten(), atol=1e-4)
    finally:
        road_module.NoisyLinearImputer.__init__.__defaults__ = original


def test_road_bad_percentiles(model, x):
    maps = torch.rand(2, 12, 12)
    with pytest.raises(ValueError, match="strictly between 0 and 100"):
        metrics.road(model, x, maps, percentiles=(0, 50))
    with pytest.raises(ValueError, match="morf"):
        metrics.road(model, x, maps, order="most")


def test_annotations_coco_voc_and_simple(tmp_path):
    import json

    from camlens._annotations import load_annotations

    coco = {"images": [{"id": 1, "file_name": "a/cat.jpg"}],
            "annotations": [{"id": 5, "image_id": 1, "bbox": [10, 20, 30, 40]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert load_annotations(tmp_path / "coco.json")["cat.jpg"].boxes == [[10, 20, 40, 60]]
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "x.xml").write_text(
        "<annotation><filename>dog.jpg</filename><object><bndbox><xmin>1</xmin>"
        "<ymin>5</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    assert load_annotations(voc)["dog.jpg"].boxes == [[0, 4, 10, 20]]  # 1-based inclusive
    (tmp_path / "s.json").write_text(json.dumps({"b.png": {"boxes": [[0, 0, 5, 5]], "label": 3}}))
    got = load_annotations(tmp_path / "s.json")["b.png"]
    assert got.boxes == [[0, 0, 5, 5]] and got.label == 3
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(ValueError, match="no boxes"):
        load_annotations(tmp_path / "empty.json")
    (tmp_path / "bad.json").write_text(json.dumps({"b.png": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match="four numbers"):
        load_annotations(tmp_path / "bad.json")


def _spsolve_impute(img, removed):
    """Reference: ROAD's system assembled pixel by pixel and solved exactly by scipy:
    s_i x_i - sum_{removed j} w_ij x_j = sum_{known j} w_ij v_j over the removed pixels,
    w = 1/6 (direct) and 1/12 (diagonal) neighbours inside the image, s_i = sum_j w_ij."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = img.shape
    v = img.double().numpy().reshape(c, -1)
    ids = -np.ones(h * w, dtype=int)
    unknown = np.flatnonzero(removed.numpy().ravel())
    ids[unknown] = np.arange(unknown.size)
    rows, cols, vals = [], [], []
    rhs = np.zeros((unknown.size, c))
    for k, p in enumerate(unknown):
        y, x = divmod(int(p), w)
        diag = 0.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w:
                    wt = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                    q = (y + dy) * w + x + dx
                    diag += wt
                    if ids[q] >= 0:
                        rows.append(k), cols.append(ids[q]), vals.append(-wt)
                    else:
                        rhs[k] += wt * v[:, q]
        rows.append(k), cols.append(k), vals.append(diag)
    a = coo_matrix((vals, (rows, cols)), shape=(unknown.size,) * 2).tocsc()
    out = v.copy()
    out[:, unknown] = spsolve(a, rhs).reshape(unknown.size, c).T
    return torch.from_numpy(out.reshape(c, h, w)).float()


def _cam_removed(n, h, w, fraction, seed):
    """MoRF masks of CAM-like saliency (a coarse 4 x 4 random grid upsampled bicubically,
    as a CAM is): ``fraction`` of the pixels removed as large connected holes."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    maps = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic")[:, 0]
    return maps >= torch.quantile(maps.flatten(1), 1 - fraction, dim=1)[:, None, None]


def test_noisy_linear_imputation_matches_spsolve_on_a_large_cam_hole():
    # 90 % removed as CAM blobs: the hard case (far from any known pixel, ill-conditioned);
    # the multigrid-preconditioned CG must stop at the exact solution, not just a small
    # residual. Default tol 1e-7 -> within 1e-6 on [0, 1] images (measured 2e-7).
    removed = _cam_removed(3, 64, 64, 0.9, seed=0)
    img = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert abs(removed.float().mean().item() - 0.9) < 0.01
    ours = metrics.noisy_linear_impute(img, removed, noise=0.0)
    for i in range(3):
        ref = _spsolve_impute(img[i], removed[i])
        assert (ours[i] - ref).abs().max() <= 1e-6
        assert torch.equal(ours[i][:, ~removed[i]], img[i][:, ~removed[i]])


def test_noisy_linear_imputation_with_holes_at_the_border():
    # the image border has no neighbours: their weights leave the mean (pytorch-grad-cam's
    # convention); odd, non-square size; a nearly full hole with one known pixel in a
    # corner; the fully removed and the untouched image must not break the batch
    g = torch.Generator().manual_seed(3)
    h, w = 37, 50
    img = torch.rand(4, 3, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    edge = (yy < 9) | (xx >= w - 5) | (((yy - h) ** 2 + xx**2) < 400)
    corner = torch.ones(h, w, dtype=torch.bool)
    corner[0, 0] = False
    removed = torch.stack([edge, corner, torch.ones(h, w, dtype=torch.bool), ~corner & ~edge])
    ours = metrics.noisy_linear_impute(img, removed, noise=0.0)
    for i in (0, 1, 3):
        assert (ours[i] - _spsolve_impute(img[i], removed[i])).abs().max() <= 1e-6
    assert torch.isfinite(ours).all()
    assert torch.equal(ours[3], img[3])  # nothing removed: unchanged
    # one known pixel: the solution of the (Neumann-like) system is that pixel's value
    assert torch.allclose(ours[1], img[1, :, :1, :1].expand(3, h, w), atol=1e-5)


def test_noisy_linear_imputation_is_batch_independent_and_noisy():
    removed = _cam_removed(3, 40, 40, 0.7, seed=5)
    img = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(6))
    together = metrics.noisy_linear_impute(img, removed, noise=0.0)
    for i in range(3):
        alone = metrics.noisy_linear_impute(img[i : i + 1], removed[i : i + 1], noise=0.0)
        assert torch.allclose(together[i], alone[0], atol=1e-6)
    noisy = metrics.noisy_linear_impute(img, removed, noise=0.01, seed=1)
    extra = (noisy - together)[:, :, removed[0]][0]
    assert 0.008 < float(extra.std()) < 0.012
    assert torch.equal(noisy, metrics.noisy_linear_impute(img, removed, noise=0.01, seed=1))
