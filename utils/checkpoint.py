"""Checkpoint files: atomic writes, safe loads, and the teacher/student parts of a SlotCon checkpoint.

Our checkpoints hold only tensors and plain Python types, so they load with ``weights_only=True``.
Official SlotCon checkpoints pickle an ``argparse.Namespace`` under ``args``; we allow-list exactly that
class instead of ever unpickling arbitrary objects.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.slotcon import TEACHER_PREFIXES

STUDENT_PREFIXES = tuple(p.replace("_k.", "_q.") for p in TEACHER_PREFIXES)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``torch.save(obj)`` to a temp file in the same folder, fsync it, then rename over ``path``.

    A reader (or a resume after a crash) sees either the old file or the new one, never a partial one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (ours, or an official SlotCon one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = vars(obj["args"])
    return obj


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The model weights of a checkpoint with any DDP ``module.`` prefix removed."""
    state = checkpoint.get("model", checkpoint.get("state_dict"))
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint has no 'model' (or 'state_dict') entry")
    return {k.removeprefix("module."): v for k, v in state.items()}


def network_state_dict(checkpoint: dict[str, Any], student: bool = False) -> dict[str, Tensor]:
    """The teacher's (or student's) backbone, projector and prototypes, under the teacher's names.

    Returns keys ``encoder_k.*``, ``projector_k.*``, ``grouping_k.*`` ready for ``SlotConTeacher``.
    """
    prefixes = STUDENT_PREFIXES if student else TEACHER_PREFIXES
    state = model_state_dict(checkpoint)
    picked = {}
    for key, value in state.items():
        for prefix, teacher_prefix in zip(prefixes, TEACHER_PREFIXES, strict=True):
            if key.startswith(prefix):
                picked[teacher_prefix + key[len(prefix):]] = value
    if not any(k.startswith("encoder_k.") for k in picked):
        which = "student (encoder_q)" if student else "teacher (encoder_k)"
        raise CheckpointError(f"checkpoint holds no {which} backbone weights; is it a full SlotCon checkpoint?")
    return picked


def backbone_state_dict(checkpoint: dict[str, Any], student: bool = False) -> dict[str, Tensor]:
    """The backbone alone with torchvision ResNet names (``conv1.weight``, ``layer1.0.bn1.weight``...)."""
    prefix = "encoder_k."
    return {k[len(prefix):]: v for k, v in network_state_dict(checkpoint, student).items() if k.startswith(prefix)}


def teacher_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``SlotConTeacher.build`` keyword arguments for the network stored in ``checkpoint``.

    Sizes are read off the weights (they cannot disagree with them); the architecture, the
    temperature and the output stride come from the saved args, which both our and official checkpoints carry.
    """
    state = network_state_dict(checkpoint)
    args = checkpoint.get("args") or {}
    if "arch" not in args:
        raise CheckpointError("checkpoint has no args['arch']; cannot tell which ResNet it holds")
    last_projector_layer = max(int(k.split(".")[2]) for k in state if k.startswith("projector_k.mlp."))
    return {
        "arch": args["arch"],
        "dim_hidden": state["projector_k.mlp.0.weight"].shape[0],
        "dim_out": state[f"projector_k.mlp.{last_projector_layer}.weight"].shape[0],
        "num_prototypes": state["grouping_k.slot_embed.weight"].shape[0],
        "teacher_temp": float(args.get("teacher_temp", 0.07)),
        # Dilation changes no weight, so it can only come from the args; official checkpoints are stride 32.
        "output_stride": int(args.get("output_stride", 32)),
    }


def load_teacher(path: str | os.PathLike, student: bool = False, map_location: str = "cpu"):
    """Build a ``SlotConTeacher`` from a full checkpoint (ours or official) and load it strictly."""
    from models.slotcon import SlotConTeacher

    checkpoint = load_checkpoint(path, map_location)
    try:
        config = teacher_config(checkpoint)
        teacher = SlotConTeacher.build(**config)
        teacher.load_state_dict(network_state_dict(checkpoint, student))
    except (CheckpointError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None
    return teacher
