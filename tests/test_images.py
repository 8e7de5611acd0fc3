"""data/images.py: every image mode PIL opens, broken files, decompression bombs, odd file names, and the
resize/centre-crop, each on real files written by PIL."""

import os
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from data.datasets import TwoViewDataset
from data.images import (
    UnreadableImageError,
    read_center_crop,
    read_label_map,
    read_rgb,
    resize_center_crop,
)
from data.transforms import TwoViewCrop


def _saved(tmp_path: Path, image: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    image.save(path, **kw)
    with Image.open(path) as check:
        assert check.mode == image.mode or name.endswith(".jpg"), (check.mode, image.mode)
    return path


def _gradient(height: int, width: int, high: float) -> np.ndarray:
    return np.linspace(0, high, height * width).reshape(height, width)


def test_sixteen_bit_greyscale_is_scaled_by_its_bit_depth(tmp_path):
    values = _gradient(8, 16, 65535).round().astype(np.uint16)
    big_endian = Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes())
    for name, image in (("g16.png", Image.fromarray(values)), ("g16b.tif", big_endian)):
        path = _saved(tmp_path, image, name)
        rgb = np.asarray(read_rgb(path))
        expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
        assert rgb.shape == (8, 16, 3)
        np.testing.assert_array_equal(rgb[..., 0], expected, err_msg=name)
        assert (rgb[..., 0] == rgb[..., 2]).all()
    # PIL's own conversion clips at 255: a 16-bit image would train as near-white.
    with Image.open(tmp_path / "g16.png") as image:
        assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.9


def test_int32_and_float_images_stretch_their_actual_range(tmp_path):
    ints = (_gradient(6, 10, 4000) - 1000).round().astype(np.int32)
    floats = (0.25 + _gradient(6, 10, 0.5)).astype(np.float32)
    for name, array in (("i32.tif", ints), ("f32.tif", floats)):
        path = _saved(tmp_path, Image.fromarray(array), name)
        low, high = float(array.min()), float(array.max())
        expected = np.rint((array.astype(np.float64) - low) * 255 / (high - low)).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(read_rgb(path))[..., 1], expected, err_msg=name)
    flat = _saved(tmp_path, Image.fromarray(np.full((4, 4), 7.5, dtype=np.float32)), "flat.tif")
    assert (np.asarray(read_rgb(flat)) == 0).all()


def test_float_image_with_nan_is_refused_by_path(tmp_path):
    array = np.ones((4, 4), dtype=np.float32)
    array[1, 2] = np.nan
    path = _saved(tmp_path, Image.fromarray(array), "nan.tif")
    with pytest.raises(UnreadableImageError, match=r"nan\.tif: cannot read image \(mode F image holds NaN"):
        read_rgb(path)


def test_palette_alpha_cmyk_and_one_bit_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    # RGBA / LA: alpha is dropped, colour kept.
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 10, np.uint8)], axis=2)
    np.testing.assert_array_equal(np.asarray(read_rgb(_saved(tmp_path, Image.fromarray(rgba), "a.png"))), rgb)
    la = Image.fromarray(rgb[..., 0]).convert("LA")
    assert (np.asarray(read_rgb(_saved(tmp_path, la, "la.png")))[..., 1] == rgb[..., 0]).all()
    # Palette with a transparent entry: palette colours, and no PIL warning on the way.
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.info["transparency"] = 0
    path = _saved(tmp_path, palette, "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(read_rgb(path))
    np.testing.assert_array_equal(got, np.asarray(palette.convert("RGB")))
    # 1-bit: black and white.
    bits = Image.fromarray(np.eye(8, dtype=bool))
    assert bits.mode == "1"
    got = np.asarray(read_rgb(_saved(tmp_path, bits, "bits.png")))
    np.testing.assert_array_equal(got[..., 0], np.eye(8, dtype=np.uint8) * 255)
    # CMYK (JPEG and TIFF): no ink is white, full black ink is black.
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    cmyk.paste((0, 0, 0, 255), (0, 0, 4, 8))
    for name in ("c.tif", "c.jpg"):
        got = np.asarray(read_rgb(_saved(tmp_path, cmyk, name, **({"quality": 100} if name.endswith("jpg") else {}))))
        assert got[:, :3].max() <= 3 and got[:, 5:].min() >= 252, name
    ycbcr = Image.fromarray(rgb).convert("YCbCr")
    got = np.asarray(read_rgb(_saved(tmp_path, ycbcr, "y.tif"))).astype(int)
    assert np.abs(got - rgb).max() <= 3


def _srgb_grey_of_lightness(lightness: float) -> float:
    """CIE L* -> relative luminance Y -> 8-bit sRGB (a neutral colour, so the white point does not matter)."""
    y = ((lightness + 16) / 116) ** 3 if lightness > 8 else lightness / 903.3
    encoded = 12.92 * y if y <= 0.0031308 else 1.055 * y ** (1 / 2.4) - 0.055
    return 255 * encoded


def test_lab_is_converted_by_colour_not_by_copying_channels(tmp_path):
    lab = Image.new("LAB", (6, 1))
    for x, level in enumerate((26, 64, 128, 192, 230, 255)):
        lab.putpixel((x, 0), (level, 128, 128))  # a* = b* = 0: neutral greys
    got = np.asarray(read_rgb(_saved(tmp_path, lab, "lab.tif")))[0].astype(float)
    for x, level in enumerate((26, 64, 128, 192, 230, 255)):
        expected = _srgb_grey_of_lightness(level * 100 / 255)
        assert np.abs(got[x] - expected).max() <= 2.5, (level, got[x], expected)
    red = Image.new("LAB", (1, 1), (128, 200, 160))  # positive a*: reddish
    r, g, _ = np.asarray(read_rgb(_saved(tmp_path, red, "red.tif")))[0, 0].astype(int)
    assert r > g + 50


@pytest.mark.parametrize("content", ["empty", "text", "truncated-png", "truncated-jpg", "missing"])
def test_broken_files_are_one_line_errors_naming_the_path(tmp_path, content):
    good = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"{content}.{'jpg' if 'jpg' in content else 'png'}"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("not an image")
    elif content.startswith("truncated"):
        Image.fromarray(good).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError) as caught:
        read_rgb(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read image (") and "\n" not in message
    assert caught.value.path == str(path)


def _png_with_header_size(tmp_path: Path, name: str, width: int, height: int) -> Path:
    """A small real PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): what a decompression bomb's
    header looks like; the pixels are never reached."""
    path = tmp_path / name
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [10_000, 20_000])  # above PIL's warning limit; above its error limit
def test_decompression_bombs_are_refused_from_the_header(tmp_path, side):
    assert side * side > Image.MAX_IMAGE_PIXELS
    path = _png_with_header_size(tmp_path, f"bomb{side}.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        with pytest.raises(UnreadableImageError, match="decompression bomb"):
            read_rgb(path)


def test_names_that_are_not_utf8_are_read_and_reported_with_escapes(tmp_path):
    folder = os.fsencode(tmp_path)
    good = os.fsdecode(folder + b"/good\xe9.png")
    bad = os.fsdecode(folder + b"/bad\xff\xfe.jpg")
    Image.new("RGB", (40, 30), (10, 20, 30)).save(good)
    Path(bad).write_bytes(b"junk")
    assert np.asarray(read_rgb(good))[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(UnreadableImageError) as caught:
        read_rgb(bad)
    assert "bad\\xff\\xfe.jpg: cannot read image" in str(caught.value)
    str(caught.value).encode("utf-8")  # printable anywhere


def test_label_maps_must_be_single_channel(tmp_path):
    labels = np.arange(48, dtype=np.uint8).reshape(6, 8)
    np.testing.assert_array_equal(read_label_map(_saved(tmp_path, Image.fromarray(labels), "l.png")), labels)
    with pytest.raises(UnreadableImageError, match="single-channel 8-bit label map, got mode RGB"):
        read_label_map(_saved(tmp_path, Image.new("RGB", (4, 4)), "rgb.png"))


@pytest.mark.parametrize(
    "width,height,size,resize",
    [(320, 240, 224, 256), (241, 333, 224, 256), (97, 64, 64, 73), (64, 64, 64, None), (100, 257, 31, 33)],
)
def test_resize_center_crop_is_torchvision_resize_then_center_crop(width, height, size, resize):
    array = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    expected = T.CenterCrop(size)(T.Resize(resize or size, interpolation=T.InterpolationMode.BILINEAR)(image))
    got = resize_center_crop(image, size, resize)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    nearest = T.CenterCrop(size)(T.Resize(resize or size, interpolation=T.InterpolationMode.NEAREST)(image))
    np.testing.assert_array_equal(
        np.asarray(resize_center_crop(image, size, resize, Image.Resampling.NEAREST)), np.asarray(nearest)
    )


def test_read_center_crop_of_a_sixteen_bit_file(tmp_path):
    values = np.full((80, 100), 32896, dtype=np.uint16)  # 32896 * 255 / 65535 = 128
    path = _saved(tmp_path, Image.fromarray(values), "mid.png")
    crop = read_center_crop(path, 64, 73)
    assert crop.shape == (64, 64, 3) and (crop == 128).all()


def test_training_reads_through_the_same_rules(tmp_path):
    """TwoViewDataset: a 16-bit image trains as its bit-depth conversion (not white); a broken one is skipped."""
    values = (_gradient(96, 128, 65535)).round().astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a16.png")
    (tmp_path / "b.jpg").write_text("not an image")  # fails on opening, before the crop draws anything
    dataset = TwoViewDataset([str(tmp_path / "a16.png"), str(tmp_path / "b.jpg")], TwoViewCrop(size=32, min_scale=1.0))
    sample = dataset[(0, 0)]
    crop = sample["crops"][0].numpy()
    assert sample["skipped"] == [] and crop.mean() < 200 and crop.min() < 60
    seed = next(s for s in range(50) if random.Random(s).randrange(2) == 0)  # the retry lands on image 0
    sample = dataset[(1, seed)]
    assert sample["skipped"] == [str(tmp_path / "b.jpg")]
