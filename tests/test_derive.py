"""Boxes and masks from maps, checked against hand-made maps and a loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlens
from camlens._derive import connected_components


def test_box_of_largest_component():
    m = torch.zeros(6, 8)
    m[1:3, 1:3] = 1.0  # 4 pixels, the maximum
    m[3, 3] = 0.5  # touches the first blob diagonally: 5 pixels together
    m[4:6, 5:8] = 0.9  # 6 pixels: the largest component
    m[0, 7] = 0.1  # below 20 % of the maximum
    assert camlens.boxes(m).tolist() == [5, 4, 8, 6]
    assert camlens.boxes(m, threshold=0.95).tolist() == [1, 1, 3, 3]
    keep = camlens.masks(m, 0.2, largest_component=True)
    assert keep.sum() == 6 and keep[4:6, 5:8].all()
    assert camlens.masks(m, 0.2).sum() == 11


def test_batched_shapes_and_empty_maps():
    maps = torch.zeros(2, 3, 5, 5)
    maps[0, 1, 2, 2] = 1
    b = camlens.boxes(maps)
    assert b.shape == (2, 3, 4)
    assert b[0, 1].tolist() == [2, 2, 3, 3]
    assert b[1].tolist() == [[0, 0, 0, 0]] * 3
    assert camlens.masks(maps).shape == (2, 3, 5, 5)


def test_ties_go_to_the_first_component_in_raster_order():
    m = torch.zeros(5, 5)
    m[0, 3:5] = 1
    m[4, 0:2] = 1
    assert camlens.boxes(m).tolist() == [3, 0, 5, 1]


def _flood_labels(mask: np.ndarray) -> np.ndarray:
    """Loop-based 8-connected labelling, the reference."""
    labels = np.zeros(mask.shape, int)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        labels[y, x] = n
        while stack:
            cy, cx = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = cy + dy, cx + dx
                    if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1]:
                        if mask[yy, xx] and not labels[yy, xx]:
                            labels[yy, xx] = n
                            stack.append((yy, xx))
    return labels


@pytest.mark.parametrize("seed", range(3))
def test_torch_labelling_matches_flood_fill(seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(3, 23, 31, generator=g) > 0.55
    ours = connected_components(mask).numpy()
    for i in range(3):
        ref = _flood_labels(mask[i].numpy())
        # the same partition: a one-to-one map between the two labellings
        pairs = set(zip(ref[mask[i].numpy()], ours[i][mask[i].numpy()]))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
        assert (ours[i][~mask[i].numpy()] == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_torch_and_scipy_paths_agree(monkeypatch, seed):
    import camlens._derive as derive

    g = torch.Generator().manual_seed(seed)
    maps = torch.nn.functional.interpolate(torch.rand(6, 1, 6, 6, generator=g), size=(40, 40),
                                           mode="bilinear")[:, 0]
    maps[1] = 0  # an empty map: the empty box
    maps[2] = (maps[2] > 0.5).float()  # flat plateaus: ties between components
    maps[3, :, :20] = maps[3, :, 20:]  # two equal components side by side
    threshold = [0.5, 0.2, 0.9, 0.0][seed]
    numpy_boxes = derive.boxes_numpy(maps.numpy(), threshold)  # the runner's path
    with_scipy = camlens.boxes(maps, threshold)
    assert with_scipy.dtype == torch.int64 and torch.equal(torch.from_numpy(numpy_boxes),
                                                          with_scipy)
    # the torch-only path: masks(largest_component=True) with our labelling
    monkeypatch.setattr(derive, "_ndimage", lambda: None)
    monkeypatch.setattr(derive, "_labels", derive.connected_components)
    assert torch.equal(camlens.boxes(maps, threshold), with_scipy)
    assert with_scipy[1].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="NaN"):
        derive.boxes_numpy(np.full((3, 3), np.nan, np.float32))


def test_errors():
    with pytest.raises(ValueError, match="threshold"):
        camlens.boxes(torch.zeros(3, 3), threshold=1.5)
    with pytest.raises(ValueError, match="NaN"):
        camlens.masks(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        camlens.boxes(torch.zeros(3))
