"""Deterministic multi-object demo scenes built from Fashion-MNIST items (``data.scene_folder`` reads them).

Each scene is an RGB canvas with a near-grey background (a low-saturation gradient, coarse texture,
mild noise) and 2-4 rescaled Fashion-MNIST items that may occlude each other. By default an item's colour
follows its class (``class_tint``): 5 hues 72 degrees apart, in full colour for classes 0-4 and pastel for
5-9, each item's hue moved by up to 0.15 of the spacing, so that a class has an appearance as classes of real
scenes do (sky, grass, road), and shape and colour both tell it. With tints drawn independently of the class
(``class_colours=False``, one of 8 hues per item: ``FORMAT_VERSION`` 2, the "studio" scenes) the prototypes
group items by hue, which no mapping turns into classes (README, Results). The colour-free evaluation sets
(README, The demo data) keep the class-coloured scenes' layouts draw for draw and give each item the colour of a
class drawn independently of its own (``tint_class="random"``, from a generator of its own), and optionally turn
the finished scenes grey (``greyscale``). Alongside every image we write exact ground truth:

* ``semantic/NAME.png`` (uint8): 0 = background, k + 1 = Fashion-MNIST class k (so 1..10);
* ``instance/NAME.png`` (uint8): 0 = background, 1..n = the items in paint order.

Train and eval scenes draw their items from disjoint pools of the 10,000 vendored test-split
items, so no eval object is ever seen during training. Everything is derived from one seed through
``numpy.random.default_rng``; every scene has its own generator, keyed by (seed, split, index).

Command line::

    python -m data.demo_scenes --out-dir demo_data --num-train 2000 --num-eval 300 --size 64 --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data.scene_folder import GENERATOR_NAME, KINDS, DemoDataError, read_meta
from utils.atomic import write_text_atomic

FASHION_MNIST_DIR = Path(__file__).resolve().parent / "fashion_mnist"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train", "eval")
# Bump whenever the rendering changes, so old directories are regenerated instead of reused.
FORMAT_VERSION = 3
DEFAULT_NUM_TRAIN = 2000
DEFAULT_NUM_EVAL = 300
DEFAULT_SIZE = 64

# Appearance constants. Background colours stay inside BG_RANGE (at BG_SATURATION of their drawn
# saturation); the texture and noise amplitudes bound how far any background pixel strays from its
# gradient value.
BG_RANGE = (80.0, 170.0)
BG_SATURATION = 0.25
TEXTURE_AMPLITUDE = 20.0
PALETTE_SIZE = 8
MIN_ITEM_FRAC = 0.35
MAX_ITEM_FRAC = 0.7
NOISE_AMPLITUDE = 5.0
# Faint item pixels are drawn at least this bright (relative to the tint) so they never fade into
# the background; the item still shows its Fashion-MNIST shading above that floor.
TINT_FLOOR = 0.45
# Minimum RGB distance between any item colour and the background gradient, before texture/noise.
MIN_CONTRAST = 80.0
TINT_CANDIDATES = 32
# Class colours: 5 hues (72 degrees apart: SlotCon's colour jitter moves a view's hues by up to 36 degrees, so
# closer hues would look alike to it) times full colour and pastel make 10 class colours.
CLASS_HUES = 5
CLASS_PASTEL = 0.45
CLASS_HUE_JITTER = 0.15
PLACEMENT_TRIES = 20
_SPLIT_KEYS = {"train": 1, "eval": 2}
_POOL_KEY = 0
_TINT_KEY = 1  # the fourth word of a scene's tint generator (tint_class="random")
TINT_CLASSES = ("own", "random")


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST idx reader
# ----------------------------------------------------------------------------------------------


def _read_idx_ubyte(path: Path, expected_ndim: int) -> np.ndarray:
    """Read a gzip-compressed idx file of unsigned bytes (magic 0x0000 08 NDIM, big-endian dims)."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DemoDataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DemoDataError(f"{path}: not a readable gzip file ({exc})") from None

    if len(raw) < 4:
        raise DemoDataError(f"{path}: too short to be an idx file ({len(raw)} bytes)")
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DemoDataError(f"{path}: not an unsigned-byte idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    if ndim != expected_ndim:
        raise DemoDataError(f"{path}: expected a {expected_ndim}-d idx file, header says {ndim}-d")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DemoDataError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    payload = len(raw) - header_len
    if payload != math.prod(dims):
        raise DemoDataError(f"{path}: header promises {math.prod(dims)} bytes of data, found {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def load_fashion_mnist(root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the vendored Fashion-MNIST test split.

    Returns ``(images, labels)``: uint8 ``[N, 28, 28]`` with background exactly 0, and int64 ``[N]``
    class ids in 0..9 (see ``CLASS_NAMES``).
    """
    folder = FASHION_MNIST_DIR if root is None else Path(root)
    images = _read_idx_ubyte(folder / IMAGES_FILE, expected_ndim=3)
    labels = _read_idx_ubyte(folder / LABELS_FILE, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise DemoDataError(f"{folder / IMAGES_FILE}: expected 28x28 images, got {images.shape[1:]}")
    if len(images) != len(labels):
        raise DemoDataError(f"{folder}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DemoDataError(f"{folder / LABELS_FILE}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
    return images.copy(), labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Scene rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """Rendering parameters shared by every scene of a dataset."""

    size: int = DEFAULT_SIZE
    min_items: int = 2
    max_items: int = 4
    # Item side length as a fraction of the canvas side (0.35..0.7 of 64 px is 22..45 px: an item spans
    # several cells of a stride-8 feature map).
    min_item_frac: float = MIN_ITEM_FRAC
    max_item_frac: float = MAX_ITEM_FRAC
    # An upscaled item pixel belongs to the item iff its intensity is above this value.
    mask_threshold: int = 16
    # Every earlier item must keep at least this fraction of its pixels visible after occlusion.
    min_visible_frac: float = 0.35
    # How far the background's second gradient colour may be from the first (0 = one flat colour).
    gradient: float = 1.0
    # Amplitude of the background's texture, and its number of random cells per side (smoothly interpolated).
    texture_amplitude: float = TEXTURE_AMPLITUDE
    texture_cells: tuple[int, int] = (3, 8)
    # Class colours (the demo's): an item's tint follows its class (``class_tint``); palette is then unused.
    class_colours: bool = True
    # How far an item's hue may stray from its class's, as a fraction of the spacing between class hues.
    class_hue_jitter: float = CLASS_HUE_JITTER
    # With class colours, whose class colour an item takes: "own" (its class's), or "random": the colour of a
    # class drawn uniformly, independently of the item's (from ``tint_rng``, so the scene's layout, background
    # and hue jitter are the same draws as with "own"; colour then carries no class information).
    tint_class: str = "own"
    # Turn the finished scene grey (ITU-R 601 luma, PIL's "L"), kept as three equal channels.
    greyscale: bool = False
    # Without class colours: 0 = any colour; N = one of N fixed, evenly spaced hues (distinct within a scene).
    palette: int = PALETTE_SIZE
    # Saturation of item tints and background colours relative to their drawn colour (0 = grey).
    tint_saturation: float = 1.0
    background_saturation: float = BG_SATURATION
    background_range: tuple[float, float] = BG_RANGE

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 px, got {self.size}")
        if not 1 <= self.min_items <= self.max_items <= 255:
            raise ValueError(f"need 1 <= min_items <= max_items <= 255, got {self.min_items}..{self.max_items}")
        if not 0.0 < self.min_item_frac <= self.max_item_frac <= 1.0:
            raise ValueError(
                f"need 0 < min_item_frac <= max_item_frac <= 1, got {self.min_item_frac}..{self.max_item_frac}"
            )
        if round(self.min_item_frac * self.size) < 8:
            raise ValueError(f"min_item_frac {self.min_item_frac} gives items under 8 px at size {self.size}")
        if not 0 <= self.mask_threshold < 255:
            raise ValueError(f"mask_threshold must be in 0..254, got {self.mask_threshold}")
        if not 0.0 <= self.min_visible_frac <= 1.0:
            raise ValueError(f"min_visible_frac must be in [0, 1], got {self.min_visible_frac}")
        if not 0.0 <= self.gradient <= 1.0:
            raise ValueError(f"gradient must be in [0, 1], got {self.gradient}")
        if self.texture_amplitude < 0:
            raise ValueError(f"texture_amplitude must be non-negative, got {self.texture_amplitude}")
        if not 1 <= self.texture_cells[0] <= self.texture_cells[1]:
            raise ValueError(f"need 1 <= texture_cells[0] <= texture_cells[1], got {self.texture_cells}")
        if self.palette < 0:
            raise ValueError(f"palette must be 0 (any colour) or a number of hues, got {self.palette}")
        if not 0.0 <= self.class_hue_jitter < 0.5:
            raise ValueError(f"class_hue_jitter must be in [0, 0.5), got {self.class_hue_jitter}")
        if self.tint_class not in TINT_CLASSES:
            raise ValueError(f"tint_class must be one of {TINT_CLASSES}, got {self.tint_class!r}")
        if self.tint_class != "own" and not self.class_colours:
            raise ValueError("tint_class='random' recolours class colours: it needs class_colours=True")
        for name in ("tint_saturation", "background_saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        low, high = self.background_range
        if not 0.0 <= low <= high <= 255.0:
            raise ValueError(
                f"need 0 <= background_range[0] <= background_range[1] <= 255, got {self.background_range}"
            )

    @property
    def item_side_range(self) -> tuple[int, int]:
        return round(self.min_item_frac * self.size), round(self.max_item_frac * self.size)


@dataclass
class Scene:
    """One rendered scene; ``background`` is the fill before any item was painted."""

    image: np.ndarray  # [H, W, 3] uint8
    background: np.ndarray  # [H, W, 3] uint8
    semantic: np.ndarray  # [H, W] uint8, 0 or class + 1
    instance: np.ndarray  # [H, W] uint8, 0 or paint order 1..n
    source_indices: list[int]  # Fashion-MNIST index of instance k at position k - 1
    labels: list[int]  # Fashion-MNIST class (0..9) of instance k at position k - 1
    tint_classes: list[int] | None = None  # with class colours: the class whose colour instance k took


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one scene: independent of how many other scenes are rendered, or in what order."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([seed, _SPLIT_KEYS[split], index])


def tint_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one scene's tint classes under ``tint_class="random"``, apart from ``scene_rng``'s stream."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([seed, _SPLIT_KEYS[split], index, _TINT_KEY])


def split_source_pools(num_items: int, seed: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Partition item indices ``0..num_items-1`` into disjoint, sorted (train, eval) pools."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")
    order = np.random.default_rng([seed, _POOL_KEY]).permutation(num_items)
    num_eval = max(1, round(num_items * eval_fraction))
    if num_eval >= num_items:
        raise ValueError(f"cannot split {num_items} items into non-empty train and eval pools")
    return np.sort(order[num_eval:]), np.sort(order[:num_eval])


def _bilinear_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    # PIL's uint8 bilinear path is integer fixed-point, so the result cannot depend on float rounding.
    return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.BILINEAR))


def desaturate(colours: np.ndarray, saturation: float) -> np.ndarray:
    """Move RGB colours (float [..., 3]) towards their grey (channel mean): 1 keeps them, 0 makes them grey."""
    grey = colours.mean(axis=-1, keepdims=True)
    return grey + saturation * (colours - grey)


def _render_background(rng: np.random.Generator, config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """Smooth two-colour gradient + coarse low-contrast texture + mild per-pixel noise.

    Returns the uint8 canvas and the two gradient end colours (float, [2, 3]).
    """
    size = config.size
    end_colours = rng.uniform(*config.background_range, size=(2, 3))
    end_colours[1] = end_colours[0] + config.gradient * (end_colours[1] - end_colours[0])
    end_colours = desaturate(end_colours, config.background_saturation)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    coords = np.arange(size, dtype=np.float64)
    projection = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    projection -= projection.min()
    projection /= max(projection.max(), 1e-9)
    canvas = end_colours[0] + projection[..., None] * (end_colours[1] - end_colours[0])

    grid = int(rng.integers(config.texture_cells[0], config.texture_cells[1] + 1))
    coarse = rng.integers(0, 256, size=(grid, grid), dtype=np.uint8)
    texture = _bilinear_resize(coarse, size, size).astype(np.float64) * (2.0 / 255.0) - 1.0
    canvas += config.texture_amplitude * texture[..., None]
    canvas += rng.uniform(-NOISE_AMPLITUDE, NOISE_AMPLITUDE, size=(size, size, 3))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), end_colours


def hue_colours(hues: np.ndarray) -> np.ndarray:
    """Saturated RGB colours (float [N, 3]) of ``hues`` in [0, 1) (0 = red).

    HSV with S = 0.8, V = 1: channel c is ``255 * (1 - 0.8 * clip(min(k, 4 - k), 0, 1))`` with
    ``k = (n_c + 6 * hue) mod 6`` and ``n = (5, 3, 1)`` for (R, G, B).
    """
    k = (np.array([5.0, 3.0, 1.0])[None, :] + np.asarray(hues, dtype=np.float64)[:, None] * 6.0) % 6.0
    return 255.0 * (1.0 - 0.8 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def palette_colours(num: int) -> np.ndarray:
    """``num`` saturated RGB colours of evenly spaced hues (float [num, 3]), starting at red."""
    return hue_colours(np.arange(num) / num)


def class_tint(label: int, hue_offset: float = 0.0, saturation: float = 1.0) -> np.ndarray:
    """The RGB tint (float [3]) of Fashion-MNIST class ``label``: hue ``label mod CLASS_HUES`` of CLASS_HUES evenly
    spaced ones (moved by ``hue_offset`` of their spacing), full colour for classes below CLASS_HUES and pastel
    (``desaturate`` by CLASS_PASTEL) above, scaled by ``saturation``."""
    hue = ((label % CLASS_HUES + hue_offset) / CLASS_HUES) % 1.0
    pastel = CLASS_PASTEL if label >= CLASS_HUES else 1.0
    return desaturate(hue_colours(np.array([hue]))[0], saturation * pastel)


def _pick_tint(
    rng: np.random.Generator, end_colours: np.ndarray, palette: np.ndarray | None = None, tint_saturation: float = 1.0
) -> np.ndarray:
    """Choose an RGB tint whose whole shading range stays far from the background gradient: a random colour
    (desaturated by ``tint_saturation``), or with ``palette`` one of its rows, returned as is."""
    if palette is None:
        candidates = desaturate(rng.uniform(0.0, 255.0, size=(TINT_CANDIDATES, 3)), tint_saturation)
    else:
        candidates = palette[rng.permutation(len(palette))]
    shade = np.linspace(TINT_FLOOR, 1.0, 6)
    along = np.linspace(0.0, 1.0, 6)
    item_colours = candidates[:, None, :] * shade[None, :, None]  # [C, 6, 3]
    bg_colours = end_colours[0] + along[:, None] * (end_colours[1] - end_colours[0])  # [6, 3]
    distance = np.linalg.norm(item_colours[:, :, None, :] - bg_colours[None, None, :, :], axis=-1)
    worst = distance.min(axis=(1, 2))
    good = np.flatnonzero(worst >= MIN_CONTRAST)
    # If no candidate clears the bar, take the most distinct one rather than failing.
    return candidates[good[0] if good.size else int(worst.argmax())]


def render_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray | Sequence[int],
    config: SceneConfig | None = None,
    tints: np.random.Generator | None = None,
) -> Scene:
    """Render one scene from items drawn (without replacement) out of ``pool``.

    Later items occlude earlier ones; a placement that would leave an earlier item less than
    ``config.min_visible_frac`` visible is retried, and the item is dropped if no retry fits. With
    ``config.tint_class == "random"``, ``tints`` (``tint_rng``) draws the class whose colour each item takes; it
    is the only generator that does, so ``rng`` makes the same draws as for the class-coloured scene.
    """
    config = config or SceneConfig()
    if config.tint_class == "random" and tints is None:
        raise ValueError("tint_class='random' needs the scene's tint generator (tints=tint_rng(...))")
    pool = np.asarray(pool)
    size = config.size
    background, end_colours = _render_background(rng, config)
    palette = None
    if config.palette and not config.class_colours:
        palette = desaturate(palette_colours(config.palette), config.tint_saturation)
    image = background.copy()
    semantic = np.zeros((size, size), dtype=np.uint8)
    instance = np.zeros((size, size), dtype=np.uint8)

    num_items = int(rng.integers(config.min_items, config.max_items + 1))
    chosen = rng.choice(pool, size=min(num_items, len(pool)), replace=False)
    min_side, max_side = config.item_side_range

    full_areas: list[int] = []
    visible = np.zeros(1, dtype=np.int64)  # visible pixel count per instance id (slot 0 unused)
    placed_sources: list[int] = []
    placed_labels: list[int] = []
    placed_tints: list[int] = []
    for source in chosen:
        source = int(source)
        if config.class_colours:
            offset = rng.uniform(-1.0, 1.0) * config.class_hue_jitter
            tint_class = int(labels[source]) if config.tint_class == "own" else int(tints.integers(NUM_CLASSES))
            tint = class_tint(tint_class, offset, config.tint_saturation)
        else:
            tint = _pick_tint(rng, end_colours, palette, config.tint_saturation)
        if palette is not None and len(palette) > 1:
            palette = palette[np.any(palette != tint, axis=1)]  # items of a scene get distinct tints
        for _ in range(PLACEMENT_TRIES):
            side = int(rng.integers(min_side, max_side + 1))
            top = int(rng.integers(0, size - side + 1))
            left = int(rng.integers(0, size - side + 1))
            resized = _bilinear_resize(images[source], side, side)
            mask = resized > config.mask_threshold
            area = int(mask.sum())
            if area == 0:
                continue
            window = (slice(top, top + side), slice(left, left + side))
            covered = np.bincount(instance[window][mask], minlength=len(visible))
            remaining = visible[1:] - covered[1:]
            if np.all(remaining >= config.min_visible_frac * np.asarray(full_areas, dtype=np.float64)):
                break
        else:
            continue  # no placement keeps the earlier items visible enough: skip this item

        instance_id = len(placed_sources) + 1
        shading = TINT_FLOOR + (1.0 - TINT_FLOOR) * (resized[mask].astype(np.float64) / 255.0)
        colours = np.clip(np.rint(shading[:, None] * tint[None, :]), 0, 255).astype(np.uint8)
        image[window][mask] = colours
        semantic[window][mask] = labels[source] + 1
        instance[window][mask] = instance_id
        visible[1:] = remaining
        visible = np.append(visible, area)
        full_areas.append(area)
        placed_sources.append(source)
        placed_labels.append(int(labels[source]))
        if config.class_colours:
            placed_tints.append(tint_class)

    if config.greyscale:
        image = np.repeat(np.asarray(Image.fromarray(image).convert("L"))[..., None], 3, axis=2)
    tint_classes = placed_tints if config.class_colours else None
    return Scene(image, background, semantic, instance, placed_sources, placed_labels, tint_classes)


# ----------------------------------------------------------------------------------------------
# Dataset generation
# ----------------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    out_dir: Path
    meta: dict[str, Any]
    generated: bool  # False when an up-to-date dataset was already there
    seconds: float


def _scene_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _save_png(array: np.ndarray, path: Path) -> None:
    # Low compression keeps generation fast; the maps are mostly flat and still compress well.
    Image.fromarray(array).save(path, compress_level=1)


@dataclass
class _RenderState:
    out_dir: Path
    seed: int
    config: SceneConfig
    images: np.ndarray
    labels: np.ndarray
    pools: dict[str, np.ndarray]


_CHUNK = 64
_worker_state: _RenderState | None = None  # set once per pool process by _init_worker


def _init_worker(state: _RenderState) -> None:
    global _worker_state
    _worker_state = state


def _render_chunk_in_worker(task: tuple[str, int, int]) -> list[dict[str, Any]]:
    assert _worker_state is not None, "worker used without _init_worker"
    return _render_chunk(_worker_state, *task)


def _render_chunk(state: _RenderState, split: str, start: int, stop: int) -> list[dict[str, Any]]:
    """Render and write scenes ``start..stop-1`` of ``split``; return their records."""
    split_dir = state.out_dir / split
    records = []
    for index in range(start, stop):
        rng = scene_rng(state.seed, split, index)
        tints = tint_rng(state.seed, split, index) if state.config.tint_class == "random" else None
        scene = render_scene(rng, state.images, state.labels, state.pools[split], state.config, tints)
        name = _scene_name(split, index)
        _save_png(scene.image, split_dir / "images" / f"{name}.png")
        _save_png(scene.semantic, split_dir / "semantic" / f"{name}.png")
        _save_png(scene.instance, split_dir / "instance" / f"{name}.png")
        record = {"name": name, "source_indices": scene.source_indices, "labels": scene.labels}
        if state.config.tint_class != "own":
            record["tint_classes"] = scene.tint_classes
        records.append(record)
    return records


def _is_complete(out_dir: Path, meta: dict[str, Any]) -> bool:
    for split in SPLITS:
        expected = meta["counts"][split]
        if not (out_dir / split / "scenes.json").is_file():
            return False
        for kind in KINDS:
            if sum(1 for _ in (out_dir / split / kind).glob("*.png")) != expected:
                return False
    return True


def _prepare_out_dir(out_dir: Path) -> None:
    """Clear a previous demo dataset; refuse to touch a directory that is not one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoDataError(f"{out_dir}: exists and is not a directory")
    if not out_dir.exists():
        return
    meta = read_meta(out_dir)
    ours = meta is not None and meta.get("generator") == GENERATOR_NAME
    foreign = [p.name for p in out_dir.iterdir() if p.name not in {*SPLITS, "meta.json"}]
    if foreign or ((out_dir / "meta.json").exists() and not ours):
        raise DemoDataError(f"{out_dir}: not empty and not a demo-scenes directory; choose another --out-dir")
    # Drop meta.json first: an interrupted regeneration must not look complete next time.
    (out_dir / "meta.json").unlink(missing_ok=True)
    for split in SPLITS:
        (out_dir / split / "scenes.json").unlink(missing_ok=True)
        for kind in KINDS:
            for stale in (out_dir / split / kind).glob("*.png"):
                stale.unlink()


def generate_scenes(
    out_dir: str | Path,
    config: SceneConfig = SceneConfig(),
    num_train: int = DEFAULT_NUM_TRAIN,
    num_eval: int = DEFAULT_NUM_EVAL,
    seed: int = 0,
    *,
    eval_fraction: float = 0.2,
    fashion_root: str | Path | None = None,
    force: bool = False,
    workers: int | None = None,
) -> GenerationResult:
    """Write the demo dataset of scenes drawn as ``config`` says to ``out_dir`` (layout: ``data.scene_folder``).

    Does nothing if ``out_dir/meta.json`` records the same parameters and all files are present
    (unless ``force``); otherwise clears the old scenes and regenerates. ``workers`` processes
    render in parallel (default: one per CPU); the output does not depend on it.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if num_train < 0 or num_eval < 0:
        raise ValueError(f"scene counts must be non-negative, got train={num_train} eval={num_eval}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    params: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_eval": num_eval,
        "eval_fraction": eval_fraction,
        **asdict(config),
    }
    params = json.loads(json.dumps(params))  # as meta.json holds them (tuples become lists)

    existing = read_meta(out_dir)
    if (
        not force
        and existing is not None
        and existing.get("generator") == GENERATOR_NAME
        and existing.get("params") == params
        and _is_complete(out_dir, existing)
    ):
        return GenerationResult(out_dir, existing, False, time.perf_counter() - start)

    images, labels = load_fashion_mnist(fashion_root)
    train_pool, eval_pool = split_source_pools(len(images), seed, eval_fraction)
    pools = {"train": train_pool, "eval": eval_pool}
    counts = {"train": num_train, "eval": num_eval}

    _prepare_out_dir(out_dir)
    for split in SPLITS:
        for kind in KINDS:
            (out_dir / split / kind).mkdir(parents=True, exist_ok=True)
    # Each scene has its own generator, so chunking over processes cannot change any output byte.
    tasks = [
        (split, start, min(start + _CHUNK, counts[split]))
        for split in SPLITS
        for start in range(0, counts[split], _CHUNK)
    ]
    state = _RenderState(out_dir, seed, config, images, labels, pools)
    workers = max(1, min(workers if workers is not None else os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        chunks = [_render_chunk(state, *task) for task in tasks]
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(state,)) as pool:
            chunks = list(pool.map(_render_chunk_in_worker, tasks))
    for split in SPLITS:
        records = [record for (task, chunk) in zip(tasks, chunks, strict=True) if task[0] == split for record in chunk]
        write_text_atomic(out_dir / split / "scenes.json", json.dumps(records, separators=(",", ":")) + "\n")

    meta: dict[str, Any] = {
        "generator": GENERATOR_NAME,
        "version": FORMAT_VERSION,
        "params": params,
        "seed": seed,
        "size": config.size,
        "counts": counts,
        "pool_sizes": {split: len(pool) for split, pool in pools.items()},
        "class_names": list(CLASS_NAMES),
        "num_classes": NUM_CLASSES,
        "semantic_encoding": "0 = background, k + 1 = Fashion-MNIST class k",
        "instance_encoding": "0 = background, 1..n = items in paint order (later occludes earlier)",
        "source": "Fashion-MNIST test split (data/fashion_mnist, MIT licence, (c) 2017 Zalando SE)",
    }
    # Written last, so its presence means the dataset is complete.
    write_text_atomic(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return GenerationResult(out_dir, meta, True, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.demo_scenes",
        description="Generate the deterministic Fashion-MNIST demo scenes (images + semantic/instance maps).",
    )
    parser.add_argument("--out-dir", default="demo_data", help="output directory (default: demo_data)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-eval", type=int, default=DEFAULT_NUM_EVAL)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="canvas side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-items", type=int, default=2)
    parser.add_argument("--max-items", type=int, default=4)
    parser.add_argument(
        "--tint-class",
        choices=TINT_CLASSES,
        default="own",
        help="own: an item takes its class's colour (the demo); random: the colour of a class drawn independently "
        "of its own, on the same layouts (the colour-free evaluation set)",
    )
    parser.add_argument("--greyscale", action="store_true", help="grey scenes (luma), same layouts and maps")
    parser.add_argument("--fashion-root", default=None, help="folder with the t10k idx .gz files")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    args = parser.parse_args(argv)

    try:
        result = generate_scenes(
            args.out_dir,
            SceneConfig(
                size=args.size,
                min_items=args.min_items,
                max_items=args.max_items,
                tint_class=args.tint_class,
                greyscale=args.greyscale,
            ),
            num_train=args.num_train,
            num_eval=args.num_eval,
            seed=args.seed,
            fashion_root=args.fashion_root,
            force=args.force,
            workers=args.workers,
        )
    except (ValueError, OSError) as exc:
        raise SystemExit(f"demo_scenes: error: {exc}") from None

    counts = result.meta["counts"]
    summary = (
        f"{counts['train']} train + {counts['eval']} eval scenes, "
        f"{result.meta['size']}x{result.meta['size']} px, seed {result.meta['seed']}"
    )
    if result.generated:
        print(f"wrote {summary} to {result.out_dir} in {result.seconds:.2f} s")
    else:
        print(f"{result.out_dir} already holds {summary}; nothing to do ({result.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
