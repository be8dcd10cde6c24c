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
    out = viz.overlay(image, raw, alpha=1.0, colormap="gray", region="full")
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
    maps = {"gradcam: 90%": torch.rand(5, 8), "layercam": torch.rand(50, 80)}
    g = viz.grid(image, maps, panel_height=50, font_size=10)
    # three panels of 80 px and two 4 px gaps; 18 px label strips above 50 px images
    assert g.shape == (50 + 18, 3 * 80 + 2 * 4, 3)
    assert (g[:18, :80] < 128).any()  # some dark text in the first label strip
    wrapped = viz.grid(image, [torch.rand(5, 8)] * 8, titles=[str(i) for i in range(8)],
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


def test_png_with_and_without_isal(monkeypatch):
    import zlib

    import camlens.viz._image as image_module

    pixels = np.random.default_rng(3).integers(0, 256, (37, 41, 3), dtype=np.uint8)
    pixels[:, :20] = 90  # some runs for deflate to find
    fast = image_module.encode_png(pixels)
    monkeypatch.setattr(image_module, "_isal", lambda: None)
    plain = image_module.encode_png(pixels)
    for png in (fast, plain, image_module.encode_png(pixels, compress_level=9)):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    start = plain.index(b"IDAT") + 4
    size = int.from_bytes(plain[start - 8 : start - 4], "big")
    assert plain[start : start + size] == zlib.compress(  # zlib's level 1 without isal
        zlib.decompress(plain[start : start + size]), 1)


def test_atomic_write_permissions_and_links(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = viz.atomic_write(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # 0666 minus the umask, not 0600
    # a link where the file goes is replaced, never written through
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (tmp_path / "b.bin").symlink_to(outside)
    viz.atomic_write(tmp_path / "b.bin", b"new")
    assert outside.read_text() == "keep" and (tmp_path / "b.bin").read_bytes() == b"new"
    assert not (tmp_path / "b.bin").is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_blend_table_is_the_float_formula_bit_for_bit():
    from camlens.viz._colormaps import blend

    def by_hand(rgb, values, alpha, name):  # the formula, pixel by pixel, in float32
        part = (1.0 - alpha) * rgb.astype(np.float32)
        part += alpha * viz.colormap(values, name).astype(np.float32)
        return np.clip(np.rint(part), 0, 255).astype(np.uint8)

    # every (colour index, pixel value) pair, at a few alphas and every colormap
    index = np.repeat(np.arange(256), 256).reshape(256, 256).astype(np.float32) / 255
    pixels = np.stack([np.tile(np.arange(256, dtype=np.uint8), (256, 1))] * 3, -1)
    pixels[..., 1] = pixels[..., 1][::-1]
    for name in viz.available_colormaps():
        for alpha in (0.0, 0.3, 0.5, 1 / 3, 0.7, 1.0):
            assert np.array_equal(blend(pixels, index, alpha, name),
                                  by_hand(pixels, index, alpha, name)), (name, alpha)
    # values between table entries round as the colormap does
    values = np.random.default_rng(0).random((50, 60), dtype=np.float32)
    rgb = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    assert np.array_equal(blend(rgb, values, 0.45, "jet"), by_hand(rgb, values, 0.45, "jet"))


@pytest.mark.parametrize(("picture", "expected"), [
    ("horizontal", 2),  # a left-to-right ramp: every row alike, Up leaves zeros
    ("vertical", 1),  # a top-to-bottom ramp: every row flat, Sub does
    ("flat", 0),  # nothing to gain: None
])
def test_png_filter_is_chosen_per_picture(picture, expected):
    import zlib

    from camlens.viz._image import encode_png

    ramp = np.arange(200, dtype=np.uint8)
    a = {"horizontal": np.tile(ramp[None, :, None], (120, 1, 3)),
         "vertical": np.tile(ramp[:, None, None], (1, 120, 3)),
         "flat": np.zeros((60, 70, 3), np.uint8)}[picture]
    png = encode_png(a)
    start = png.index(b"IDAT") + 4
    raw = zlib.decompress(png[start : start + int.from_bytes(png[start - 8 : start - 4], "big")])
    h, w = a.shape[:2]
    assert {raw[r * (w * 3 + 1)] for r in range(h)} == {expected}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), a)


# ----------------------------------------------------------------- maps of a crop
@pytest.fixture(scope="module")
def cat_photo(tmp_path_factory):
    """scikit-image's chelsea as a PNG file: 451 x 300 (width x height)."""
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "cat.png"
    Image.fromarray(data.chelsea()).save(path)
    return path, data.chelsea()


@pytest.fixture(scope="module")
def preprocess():
    import camlens

    return camlens.load_model()[1]


def bump(y: int, x: int, size: int = 224, sigma: float = 3.0) -> torch.Tensor:
    """A (size, size) map in [0, 1] with its single peak (1.0) at (y, x)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))


def peak(picture: np.ndarray) -> tuple[int, int]:
    """(y, x) of the brightest pixel of a grey overlay."""
    y, x = np.unravel_index(int(np.argmax(np.asarray(picture)[..., 0])), picture.shape[:2])
    return int(y), int(x)


PY, PX = 60, 150  # the peak in the model's 224 x 224 input


def test_overlay_puts_a_crop_map_where_the_model_looked(cat_photo, preprocess):
    path, photo = cat_photo
    assert photo.shape == (300, 451, 3)
    x0, y0, x1, y1 = preprocess.crop_box(300, 451)
    assert (x0, y0, x1, y1) == (94, 19, 356, 281)
    crop = preprocess.crop
    # centre of input pixel (PY, PX) in photo pixels (pixel centres at +0.5)
    want_y = y0 + (PY + 0.5) * (y1 - y0) / crop - 0.5
    want_x = x0 + (PX + 0.5) * (x1 - x0) / crop - 0.5
    out = viz.overlay(path, bump(PY, PX), alpha=1.0, colormap="gray", region=preprocess)
    assert out.size == (451, 300)
    inside = np.asarray(out)[y0:y1, x0:x1]
    got_y, got_x = peak(inside)
    assert abs(y0 + got_y - want_y) <= 1 and abs(x0 + got_x - want_x) <= 1
    assert (y0 + got_y, x0 + got_x) == (89, 269)
    assert inside[..., 0].max() > 240
    outside = np.ones((300, 451), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(np.asarray(out)[outside], photo[outside])  # untouched photo

    # the same box given by hand, and a region the size of the map: identical pixels
    same = viz.overlay(path, bump(PY, PX), alpha=1.0, colormap="gray", region=(x0, y0, x1, y1))
    assert np.array_equal(same, out)

    # without region, a square map on a 3:2 photo is refused with the fix in the message
    with pytest.raises(ValueError, match=r"crop.*region=preprocess.*preprocess\.view"):
        viz.overlay(path, bump(PY, PX))
    with pytest.raises(ValueError, match="region=preprocess"):
        viz.grid(path, {"gradcam": bump(PY, PX)})
    # region="full" stretches on purpose: the peak lands elsewhere (the old behaviour)
    stretched = viz.overlay(path, bump(PY, PX), alpha=1.0, colormap="gray", region="full")
    sy, sx = peak(stretched)
    assert abs(sy - ((PY + 0.5) * 300 / crop - 0.5)) <= 1
    assert abs(sx - ((PX + 0.5) * 451 / crop - 0.5)) <= 1


def test_grid_puts_a_crop_map_where_the_model_looked(cat_photo, preprocess):
    path, photo = cat_photo
    x0, y0, x1, y1 = preprocess.crop_box(300, 451)
    want_y = y0 + (PY + 0.5) * (y1 - y0) / preprocess.crop - 0.5
    want_x = x0 + (PX + 0.5) * (x1 - x0) / preprocess.crop - 0.5
    maps = {"bump": bump(PY, PX)}
    g = viz.grid(path, maps, alpha=1.0, colormap="gray", region=preprocess, panel_height=None)
    strip = g.shape[0] - 300
    assert g.shape == (strip + 300, 451 + 4 + 451, 3) and strip == 14 + 8
    assert np.array_equal(g[strip:, :451], photo)  # the image panel
    panel = g[strip:, 455:]
    assert np.array_equal(panel, viz.overlay(path, maps["bump"], 1.0, "gray", region=preprocess))
    got_y, got_x = peak(panel[y0:y1, x0:x1])
    assert abs(y0 + got_y - want_y) <= 1 and abs(x0 + got_x - want_x) <= 1

    # scaled panels: the region is scaled with the photo (150 / 300 high, 226 / 451 wide)
    g = viz.grid(path, maps, alpha=1.0, colormap="gray", region=preprocess, panel_height=150)
    strip = g.shape[0] - 150
    assert g.shape[1] == 226 + 4 + 226
    panel = g[strip:, 230:]
    got_y, got_x = peak(panel)
    assert abs(got_y - (want_y + 0.5) * 150 / 300 + 0.5) <= 1.5
    assert abs(got_x - (want_x + 0.5) * 226 / 451 + 0.5) <= 1.5


def test_preprocess_view_is_the_crop_the_model_saw(cat_photo, preprocess):
    path, photo = cat_photo
    view = preprocess.view(path)
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8
    # normalising the view gives the model's input back (up to uint8 rounding)
    mean = torch.tensor(preprocess.mean).view(3, 1, 1)
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    back = (torch.from_numpy(view).permute(2, 0, 1).float() / 255 - mean) / std
    assert (back - preprocess(path)).abs().max() < 1.5 / 255 / min(preprocess.std)
    # and it shows the crop_box part of the photo
    x0, y0, x1, y1 = preprocess.crop_box(300, 451)
    small = np.asarray(Image.fromarray(photo[y0:y1, x0:x1]).resize((224, 224), Image.BILINEAR))
    assert np.abs(small.astype(int) - view.astype(int)).mean() < 3
    # maps of the input sit on it one to one: no region needed, peak exactly in place
    out = viz.overlay(view, bump(PY, PX), alpha=1.0, colormap="gray")
    assert peak(out) == (PY, PX)
    g = viz.grid(view, {"bump": bump(PY, PX)}, panel_height=None)
    assert g.shape[1] == 2 * 224 + 4


def test_overlay_region_box_and_errors():
    image = np.full((10, 20, 3), 50, np.uint8)
    cam = torch.ones(4, 4)
    out = viz.overlay(image, cam, alpha=1.0, colormap="gray", region=(5, 2, 9, 6))
    assert out[2:6, 5:9].tolist() == np.full((4, 4, 3), 255).tolist()
    inside = np.zeros((10, 20), bool)
    inside[2:6, 5:9] = True
    assert (out[~inside] == 50).all()
    # a box of floats is rounded; numpy boxes work too
    assert np.array_equal(viz.overlay(image, cam, 1.0, "gray", region=np.array([5.2, 2, 9, 6])),
                          out)
    # a map of the same shape as its image (2 % tolerance, or one pixel of rounding) is fine
    viz.overlay(np.zeros((224, 228, 3), np.uint8), torch.rand(224, 224))
    viz.overlay(np.zeros((9, 13, 3), np.uint8), torch.rand(2, 3))
    with pytest.raises(ValueError, match="outside the 20 x 10 image"):
        viz.overlay(image, cam, region=(5, 2, 25, 6))
    with pytest.raises(ValueError, match="empty"):
        viz.overlay(image, cam, region=(5, 2, 5, 6))
    with pytest.raises(TypeError, match="crop_box"):
        viz.overlay(image, cam, region=object())
    with pytest.raises(ValueError, match="'full'"):
        viz.overlay(image, cam, region="crop")
    with pytest.raises(ValueError, match="4 x 4 pixels but the image is 20 x 10"):
        viz.overlay(image, cam)


# ----------------------------------------------------------------- tensors and pictures
def test_load_image_reads_tensors_channels_first_or_last():
    g = torch.Generator().manual_seed(0)
    chw = torch.rand(3, 5, 7, generator=g)
    want = viz.load_image(chw.permute(1, 2, 0).numpy())
    assert viz.load_image(chw).tolist() == want.tolist()
    assert viz.load_image(chw.permute(1, 2, 0)).tolist() == want.tolist()  # (5, 7, 3)
    square = torch.rand(224, 224, 3, generator=g)
    assert viz.load_image(square).shape == (224, 224, 3)
    assert viz.load_image((square * 255).byte()).tolist() == viz.load_image(
        (square * 255).byte().numpy()).tolist()
    # ambiguous (3, 4, 3): channels-first, torch's layout
    amb = torch.rand(3, 4, 3, generator=g)
    assert viz.load_image(amb).tolist() == viz.load_image(amb.permute(1, 2, 0).numpy()).tolist()
    # one channel at either end is grey; four is RGBA on white; bfloat16 is fine
    assert viz.load_image(torch.full((1, 2, 3), 0.5))[1, 2].tolist() == [128, 128, 128]
    assert viz.load_image(torch.full((2, 3, 1), 0.5))[1, 2].tolist() == [128, 128, 128]
    rgba = torch.zeros(2, 2, 4)
    rgba[..., 0] = 1
    assert viz.load_image(rgba)[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert viz.load_image(torch.ones(3, 2, 2, dtype=torch.bfloat16))[0, 0].tolist() == [255] * 3
    with pytest.raises(ValueError, match=r"\(3, H, W\) or \(H, W, 3\).*got \(5, 6, 7\)"):
        viz.load_image(torch.rand(5, 6, 7))
    with pytest.raises(ValueError, match=r"batch.*x\[0\]"):
        viz.load_image(torch.rand(1, 3, 4, 4))


def test_picture_size_is_width_height_and_numpy_still_works():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pic = viz.Picture(a)
    assert pic.size == (7, 5) and (pic.width, pic.height) == (7, 5)
    assert pic.shape == (5, 7, 3) and pic.dtype == np.uint8
    pil = pic.to_pil()
    assert pil.size == pic.size and pil.mode == "RGB"
    assert np.array_equal(np.asarray(pil), a)
    # numpy sees an ordinary array: element counts, values and types are numpy's
    assert np.asarray(pic).size == 105 and type(np.asarray(pic)) is np.ndarray
    assert np.mean(pic) == pytest.approx(a.mean()) and pic.mean() == pytest.approx(a.mean())
    assert pic.std() == pytest.approx(a.std()) and np.median(pic) == np.median(a)
    assert pic[1:3, 2].tolist() == a[1:3, 2].tolist() and pic[1:3, 2].size == 6
    assert pic[0, 0].tolist() == a[0, 0].tolist()
    assert (pic < 128).tolist() == (a < 128).tolist() and (pic < 128).size == 105
    assert (pic == a).all() and np.array_equal(pic, a) and np.allclose(pic, a)
    assert (pic + 1).tolist() == (a + 1).tolist()
    assert pic.reshape(-1).size == 105 and pic.astype(float).size == 105
    assert np.concatenate([pic, pic]).size == 210 and pic.T.shape == (3, 7, 5)
    assert int(pic.sum()) == int(a.sum()) and pic.max() == a.max()
    for derived in (pic[1:], pic + 1, pic.reshape(-1), np.pad(pic, 1), pic.astype(float)):
        assert type(derived) is np.ndarray
    np.testing.assert_array_equal(pic, a)
    assert torch.as_tensor(np.asarray(pic)).shape == (5, 7, 3)
    sheet = np.zeros((6, 8, 3), np.uint8)
    sheet[:5, :7] = pic
    assert np.array_equal(sheet[:5, :7], a)
    copied = pic.copy()
    copied += 1  # in place: still the same picture object
    assert isinstance(copied, viz.Picture) and copied.tolist() == (a + 1).tolist()
    import pickle

    again = pickle.loads(pickle.dumps(pic))
    assert isinstance(again, viz.Picture) and again.size == (7, 5)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        viz.Picture(np.zeros((2, 3, 5)))
    # what the library returns is a Picture
    assert viz.overlay(a, np.ones((5, 7))).size == (7, 5)


# ----------------------------------------------------------------- titles and rows
def test_long_titles_wrap_onto_two_lines_before_they_are_cut():
    from camlens.viz._compose import _font, _measure, _wrap_title

    font = _font(14)
    width = _measure(font)
    title = "guided-gradcam: tiger cat 45.3%"
    assert 150 < width(title) < 250  # Pillow's default font at 14 px
    assert _wrap_title(title, 1000, font) == [title]
    # as much as fits on the first line, broken at a space
    assert _wrap_title(title, 150, font) == ["guided-gradcam: tiger", "cat 45.3%"]
    assert _wrap_title(title, 120, font) == ["guided-gradcam:", "tiger cat 45.3%"]
    # narrower: after the '-'; when two lines are not enough, only then "..."
    lines = _wrap_title(title, 100, font)
    assert lines == ["guided-", "gradcam: tige..."]
    assert all(width(line) <= 100 for line in lines)
    assert _wrap_title(title, 180, font) == ["guided-gradcam: tiger cat", "45.3%"]
    # a word wider than the line is broken inside it
    lines = _wrap_title("abcdefghijklmnopqrstuvwxyz", 60, font)
    assert len(lines) == 2 and "".join(lines).startswith(lines[0]) and len(lines[0]) > 3
    assert all(width(line) <= 60 for line in lines)
    assert _wrap_title("", 60, font) == [""]


def test_a_21_panel_grid_shows_whole_titles():
    from camlens.viz._compose import _font, _measure, _wrap_title

    methods = ["gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "scorecam",
               "ablationcam", "hirescam", "guided-gradcam", "smoothgradcampp", "cam",
               "fullgrad", "eigengradcam", "gradcamelementwise", "isocam", "sscam",
               "shapleycam", "finercam", "guided-backprop", "integrated-gradients", "rise"]
    titles = [f"{m}: tiger cat 45.3%" for m in methods]
    font, width = _font(14), _measure(_font(14))
    assert sum(width(t) > 152 for t in titles) >= 5  # these did not fit on one line
    for t in titles:  # they do on two, each line within the panel, nothing cut
        lines = _wrap_title(t, 152, font)
        assert len(lines) <= 2 and not lines[-1].endswith("...")
        assert " ".join(lines).replace("- ", "-") == t
        assert all(width(line) <= 152 for line in lines)
    image = np.full((160, 160, 3), 200, np.uint8)
    g = viz.grid(image, [torch.rand(4, 4)] * 21, titles, panel_height=160, font_size=14)
    # 22 panels -> 5 columns, 5 rows; every strip is two lines high (14 + 8 + 17 px)
    strip = 14 + 8 + 17
    assert g.shape == (5 * (strip + 160) + 4 * 4, 5 * 160 + 4 * 4, 3)
    second_line = slice(3 + 17, strip)
    panel = (8 + 1) // 5, (8 + 1) % 5  # guided-gradcam: row 1, column 4
    y, x = panel[0] * (strip + 160 + 4), panel[1] * (160 + 4)
    assert (g[y + second_line.start : y + strip, x : x + 160] < 128).any()  # text drawn
    assert (g[second_line, :160] >= 128).all()  # "image": one line, same strip height
    assert (g[strip : strip + 160, :160] == 200).all()


def test_compose_rows_one_row_per_class():
    image = np.full((40, 60, 3), 120, np.uint8)
    pics = [np.full((40, 60, 3), v, np.uint8) for v in (10, 60, 250)]
    sheet = viz.compose_rows(image, [
        ("top 1: tabby cat 52.0%", pics[:2], ["gradcam", "layercam"]),
        ("top 2: tiger cat 31.0%", pics[:2], ["gradcam", "layercam"]),
        ("top 3: Egyptian cat 9.1%", pics, ["gradcam", "layercam", "scorecam"]),
    ], panel_height=40, font_size=10)
    assert isinstance(sheet, viz.Picture)
    # 3 rows x 4 columns (the widest row) of 60 px panels; the row titles wrap in 52 px,
    # so every strip is two lines high: 10 + 8 + 12 px
    strip = 10 + 8 + 12
    ph = strip + 40
    assert sheet.shape == (3 * ph + 2 * 4, 4 * 60 + 3 * 4, 3)
    for r in range(3):
        top = r * (ph + 4) + strip
        assert (sheet[top : top + 40, :60] == 120).all()  # each row starts with the image
        assert (sheet[top : top + 40, 64:124] == 10).all()
        assert (sheet[top : top + 40, 128:188] == 60).all()
        assert (sheet[r * (ph + 4) + 3 : r * (ph + 4) + 13, :52] < 128).any()  # row title
    last = 2 * (ph + 4) + strip
    assert (sheet[last : last + 40, 192:252] == 250).all()
    assert (sheet[strip : strip + 40, 192:252] == 255).all()  # rows 1, 2 end early: white

    # a long row continues on the next line; the next row starts on a new line
    wrapped = viz.compose_rows(image, [("a", pics, ["x", "y", "z"]), ("b", pics[:1], ["x"])],
                               cols=2, panel_height=40, font_size=10)
    ph = 18 + 40
    assert wrapped.shape == (3 * ph + 2 * 4, 2 * 60 + 4, 3)  # lines: [a x] [y z] [b x]
    assert (wrapped[18:ph, :60] == 120).all() and (wrapped[18:ph, 64:] == 10).all()
    assert (wrapped[ph + 4 + 18 : 2 * ph + 4, :60] == 60).all()
    assert (wrapped[2 * ph + 8 + 18 :, :60] == 120).all()

    # compose_grid is the one-row case, with the default columns
    one = viz.compose_grid(image, pics[:2], ["gradcam", "layercam"], panel_height=40,
                           font_size=10)
    assert one.shape == (18 + 40, 3 * 60 + 2 * 4, 3)
    assert np.array_equal(one, viz.compose_rows(
        image, [("image", pics[:2], ["gradcam", "layercam"])], panel_height=40, font_size=10))
    many = viz.compose_rows(image, [("image", pics * 7, ["t"] * 21)], panel_height=40)
    assert many.shape[1] == 5 * 60 + 4 * 4  # 22 panels -> 5 columns, as compose_grid
    with pytest.raises(ValueError, match="2 pictures but 1 titles"):
        viz.compose_rows(image, [("x", pics[:2], ["a"])])
    with pytest.raises(ValueError, match="empty"):
        viz.compose_rows(image, [])


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (3, 4, 2), (6, 9, 3), (2, 3, 4), (1, 1, 3),
                                   (61, 83, 3)])
def test_our_png_encoder_round_trips_through_pillow(shape):
    import io

    from PIL import Image

    from camlens.viz._image import encode_png

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(pixels)))
    decoded.load()  # checks every chunk's CRC and the zlib stream
    assert decoded.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[shape[2] if len(shape) == 3
                                                                    else 1]
    np.testing.assert_array_equal(np.asarray(decoded).reshape(pixels.shape), pixels)
    # floats are clipped to 0..255 as before
    floats = np.asarray(Image.open(io.BytesIO(encode_png(np.array([[-5.0, 300.0, 7.9]])))))
    np.testing.assert_array_equal(floats, [[0, 255, 7]])
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(H, W, 1-4\)"):
        encode_png(np.zeros((2, 2, 5), np.uint8))
