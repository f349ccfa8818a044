"""Preprocessing: every odd or broken image file, crops, and the tensor pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import needs_full_data
from PIL import Image

from visual_search import preprocess as P
from visual_search.preprocess import ImageError


@pytest.fixture
def gray() -> np.ndarray:
    """A 40x60 grayscale image with structure (a gradient and a bright square), not symmetric."""
    y, x = np.mgrid[0:40, 0:60]
    img = (x * 4).astype(np.uint8)
    img[5:15, 5:25] = 250
    return img


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


# ---- files that load, each into one colour mode ---------------------------------------------


def test_grayscale_png_round_trips_exactly(tmp_path, gray):
    path = _save(Image.fromarray(gray), tmp_path / "g.png")
    out = P.load_image(path)
    assert out.dtype == np.uint8 and out.shape == gray.shape
    np.testing.assert_array_equal(out, gray)


def test_rgb_mode_gives_three_channels(tmp_path, gray):
    path = _save(Image.fromarray(gray), tmp_path / "g.png")
    out = P.load_image(path, mode="RGB")
    assert out.shape == (*gray.shape, 3)
    np.testing.assert_array_equal(out[..., 0], gray)


def test_cmyk_jpeg_is_converted(tmp_path, gray):
    cmyk = Image.fromarray(gray).convert("RGB").convert("CMYK")
    path = _save(cmyk, tmp_path / "c.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = P.load_image(path)
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - gray).mean() < 4  # JPEG is lossy, but the picture is the same


def test_16_bit_png_is_scaled_to_8_bit(tmp_path, gray):
    wide = gray.astype(np.uint16) * 257  # 0..255 -> 0..65535
    path = _save(Image.fromarray(wide), tmp_path / "w.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    np.testing.assert_array_equal(P.load_image(path), gray)


def test_palette_png_with_transparency_goes_on_white(tmp_path):
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    pal.paste(1, (0, 0, 4, 8))  # left half: colour 1 (grey 200); right half: colour 0 (black)
    path = _save(pal, tmp_path / "p.png", transparency=0)  # black is transparent
    out = P.load_image(path)
    assert (out[:, :4] == 200).all()
    assert (out[:, 4:] == 255).all()  # transparent -> white, not black


def test_alpha_background_can_be_black(tmp_path):
    img = Image.new("LA", (4, 4), (50, 0))  # fully transparent
    assert (P.load_image(_save(img, tmp_path / "a.png"), background=0) == 0).all()
    with pytest.raises(ImageError, match="background must be"):
        P.load_image(tmp_path / "a.png", background=256)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    img = Image.new(mode, (6, 6), (50, 255) if mode == "LA" else (50, 50, 50, 255))
    img.paste((50, 0) if mode == "LA" else (50, 50, 50, 0), (0, 0, 3, 6))  # left half fully transparent
    out = P.load_image(_save(img, tmp_path / "a.png"))
    assert (out[:, :3] == 255).all() and (out[:, 3:] == 50).all()


def test_exif_rotated_jpeg_is_turned_upright(tmp_path, gray):
    # Store the picture rotated 90 degrees counter-clockwise and tag it "rotate 90 CW to display" (6).
    stored = np.ascontiguousarray(np.rot90(gray, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(stored), tmp_path / "r.jpg", exif=exif, quality=95)
    out = P.load_image(path)
    assert out.shape == gray.shape  # 40x60 again, not 60x40
    assert np.abs(out.astype(int) - gray).mean() < 4


# ---- files that must raise ImageError naming the file and the problem -------------------------


def test_truncated_jpeg(tmp_path, gray):
    path = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)), tmp_path / "t.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"t\.jpg: truncated or corrupt"):
        P.load_image(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        P.load_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file"):
        P.load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        P.load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 9000 x 9000 = 81 M pixels: a few kB on disk, 81 MB decoded, over the 40 M default.
    path = _save(Image.new("1", (9000, 9000)), tmp_path / "bomb.png")
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"bomb\.png: 9000x9000 = 81,000,000 pixels exceeds max_pixels"):
        P.load_image(path)


def test_pillow_bomb_limit_is_also_caught(tmp_path, monkeypatch):
    path = _save(Image.new("L", (100, 100)), tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow errors above 2x, warns above 1x
    with pytest.raises(ImageError, match=r"small\.png: decompression bomb"):
        P.load_image(path)


def test_bad_mode(tmp_path, gray):
    with pytest.raises(ImageError, match="mode must be one of"):
        P.load_image(_save(Image.fromarray(gray), tmp_path / "g.png"), mode="CMYK")


# ---- crop -------------------------------------------------------------------------------------


def test_crop_takes_the_box(gray):
    out = P.crop(gray, (5, 5, 25, 15))
    np.testing.assert_array_equal(out, gray[5:15, 5:25])
    assert (out == 250).all()


def test_crop_rgb_and_fractional_box():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(P.crop(img, (0.6, 1.2, 3.4, 4)), img[1:4, 1:3])


@pytest.mark.parametrize("box", [(3, 3, 3, 10), (3, 3, 10, 3), (10, 3, 5, 8)])
def test_zero_size_crop(gray, box):
    with pytest.raises(ImageError, match="zero-size box"):
        P.crop(gray, box)


@pytest.mark.parametrize("box", [(-1, 0, 10, 10), (0, 0, 61, 10), (50, 30, 70, 45), (100, 100, 110, 110)])
def test_crop_outside_the_image(gray, box):
    with pytest.raises(ImageError, match=r"outside the 60x40 image"):
        P.crop(gray, box)


def test_crop_clip_keeps_the_overlap(gray):
    np.testing.assert_array_equal(P.crop(gray, (50, 30, 70, 45), clip=True), gray[30:40, 50:60])
    with pytest.raises(ImageError, match="does not overlap"):
        P.crop(gray, (100, 100, 110, 110), clip=True)


@pytest.mark.parametrize("box", [(1, 2, 3), (0, 0, float("nan"), 5), ("a", 0, 1, 1), None])
def test_malformed_box(gray, box):
    with pytest.raises(ImageError, match="box"):
        P.crop(gray, box)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4), dtype=np.int64), "dtype int64"),
        (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "expected shape"),
        (np.zeros((0, 4), dtype=np.uint8), "empty image"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_bad_arrays(image, message):
    with pytest.raises(ImageError, match=message):
        P.crop(image, (0, 0, 1, 1))


# ---- resize, scale, z-score, and the two pipelines -----------------------------------------------


def test_resize_shapes_and_dtype(gray):
    assert P.resize(gray, 224).shape == (224, 224)
    assert P.resize(gray, (20, 30)).dtype == np.uint8
    assert P.resize(np.stack([gray] * 3, -1), 14).shape == (14, 14, 3)
    with pytest.raises(ImageError, match="size must be"):
        P.resize(gray, 0)


def test_scale_and_normalize(gray):
    x = P.to_unit_float(gray)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    z = P.normalize(x, mean=0.5, std=0.25)
    np.testing.assert_allclose(z, (x - 0.5) / 0.25, rtol=1e-6)
    with pytest.raises(ImageError, match="std finite and positive"):
        P.normalize(x, std=0)
    with pytest.raises(ImageError, match="expects a uint8 array, got float32"):
        P.to_unit_float(x)
    assert P.to_unit_float(np.stack([gray, gray])).shape == (2, *gray.shape)  # batches too


def test_mean_std_of_a_known_array():
    images = np.array([[[0, 255]]], dtype=np.uint8)
    assert P.compute_mean_std(images) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 1), (64, 3)])
def test_batch_pipeline_matches_per_image_transform(sample, size, channels):
    images = sample.query_images[:8]
    batch = P.preprocess_batch(images, size=size, channels=channels)
    assert batch.shape == (8, channels, size, size) and batch.dtype == torch.float32
    transform = P.make_transform(size=size, channels=channels)
    assert type(transform(images[0])) is torch.Tensor  # a plain tensor, not a tv_tensors.Image
    for img, row in zip(images, batch):
        torch.testing.assert_close(transform(img), row)


def test_batch_pipeline_z_scores_with_the_given_stats():
    images = np.full((2, 28, 28), 255, dtype=np.uint8)
    out = P.preprocess_batch(images, mean=0.5, std=0.25)
    torch.testing.assert_close(out, torch.full((2, 1, 28, 28), 2.0))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 28, 28), dtype=np.float32), "uint8"),
        (np.zeros((28, 28), dtype=np.uint8), r"\[N, H, W\]"),
        (np.zeros((0, 28, 28), dtype=np.uint8), "empty batch"),
        ("not an array", "str"),
    ],
)
def test_batch_pipeline_rejects_bad_input(images, message):
    with pytest.raises(ImageError, match=message):
        P.preprocess_batch(images)


@needs_full_data
def test_normalisation_constants_match_the_train_split():
    from visual_search.data import load_fashion_mnist

    mean, std = P.compute_mean_std(load_fashion_mnist("train")[0])
    assert mean == pytest.approx(P.FASHION_MNIST_MEAN, abs=5e-5)
    assert std == pytest.approx(P.FASHION_MNIST_STD, abs=5e-5)


# ---- more modes and stricter inputs ---------------------------------------------------------


def test_colour_to_gray_uses_luma_weights(tmp_path):
    # ITU-R 601-2: L = 0.299 R + 0.587 G + 0.114 B
    for colour, grey in (((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29)):
        path = _save(Image.new("RGB", (4, 4), colour), tmp_path / "c.png")
        assert (P.load_image(path) == grey).all(), colour


def test_palette_png_without_transparency(tmp_path, gray):
    path = _save(Image.fromarray(gray).convert("P"), tmp_path / "p.png")
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" not in check.info
    np.testing.assert_array_equal(P.load_image(path), gray)


def test_rgb_colour_key_transparency_goes_on_the_background(tmp_path):
    img = Image.new("RGB", (4, 4), (0, 0, 0))
    img.paste((100, 100, 100), (0, 0, 2, 4))
    path = _save(img, tmp_path / "key.png", transparency=(0, 0, 0))  # black is the transparent colour key
    out = P.load_image(path)
    assert (out[:, :2] == 100).all() and (out[:, 2:] == 255).all()


def test_pillow_warning_band_is_refused_too(tmp_path, monkeypatch):
    path = _save(Image.new("L", (100, 100)), tmp_path / "warn.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 pixels: over 1x (warning), under 2x (error)
    with pytest.raises(ImageError, match=r"warn\.png: decompression bomb"):
        P.load_image(path)


def test_transform_rejects_what_the_batch_path_rejects(gray):
    transform = P.make_transform()
    with pytest.raises(ImageError, match="expected uint8 pixels"):
        transform(gray.astype(np.float32))
    with pytest.raises(ImageError, match="NaN"):
        transform(np.full((28, 28), np.nan, dtype=np.float32))
    with pytest.raises(ImageError, match="size must be"):
        P.make_transform(size=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"std": 0.0}, "std finite and positive"), ({"std": float("nan")}, "std finite"), ({"mean": float("inf")}, "mean must be finite"), ({"size": 0}, "size must be"), ({"size": 2.5}, "size must be")],
)
def test_batch_pipeline_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ImageError, match=message):
        P.preprocess_batch(np.zeros((1, 28, 28), dtype=np.uint8), **kwargs)


def test_resize_accepts_numpy_ints_and_rejects_floats(gray):
    assert P.resize(gray, np.int64(14)).shape == (14, 14)
    with pytest.raises(ImageError, match="size must be"):
        P.resize(gray, 14.0)


def test_crop_rejects_a_string_box(gray):
    with pytest.raises(ImageError, match="four finite numbers"):
        P.crop(gray, "1234")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": True}, "channels must be 1 or 3"),  # True == 1, but it is not a channel count
        ({"channels": 3.0}, "channels must be 1 or 3"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"mean": "0.5"}, "mean must be finite"),
        ({"std": None}, "std finite and positive"),
        ({"std": True}, "std finite and positive"),
        ({"size": True}, "size must be"),
        ({"size": (28, True)}, "size must be"),
        ({"size": "28"}, "size must be"),
        ({"size": (28, 28, 28)}, "size must be"),
    ],
)
def test_both_pipelines_refuse_bad_parameters_with_image_errors(kwargs, message):
    with pytest.raises(ImageError, match=message):
        P.preprocess_batch(np.zeros((1, 28, 28), dtype=np.uint8), **kwargs)
    with pytest.raises(ImageError, match=message):
        P.make_transform(**kwargs)


def test_good_parameters_in_numpy_types_are_accepted():
    out = P.preprocess_batch(np.zeros((1, 28, 28), dtype=np.uint8), size=(np.int32(14), 14), mean=np.float32(0.5), std=np.float64(0.25), channels=np.int64(3))
    assert out.shape == (1, 3, 14, 14)


@pytest.mark.parametrize("kwargs, message", [({"background": True}, "background must be"), ({"background": 256}, "background must be"), ({"max_pixels": 0}, "max_pixels must be"), ({"max_pixels": 1.5e6}, "max_pixels must be")])
def test_load_image_checks_its_numbers(tmp_path, gray, kwargs, message):
    path = _save(Image.fromarray(gray), tmp_path / "g.png")
    with pytest.raises(ImageError, match=message):
        P.load_image(path, **kwargs)
    assert P.load_image(path, background=np.uint8(0), max_pixels=np.int64(10_000)).shape == gray.shape
