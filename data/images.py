"""Reading images: one set of rules for training, the TensorBoard pictures, the evaluations and viz_slots.py.

* A file PIL cannot open or decode (missing, empty, truncated, not an image) raises ``UnreadableImageError``,
  whose one-line message names the path (bytes of a name that is not valid UTF-8 as ``\\xNN``).
* Decompression bombs: an image of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89 million,
  where PIL itself only warns) is unreadable too; it is refused from its header, before any decoding.
* Every mode PIL opens becomes 8-bit RGB (``to_rgb``):
    - 1-bit, greyscale ``L``, palette ``P``/``PA``, ``LA``, ``RGBA``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``:
      PIL's conversion; alpha is dropped (as ``convert("RGB")`` does in the reference), a palette with a
      transparent entry goes through RGBA first.
    - ``LAB``: converted to sRGB with a colour transform (LittleCMS), not by copying channels.
    - 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) by its **bit depth**: v -> round(v * 255 / 65535),
      so 65535 is white whatever the image holds (PIL's own conversion clips at 255: near-white images).
    - 32-bit integer ``I`` and float ``F`` carry no bit depth: their **actual range** [min, max] is stretched
      to [0, 255] (a constant image becomes black); an ``F`` image holding NaN or Inf is unreadable.
    - Any other mode is unreadable, by path.
* Who does what with an unreadable image: training and pictures (TensorBoard, viz_slots.py) skip it and log
  or print its path; evaluations stop with that one line, since a score over a silently smaller set would not
  be comparable with another.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from utils.logger import printable

# What PIL raises for files it cannot identify or decode (OSError covers UnidentifiedImageError and truncation).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_TO_RGB = ("1", "L", "P", "PA", "LA", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV")


class UnreadableImageError(ValueError):
    """An image file that cannot be used; ``str()`` is one line naming the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(os.fspath(path))
        super().__init__(f"{printable(str(self.path))}: cannot read image ({reason})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):  # its message repeats the path
        return "not an image file PIL can identify"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The image at ``path``, opened lazily (nothing decoded yet, so JPEG ``draft`` still applies); closed after.

    Raises ``UnreadableImageError`` for a file PIL cannot identify and for a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            image = Image.open(str(os.fspath(path)) if isinstance(path, str) else path)
    except FileNotFoundError:
        raise UnreadableImageError(path, "no such file") from None
    except Image.DecompressionBombError:
        raise UnreadableImageError(path, "more pixels than PIL.Image.MAX_IMAGE_PIXELS: a decompression bomb?") from None
    except _READ_ERRORS as exc:
        raise UnreadableImageError(path, _reason(exc)) from None
    with image:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and image.width * image.height > limit:
            raise UnreadableImageError(
                path,
                f"{image.width}x{image.height} is more than PIL.Image.MAX_IMAGE_PIXELS "
                f"({limit}) pixels: a decompression bomb?",
            )
        yield image


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map [min, max] of ``values`` to [0, 255] (all zeros for a constant array)."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"mode {mode} image holds NaN or Inf pixels")
        return Image.fromarray(_stretch_to_uint8(values)).convert("RGB")
    if mode == "LAB":
        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(image, transform)
    if mode in _PIL_TO_RGB:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")
    raise ValueError(f"image mode {mode} is not supported")


def to_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image and convert it to 8-bit RGB by the rules in the module docstring.

    Returns ``image`` itself when it already is RGB (decoded in place), else a new image. Raises
    ``UnreadableImageError`` (naming ``image.filename``) when decoding fails or the mode is not supported.
    """
    try:
        image.load()
        return _convert_to_rgb(image)
    except _READ_ERRORS as exc:
        raise UnreadableImageError(getattr(image, "filename", "") or "<image>", _reason(exc)) from None


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as a decoded 8-bit RGB image that owns its pixels (the file is closed)."""
    with open_image(path) as image:
        rgb = to_rgb(image)
        return rgb.copy() if rgb is image else rgb


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A single-channel 8-bit label map (mode ``L``, or ``P`` read as its palette indices): uint8 [H, W]."""
    with open_image(path) as image:
        if image.mode not in ("L", "P"):
            raise UnreadableImageError(path, f"expected a single-channel 8-bit label map, got mode {image.mode}")
        try:
            return np.array(image, dtype=np.uint8)
        except _READ_ERRORS as exc:
            raise UnreadableImageError(path, _reason(exc)) from None


def resize_center_crop(
    image: Image.Image, size: int, resize: int | None = None, resample: Image.Resampling = Image.Resampling.BILINEAR
) -> Image.Image:
    """torchvision's ``CenterCrop(size)(Resize(resize)(image))`` on a PIL image, to the pixel.

    The shorter side becomes ``resize`` (default ``size``), the longer ``int(resize * long / short)``
    (truncated), unless the image already has that size; then the central ``size`` square is cut, its
    offset ``round((side - size) / 2)`` (Python's half-to-even, as torchvision). ``resize`` must be at least ``size``.
    """
    resize = size if resize is None else resize
    if resize < size:
        raise ValueError(f"resize {resize} is smaller than the crop {size}")
    width, height = image.size
    new_size = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
    if new_size != image.size:
        image = image.resize(new_size, resample)
    left, top = round((new_size[0] - size) / 2.0), round((new_size[1] - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def read_center_crop(path: str | os.PathLike, size: int, resize: int | None = None) -> np.ndarray:
    """``resize_center_crop`` of the image at ``path`` (bilinear), as uint8 [size, size, 3]."""
    return np.asarray(resize_center_crop(read_rgb(path), size, resize))
