"""Small pieces shared by viz_slots.py and the TensorBoard pictures of the training loop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.photometric import normalize_uint8


def load_center_crops(paths, image_size: int, resize: int | None = None) -> np.ndarray:
    """Resize the shorter side to ``resize`` (default size*8/7, bilinear), centre-crop: uint8 [N, S, S, 3].

    Raises OSError naming the file if one cannot be read.
    """
    resize = resize or round(image_size * 8 / 7)
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                scale = resize / min(image.size)
                w, h = max(round(image.width * scale), image_size), max(round(image.height * scale), image_size)
                image = image.resize((w, h), Image.Resampling.BILINEAR)
                left, top = (w - image_size) // 2, (h - image_size) // 2
                out[i] = np.asarray(image.crop((left, top, left + image_size, top + image_size)))
        except OSError as e:
            raise OSError(f"{path}: cannot read image ({e})") from None
    return out


def normalize(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> ImageNet-normalised float [N, 3, H, W] on ``device``."""
    return normalize_uint8(torch.from_numpy(images).to(device).permute(0, 3, 1, 2))


def pixel_assignment(dots: torch.Tensor, size: int) -> torch.Tensor:
    """The winning prototype of every pixel at image resolution: [N, size, size] from scores [N, K, h, w]."""
    return F.interpolate(dots.float(), size=(size, size), mode="bilinear", align_corners=False).argmax(dim=1)


def prototype_palette(num_prototypes: int) -> np.ndarray:
    """One RGB colour per prototype, uint8 [K, 3]; shuffled so that neighbouring indices look different."""
    hues = np.linspace(0, 1, num_prototypes, endpoint=False)
    rng = np.random.default_rng(0)
    hues = rng.permutation(hues)
    saturation = 0.55 + 0.45 * rng.random(num_prototypes)
    value = 0.6 + 0.4 * rng.random(num_prototypes)
    # HSV -> RGB with the piecewise-linear formula f(n) = v - v s max(0, min(k, 4 - k, 1)).
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hues * 6.0) % 6.0
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return (np.stack(channels, axis=1) * 255).astype(np.uint8)
