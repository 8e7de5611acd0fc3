"""Pictures of prototype assignments, shared by viz_slots.py and the TensorBoard pictures of the training loop.

Everything is composed as uint8 arrays (``Picture``), so tests can check which image and which pixels land
in which cell; saving is the last step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from data.photometric import normalize_uint8
from utils.atomic import write_atomic

RED = np.array([255.0, 0.0, 0.0])
WHITE = 255
# A caption is a list of parts: plain text, or (RGB colour, text) for a colour swatch followed by its label.
CaptionPart = str | tuple[tuple[int, int, int], str]


def normalize(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> ImageNet-normalised float [N, 3, H, W] on ``device``."""
    return normalize_uint8(torch.from_numpy(images).to(device).permute(0, 3, 1, 2))


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


def tint(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * pixel + (1 - alpha) * red where ``mask``, truncated to uint8; unchanged elsewhere."""
    out = image.astype(np.float32)
    out[mask] = alpha * out[mask] + (1 - alpha) * RED
    return out.astype(np.uint8)


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def assignment_overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image showing through its prototype colours, regions outlined in white.

    pixel = alpha * image + (1 - alpha) * palette[label], truncated to uint8; boundary pixels
    (``region_boundaries``) are white.
    """
    out = (alpha * image.astype(np.float32) + (1 - alpha) * palette[labels].astype(np.float32)).astype(np.uint8)
    out[region_boundaries(labels)] = WHITE
    return out


def prototype_shares(labels: np.ndarray, num_prototypes: int) -> list[tuple[int, float]]:
    """(prototype, fraction of the pixels it wins) for every prototype present, the largest first."""
    counts = np.bincount(labels.reshape(-1), minlength=num_prototypes)
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    return [(int(k), float(counts[k] / labels.size)) for k in order]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass
class Picture:
    """A grid of equally sized cells on white, with optional column titles and a caption above each row.

    ``boxes[r][c]`` is (top, left) of cell (r, c) in ``array`` (uint8 [H, W, 3]).
    """

    array: np.ndarray
    boxes: list[list[tuple[int, int]]]
    cell_size: tuple[int, int]

    def cell(self, row: int, col: int) -> np.ndarray:
        top, left = self.boxes[row][col]
        return self.array[top : top + self.cell_size[0], left : left + self.cell_size[1]]

    def save(self, path: str | os.PathLike, dpi: int) -> None:
        """Write the picture (format from the suffix; JPEG at quality 95), tagged with ``dpi``, atomically:
        ``OutputWriteError`` (one line) on a full or read-only disk, and never a truncated file under ``path``."""
        extra = {"quality": 95} if str(path).lower().endswith((".jpg", ".jpeg")) else {}
        image_format = Image.registered_extensions()[Path(path).suffix.lower()]  # a file object has no suffix
        write_atomic(path, lambda f: Image.fromarray(self.array).save(f, format=image_format, dpi=(dpi, dpi), **extra))


def compose_grid(
    cells: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str] | None = None,
    row_captions: Sequence[Sequence[CaptionPart]] | None = None,
    gap: int = 4,
    font_size: int = 12,
) -> Picture:
    """Lay ``cells[r][c]`` (uint8 [h, w, 3], all one size) out as rows and columns, ``gap`` pixels apart."""
    rows, cols = len(cells), len(cells[0])
    height, width = cells[0][0].shape[:2]
    band = font_size + 6  # one line of text and its margins
    title_h = band if column_titles else 0
    caption_h = band if row_captions else 0
    total_h = title_h + rows * (caption_h + height) + (rows - 1) * gap
    total_w = cols * width + (cols - 1) * gap
    canvas = Image.new("RGB", (total_w, total_h), (WHITE, WHITE, WHITE))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    boxes = []
    for r, row in enumerate(cells):
        if len(row) != cols:
            raise ValueError(f"row {r} has {len(row)} cells, row 0 has {cols}")
        top = title_h + r * (caption_h + height + gap) + caption_h
        boxes.append([(top, c * (width + gap)) for c in range(cols)])
        for c, cell in enumerate(row):
            canvas.paste(Image.fromarray(cell), (c * (width + gap), top))
        if row_captions:
            _draw_caption(draw, row_captions[r], (2, top - caption_h + 3), font_size, font)
    for c, title in enumerate(column_titles or ()):
        draw.text((c * (width + gap) + 2, 3), title, fill=(0, 0, 0), font=font)
    return Picture(np.asarray(canvas).copy(), boxes, (height, width))


def _draw_caption(
    draw: ImageDraw.ImageDraw, parts: Sequence[CaptionPart], origin: tuple[int, int], size: int, font
) -> None:
    x, y = origin
    for part in parts:
        if isinstance(part, tuple):
            colour, text = part
            draw.rectangle((x, y, x + size - 2, y + size - 2), fill=tuple(int(v) for v in colour), outline=(0, 0, 0))
            x += size + 1
        else:
            text = part
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
        x += int(draw.textlength(text, font=font)) + size // 2
