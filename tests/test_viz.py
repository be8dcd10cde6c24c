"""Colormaps, overlays, grids and image reading: golden pixels and awkward files."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from camlens import viz


@pytest.mark.parametrize("name", ["jet", "turbo", "viridis", "inferno"])
def test_colormaps_match_matplotlib(name):
    values = np.linspace(0, 1, 256)
    want = np.rint(np.asarray(matplotlib.colormaps[name](values))[:, :3] * 255)
    got = viz.colormap(values, name)
    assert got.dtype == np.uint8 and got.shape == (256, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_colormap_golden_pixels_and_errors():
    got = viz.colormap(np.array([0.0, 0.5, 1.0, np.nan, 2.0]), "jet")
    assert got.tolist() == [[0, 0, 128], [125, 255, 122], [128, 0, 0], [0, 0, 128], [128, 0, 0]]
    with pytest.raises(ValueError, match="'jet'"):
        viz.colormap(np.zeros(3), "jett")
    assert {"jet", "turbo", "viridis", "inferno"} <= set(viz.available_colormaps())


def test_overlay_golden_pixels():
    image = np.full((2, 2, 3), 100, np.uint8)
    cam = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    out = viz.overlay(image, cam, alpha=0.25)
    assert isinstance(out, viz.Picture) and out.shape == (2, 2, 3)
    # 0.75 * 100 + 0.25 * jet: jet(0) = (0, 0, 128), jet(1) = (128, 0, 0), jet(.5) = (125, 255, 122)
    assert out[0, 0].tolist() == [75, 75, 107]
    assert out[0, 1].tolist() == [107, 75, 75]
    assert out[1, 0].tolist() == [106, 139, 106]
    assert viz.overlay(image, cam, alpha=0.0).tolist() == image.tolist()


def test_overlay_resizes_and_normalises_raw_maps():
    image = np.zeros((8, 12, 3), np.uint8)
    raw = torch.tensor([[0.0, 4.0], [2.0, 8.0]])
    out = viz.overlay(image, raw, alpha=1.0, colormap="gray")
    assert out.shape == (8, 12, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(image, raw, alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay(image, torch.tensor([[float("nan")]]))


def test_picture_shows_itself_as_png():
    pic = viz.overlay(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4)))
    png = pic._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert np.asarray(Image.open(io.BytesIO(png))).tolist() == np.asarray(pic).tolist()


def test_grid_layout_and_labels():
    image = np.full((50, 80, 3), 200, np.uint8)
    maps = {"gradcam: cat 90%": torch.rand(7, 7), "layercam": torch.rand(50, 80)}
    g = viz.grid(image, maps, panel_height=50, font_size=10)
    # three panels of 80 px and two 4 px gaps; 18 px label strips above 50 px images
    assert g.shape == (50 + 18, 3 * 80 + 2 * 4, 3)
    assert (g[:18, :80] < 128).any()  # some dark text in the first label strip
    wrapped = viz.grid(image, [torch.rand(5, 5)] * 8, titles=[str(i) for i in range(8)],
                       panel_height=50)
    assert wrapped.shape[1] == 3 * 80 + 2 * 4  # 9 panels -> 3 columns
    with pytest.raises(ValueError, match="titles"):
        viz.grid(image, [torch.rand(5, 5)], titles=["a", "b"])


def test_load_image_kinds(tmp_path):
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = viz.load_image(tmp_path / "a.png")
    assert got.shape == (3, 4, 3)
    assert got[0, 0].tolist() == [255, 0, 0] and got[1, 1].tolist() == [255, 255, 255]

    Image.fromarray(np.full((5, 6), 77, np.uint8), "L").save(tmp_path / "g.png")
    assert viz.load_image(str(tmp_path / "g.png"))[2, 3].tolist() == [77, 77, 77]

    deep = np.array([[0, 32768], [65535, 257]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert viz.load_image(tmp_path / "d.png")[..., 0].tolist() == [[0, 128], [255, 1]]

    assert viz.load_image(torch.ones(3, 2, 2))[0, 0].tolist() == [255, 255, 255]
    assert viz.load_image(np.full((2, 2), 0.5))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="undo the model's normalisation"):
        viz.load_image(np.full((2, 2, 3), -2.0))


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    got = viz.load_image(tmp_path / "r.jpg")
    assert got.shape == (40, 20, 3)
    assert got[5, 10].mean() > 200 and got[35, 10].mean() < 50  # white half now on top


def test_bad_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(viz.ImageError, match="not an image"):
        viz.load_image(tmp_path / "notes.txt")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(viz.ImageError, match="truncated"):
        viz.load_image(tmp_path / "cut.jpg")
    with pytest.raises(viz.ImageError, match="no such file"):
        viz.load_image(tmp_path / "missing.png")
    with pytest.raises(viz.ImageError, match="directory"):
        viz.load_image(tmp_path)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(viz.ImageError, match="over the limit"):
        viz.load_image(tmp_path / "big.png", max_pixels=100)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.png"
    viz.atomic_write(target, b"first")
    import camlens.viz._image as image_module

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(image_module.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        viz.atomic_write(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]
