"""The networks inside a SlotCon checkpoint file (ours or official): teacher/student weights, the teacher's
configuration, and a ready ``SlotConTeacher``. Reading the file itself is ``utils.checkpoint``'s job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from models.backbones import build_backbone, resolve_output_stride
from models.slotcon import TEACHER_PREFIXES, SlotConTeacher
from utils.checkpoint import CheckpointError, check_state_dict, load_checkpoint, model_state_dict, nonfinite_tensors

STUDENT_PREFIXES = tuple(p.replace("_k.", "_q.") for p in TEACHER_PREFIXES)


def _pick_network(checkpoint: dict[str, Any], student: bool) -> dict[str, Tensor]:
    prefixes = STUDENT_PREFIXES if student else TEACHER_PREFIXES
    state = model_state_dict(checkpoint)
    picked = {}
    for key, value in state.items():
        for prefix, teacher_prefix in zip(prefixes, TEACHER_PREFIXES, strict=True):
            if key.startswith(prefix):
                picked[teacher_prefix + key[len(prefix) :]] = value
    if not any(k.startswith("encoder_k.") for k in picked):
        raise CheckpointError(
            f"checkpoint holds no {network_name(student)} backbone weights; is it a full SlotCon checkpoint?"
        )
    return picked


def network_name(student: bool) -> str:
    """How messages and summaries name the network taken from a checkpoint."""
    return "student (encoder_q)" if student else "teacher (encoder_k)"


def check_finite(state: dict[str, Tensor], what: str) -> None:
    """Raise ``CheckpointError`` (one line) if any floating-point tensor of ``state`` holds NaN or Inf."""
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{len(bad)} of the {what}'s {len(state)} tensors hold NaN or Inf (e.g. {bad[0]}); "
            "refusing diverged weights: use an earlier checkpoint"
        )


def network_state_dict(checkpoint: dict[str, Any], student: bool = False) -> dict[str, Tensor]:
    """The teacher's (or student's) backbone, projector and prototypes, under the teacher's names.

    Returns keys ``encoder_k.*``, ``projector_k.*``, ``grouping_k.*`` ready for ``SlotConTeacher``. Raises
    ``CheckpointError`` when they are missing or any of them holds NaN or Inf.
    """
    picked = _pick_network(checkpoint, student)
    check_finite(picked, f"{network_name(student)} network")
    return picked


def backbone_state_dict(checkpoint: dict[str, Any], student: bool = False) -> dict[str, Tensor]:
    """The backbone alone, under its own names (its family's ``BackboneSpec.weight_names``: torchvision's for
    ResNets, ``conv1.weight``, ``layer1.0.bn1.weight``...).

    Raises ``CheckpointError`` when it is missing or any of its tensors holds NaN or Inf.
    """
    prefix = "encoder_k."
    backbone = {k[len(prefix) :]: v for k, v in _pick_network(checkpoint, student).items() if k.startswith(prefix)}
    check_finite(backbone, f"{network_name(student)} backbone")
    return backbone


def teacher_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``SlotConTeacher.build`` keyword arguments for the network stored in ``checkpoint``.

    Sizes are read off the weights (they cannot disagree with them); the architecture, the
    temperature and the output stride come from the saved args, which both our and official checkpoints carry.
    """
    state = _pick_network(checkpoint, student=False)
    args = checkpoint.get("args") or {}
    if "arch" not in args:
        raise CheckpointError("checkpoint has no args['arch']; cannot tell which backbone it holds")
    last_projector_layer = max(int(k.split(".")[2]) for k in state if k.startswith("projector_k.mlp."))
    return {
        "arch": args["arch"],
        "dim_hidden": state["projector_k.mlp.0.weight"].shape[0],
        "dim_out": state[f"projector_k.mlp.{last_projector_layer}.weight"].shape[0],
        "num_prototypes": state["grouping_k.slot_embed.weight"].shape[0],
        "teacher_temp": float(args.get("teacher_temp", 0.07)),
        # Dilation changes no weight, so it can only come from the args; official checkpoints have the default.
        "output_stride": resolve_output_stride(args["arch"], args.get("output_stride")),
        # BatchNorm heads have statistics where plain ones have a GELU (mlp.1): the weights tell.
        "head_norm": "bn" if "projector_k.mlp.1.running_mean" in state else "none",
    }


def load_teacher(
    path: str | os.PathLike, student: bool = False, map_location: str = "cpu", expected: dict[str, Any] | None = None
) -> SlotConTeacher:
    """Build a ``SlotConTeacher`` from a full checkpoint (ours or official) and load it strictly.

    ``expected``: ``teacher_config`` entries the caller was told (e.g. ``{"num_prototypes": 256}`` from a
    command line); one that the checkpoint contradicts raises ``CheckpointError``. Every error is one line
    that starts with ``path``.
    """
    checkpoint = load_checkpoint(path, map_location)
    try:
        config = teacher_config(checkpoint)
        for key, value in (expected or {}).items():
            if config[key] != value:
                flag = "--" + key.replace("_", "-")
                raise CheckpointError(
                    f"the checkpoint holds a network with {flag} {config[key]}, not {value}: "
                    f"drop {flag} or pass {config[key]}"
                )
        teacher = SlotConTeacher.build(**config)
        weights = network_state_dict(checkpoint, student)
        check_state_dict(teacher, weights)  # torch's own message names no key in its first line
        teacher.load_state_dict(weights)
    except (CheckpointError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None
    return teacher


def load_backbone(path: str | os.PathLike, student: bool = False, arch: str | None = None) -> nn.Module:
    """The backbone alone, ready for dense features (eval mode), from a SlotCon checkpoint (ours or official: the
    teacher, or the student) or a ``python -m transfer.export --to safetensors`` file (its metadata names the arch).

    Built by the factory at the checkpoint's output stride and loaded strictly; ``arch``: the one the caller
    expects. Every error is one ``CheckpointError`` line that starts with ``path``.
    """
    expected = arch
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state, arch, stride = _read_safetensors(path)
        else:
            checkpoint = load_checkpoint(path)
            args = checkpoint.get("args") or {}
            if "arch" not in args:
                raise CheckpointError("checkpoint has no args['arch']; cannot tell which backbone it holds")
            arch, stride = args["arch"], args.get("output_stride")
            state = backbone_state_dict(checkpoint, student)
        if expected is not None and arch != expected:
            raise CheckpointError(f"it holds a {arch} backbone, not a {expected}")
        trunk = build_backbone(arch, resolve_output_stride(arch, stride))
        check_finite(state, "backbone")
        trunk.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (CheckpointError, RuntimeError, ValueError) as e:
        message = str(e).splitlines()[0]
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return trunk.eval()


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], str, int | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"not a readable safetensors file ({e})") from None
    if "arch" not in metadata:
        raise CheckpointError("its metadata names no arch: export it with python -m transfer.export --to safetensors")
    stride = metadata.get("output_stride")
    return state, metadata["arch"], None if stride is None else int(stride)
