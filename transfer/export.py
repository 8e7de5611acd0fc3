"""One exporter for the backbone of a SlotCon checkpoint, to every format it goes to, ResNets and ViTs alike.

    python -m transfer.export CKPT --to safetensors OUT.safetensors
    python -m transfer.export CKPT --to mmseg OUT.pth [--image-size 512]
    python -m transfer.export CKPT --to detectron2 OUT.pkl [--image-size 1024 --window-size 14]

``CKPT`` is a checkpoint of ours (``current.pth``, ``ckpt_epoch_E.pth``) or an official full SlotCon checkpoint;
the teacher (``encoder_k``) is exported, as in the paper, or the student with ``--student``. Formats:

* ``safetensors``: the backbone under its own library's names (torchvision's for ResNets, timm's for ViTs), which
  timm's models share: ``timm.create_model(NAME, pretrained=False, num_classes=0, **KWARGS)`` then
  ``load_state_dict(safetensors.torch.load_file(OUT), strict=True)`` loads it with 0 missing keys (NAME and
  KWARGS are in the sidecar's ``timm``). The file's metadata holds the arch.
* ``mmseg``: ``{"state_dict": ...}`` for mmsegmentation 1.x: a ResNet keeps its names (mmseg's ``ResNet`` has
  torchvision's), a ViT takes mmseg's ``VisionTransformer`` names (``transfer/vit_weights.py``); with
  ``--image-size`` its position table is stored for that crop (else the 224 px grid, which mmseg resizes).
* ``detectron2``: the pickle detectron2's checkpointer reads, ``{"model": numpy arrays, "__author__": ...}``: a
  ResNet with detectron2's ``res2..res5`` names, a ViT with ViTDet's ``backbone.net.*`` names for the
  ``detectron2.modeling.ViT`` of ``--image-size`` / ``--window-size`` (the recipe's 1024 / 14 by default).

Floating-point tensors are written as float32 whatever the checkpoint holds (bfloat16, float16 or float64
weights included). Beside every export, ``OUT.json`` says what the file is: the arch, its stride or patch, the
format and names, the network, the checkpoint's epochs and iteration, its data, the run's whole config, and
the evaluation numbers found beside the checkpoint (``eval.json``), so a weight file explains itself.
The two converters of the original README (``transfer/detection/convert_pretrain_to_d2.py``,
``transfer/segmentation/convert_pretrain_to_mm.py``) are this exporter with ``--to detectron2`` / ``--to mmseg``.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from models.backbones import backbone_shapes, backbone_spec
from models.weights import backbone_state_dict, network_name
from transfer import vit_weights
from transfer.backbone import check_output_path, load_resnet_backbone, to_detectron2_name
from utils.atomic import OutputWriteError, write_atomic
from utils.checkpoint import CheckpointError, load_checkpoint

FORMATS = ("safetensors", "mmseg", "detectron2")
# detectron2 reads a .pkl with "__author__" as a non-Caffe2 model (so it keeps our names and RGB layout),
# and "matching_heuristics" lets it match names by suffix, as for its own converted models.
DETECTRON2_AUTHOR = "SlotCon"


class ExportError(ValueError):
    """A checkpoint or an option the export cannot use; one line that names the file."""


def read_backbone(path: str | Path, student: bool = False) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """The backbone of a SlotCon checkpoint under its own names, checked complete, with its arch and the checkpoint.

    ResNets go through ``transfer.backbone.load_resnet_backbone`` (which also tells the depth of a checkpoint
    without args); any other family is checked name for name and shape for shape against its arch.
    """
    checkpoint = _load(path)
    arch = (checkpoint.get("args") or {}).get("arch")
    try:
        family = backbone_spec(arch).family if arch else "resnet"
    except ValueError as e:
        raise ExportError(f"{path}: {e}") from None
    if family == "resnet":
        try:
            state, depth = load_resnet_backbone(path, student=student, checkpoint=checkpoint)
        except SystemExit as e:
            raise ExportError(str(e.code)) from None
        return state, arch or f"resnet{depth}", checkpoint
    try:
        state = backbone_state_dict(checkpoint, student)
    except CheckpointError as e:
        raise ExportError(f"{path}: {e}") from None
    expected = backbone_shapes(arch)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"{path}: the {network_name(student)} backbone is not a complete {arch}: {len(missing)} missing "
            f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ExportError(f"{path}: {name} has shape {tuple(state[name].shape)}, {arch} needs {shape}")
    return state, arch, checkpoint


def _load(path: str | Path) -> dict[str, Any]:
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise ExportError(str(e)) from None


def as_float32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every floating-point tensor as float32 (on its own storage), the others as they are."""
    return {k: (v.float() if v.is_floating_point() else v).detach().clone().contiguous() for k, v in state.items()}


def timm_build_args(arch: str) -> dict[str, Any]:
    """The ``timm.create_model`` name and keyword arguments whose model takes the safetensors export strictly."""
    spec = backbone_spec(arch)
    if spec.family == "resnet":
        return {"name": arch, "kwargs": {"num_classes": 0}}
    kwargs = {"num_classes": 0, "dynamic_img_size": True}
    patch = spec.default_output_stride
    name = vit_weights.vit_spec(arch)["timm_name"]
    if f"patch{patch}_" not in name:
        kwargs["patch_size"] = patch
    return {"name": name, "kwargs": kwargs}


def convert(state: dict[str, Tensor], arch: str, fmt: str, image_size: int | None, window_size: int) -> Any:
    """The object written for ``fmt``; ``ExportError`` for an arch or size that format cannot take."""
    family = backbone_spec(arch).family
    if fmt == "safetensors":
        return state
    if family == "resnet":
        if fmt == "mmseg":
            return {"state_dict": state}
        model = {to_detectron2_name(k): v.numpy() for k, v in state.items()}
        return {"model": model, "__author__": DETECTRON2_AUTHOR, "matching_heuristics": True}
    patch = backbone_spec(arch).default_output_stride
    if image_size is not None and image_size % patch:
        raise ExportError(f"--image-size {image_size}: not a multiple of {arch}'s patch size {patch}")
    try:
        if fmt == "mmseg":
            grid = None if image_size is None else (image_size // patch, image_size // patch)
            return {"state_dict": vit_weights.timm_to_mmseg(state, pos_grid=grid)}
        kwargs = vit_weights.detectron2_vit_kwargs(arch, img_size=image_size or 1024, window_size=window_size)
        model = {k: v.numpy() for k, v in vit_weights.timm_to_detectron2(state, kwargs).items()}
    except ValueError as e:
        raise ExportError(f"--to {fmt}: {e}") from None
    return {"model": model, "__author__": DETECTRON2_AUTHOR, "matching_heuristics": True}


def sidecar(
    checkpoint_path: Path, checkpoint: dict[str, Any], arch: str, fmt: str, out: Path, student: bool, count: int
) -> dict[str, Any]:
    """What ``OUT.json`` holds (see the module docstring)."""
    spec = backbone_spec(arch)
    args = checkpoint.get("args") or {}
    names = {"safetensors": spec.weight_names, "mmseg": "mmseg", "detectron2": "detectron2"}[fmt]
    record: dict[str, Any] = {
        "file": out.name,
        "format": fmt,
        "names": names,
        "tensors": count,
        "arch": arch,
        "family": spec.family,
        "output_stride": int(args.get("output_stride") or spec.default_output_stride),
        "patch_size": spec.default_output_stride if spec.family == "vit" else None,
        "network": network_name(student),
        "checkpoint": {
            "path": str(checkpoint_path.resolve()),
            "epochs_done": checkpoint.get("epoch"),
            "iteration": (checkpoint.get("scheduler") or {}).get("iteration"),
        },
        "data": {k: args.get(k) for k in ("dataset", "data_dir", "num_instances", "image_size")},
        "config": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None), list))},
    }
    if fmt == "safetensors":
        record["timm"] = timm_build_args(arch)
    evaluation = checkpoint_path.parent / "eval.json"
    if evaluation.is_file():
        try:
            record["eval"] = json.loads(evaluation.read_text())
        except (OSError, ValueError):
            record["eval"] = None  # unreadable: said so rather than guessed
    return record


def _write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Whole or not at all: a full disk must not leave a truncated file under the name a library is given."""
    try:
        write_atomic(path, write)
    except OutputWriteError as e:
        raise ExportError(str(e)) from None


def export(
    checkpoint_path: str | Path,
    fmt: str,
    out: str | Path,
    student: bool = False,
    image_size: int | None = None,
    window_size: int = 14,
) -> dict[str, Any]:
    """Write ``out`` in ``fmt`` and its sidecar ``out.json``; returns the sidecar. ``ExportError`` on bad input."""
    if fmt not in FORMATS:
        raise ExportError(f"--to {fmt}: choose one of {', '.join(FORMATS)}")
    try:
        out = check_output_path(out)
    except SystemExit as e:
        raise ExportError(str(e.code)) from None
    state, arch, checkpoint = read_backbone(checkpoint_path, student)
    state = as_float32(state)
    converted = convert(state, arch, fmt, image_size, window_size)
    if fmt == "safetensors":
        from safetensors.torch import save

        stride = (checkpoint.get("args") or {}).get("output_stride") or backbone_spec(arch).default_output_stride
        metadata = {
            "format": "slotcon-backbone",
            "arch": arch,
            "output_stride": str(stride),
            "names": backbone_spec(arch).weight_names,
        }
        _write(out, lambda f: f.write(save(converted, metadata=metadata)))
        count = len(converted)
    elif fmt == "mmseg":
        _write(out, lambda f: torch.save(converted, f))
        count = len(converted["state_dict"])
    else:
        _write(out, lambda f: pickle.dump(converted, f))
        count = len(converted["model"])
    record = sidecar(Path(checkpoint_path), checkpoint, arch, fmt, out, student, count)
    side = out.with_name(out.name + ".json")
    _write(side, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", action="store_true", help="export the student (encoder_q) instead of the teacher")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="ViTs: the fine-tuning crop the position table is stored for (mmseg: default the 224 px grid; "
        "detectron2: the ViTDet input, default 1024)",
    )
    parser.add_argument("--window-size", type=int, default=14, help="ViTs to detectron2: ViTDet's attention window")


def run(checkpoint: str, fmt: str, out: str, args: argparse.Namespace) -> None:
    """Export and print one line; any problem is one line on stderr and exit status 1."""
    try:
        record = export(checkpoint, fmt, out, args.student, args.image_size, args.window_size)
    except ExportError as e:
        raise SystemExit(str(e)) from None
    print(
        f"wrote {record['tensors']} tensors of the {record['network']} {record['arch']} backbone to {out} "
        f"({record['names']} names); what it is: {out}.json"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transfer.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="SlotCon checkpoint (ours or an official full one)")
    parser.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument("output", help="the file to write (its sidecar is OUTPUT.json)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args.checkpoint, args.to, args.output, args)


if __name__ == "__main__":
    main()
