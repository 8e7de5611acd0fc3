"""The networks inside a SlotCon checkpoint file (ours or official): teacher/student weights, the teacher's
configuration, and a ready ``SlotConTeacher``. Reading the file itself is ``utils.checkpoint``'s job.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from models.slotcon import TEACHER_PREFIXES, SlotConTeacher
from utils.checkpoint import CheckpointError, load_checkpoint, model_state_dict

STUDENT_PREFIXES = tuple(p.replace("_k.", "_q.") for p in TEACHER_PREFIXES)


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


def load_teacher(path: str | os.PathLike, student: bool = False, map_location: str = "cpu") -> SlotConTeacher:
    """Build a ``SlotConTeacher`` from a full checkpoint (ours or official) and load it strictly."""
    checkpoint = load_checkpoint(path, map_location)
    try:
        config = teacher_config(checkpoint)
        teacher = SlotConTeacher.build(**config)
        teacher.load_state_dict(network_state_dict(checkpoint, student))
    except (CheckpointError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None
    return teacher
