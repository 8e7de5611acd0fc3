"""The ResNet side of the converters: the pretrained ResNet inside a SlotCon checkpoint, checked and ready for a
transfer format, and its names in detectron2 (``transfer/vit_weights.py`` is the ViT side; ``transfer/export.py``
writes both).

Both converters (detectron2 and mmsegmentation) and the torchvision Mask R-CNN helper start here: load the
checkpoint safely, take the teacher (``encoder_k``, what SlotCon transfers) or the student (``encoder_q``),
and make sure it is a complete plain ResNet-18/34/50/101/152 before anything is written. A wrong file
fails with one line that names it, not with a key error deep inside a detection library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import Tensor

from models.backbones import backbone_shapes
from models.weights import backbone_state_dict, network_name
from utils.atomic import OutputWriteError, check_writable
from utils.checkpoint import CheckpointError, load_checkpoint

# (bottleneck blocks?, blocks per stage) -> depth; the plain ResNets detectron2 and mmseg can build.
_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
SUPPORTED_DEPTHS = tuple(sorted(_DEPTHS.values()))

_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def reference_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the plain ResNet-``depth`` trunk (torchvision's names, no classifier)."""
    return backbone_shapes(f"resnet{depth}")


def infer_depth(state: dict[str, Tensor]) -> int:
    """The ResNet depth whose block layout matches the (torchvision) keys of ``state``; ValueError if none does."""
    return depth_from_names(state, _BLOCK_KEY, stages=(1, 2, 3, 4), bottleneck_key="layer1.0.conv3.weight")


def depth_from_names(names: Iterable[str], block_key: re.Pattern, stages: tuple[int, ...], bottleneck_key: str) -> int:
    """The ResNet depth of a set of parameter names, in any naming scheme; ValueError if none matches.

    ``block_key`` matches a block's names with groups (stage number, block index), ``stages`` are the four
    stage numbers in order, ``bottleneck_key`` is a name only Bottleneck ResNets have.
    """
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for key in names:
        bottleneck = bottleneck or key == bottleneck_key
        match = block_key.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    per_stage = tuple(len(blocks.get(stage, ())) for stage in stages)
    depth = _DEPTHS.get((bottleneck, per_stage))
    if depth is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ValueError(
            f"blocks per stage {list(per_stage)} ({kind}) is not a ResNet-{'/'.join(map(str, SUPPORTED_DEPTHS))}"
        )
    return depth


def check_resnet(state: dict[str, Tensor], depth: int) -> None:
    """ValueError unless ``state`` has exactly the names and shapes of torchvision's ResNet-``depth``."""
    expected = reference_resnet_shapes(depth)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"not a complete ResNet-{depth}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    wrong = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        # Same names, other shapes: a wide ResNet or a ResNeXt, which the transfer configs do not build.
        raise ValueError(
            f"{len(wrong)} tensors do not have ResNet-{depth} shapes (e.g. {wrong[0]}: "
            f"{tuple(state[wrong[0]].shape)} vs {expected[wrong[0]]}); only plain ResNets are supported"
        )


def load_resnet_backbone(
    path: str | os.PathLike, student: bool = False, checkpoint: dict[str, Any] | None = None
) -> tuple[dict[str, Tensor], int]:
    """The teacher's (or student's) backbone of a SlotCon checkpoint, with torchvision names, and its depth; every
    floating-point tensor as float32 (what both libraries build their models in: float16, bfloat16 and float64
    weights are accepted, and numpy, which detectron2's pickle holds, has no bfloat16).

    ``checkpoint``: the file's contents when the caller has already read it. Raises ``SystemExit`` with a one-line
    message naming ``path`` for anything that is not a full SlotCon checkpoint of a plain ResNet (ours or official).
    """
    try:
        checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
        state = backbone_state_dict(checkpoint, student=student)
    except CheckpointError as e:
        message = str(e)
        raise SystemExit(message if message.startswith(str(path)) else f"{path}: {message}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if not k.startswith("fc.")}
    try:
        depth = infer_depth(state)
        check_resnet(state, depth)
    except ValueError as e:
        raise SystemExit(f"{path}: {network_name(student)} backbone: {e}") from None
    arch = (checkpoint.get("args") or {}).get("arch")
    if arch is not None and arch != f"resnet{depth}":
        raise SystemExit(f"{path}: args say arch={arch!r} but the weights are a ResNet-{depth}")
    return state, depth


def to_detectron2_name(name: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name (``layer1.0.bn3.weight`` -> ``res2.0.conv3.norm.weight``)."""
    if not name.startswith("layer"):
        name = "stem." + name
    name = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", name)
    name = re.sub(r"\bbn(\d)\b", r"conv\1.norm", name)
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def check_output_path(path: str | os.PathLike) -> Path:
    """The output path, after checking that a file can be written there (one-line error otherwise)."""
    try:  # a missing folder, a folder given as the file, a read-only or full disk: each one line
        return check_writable(path)
    except OutputWriteError as e:
        raise SystemExit(str(e)) from None
