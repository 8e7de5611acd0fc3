"""Export the backbone of a SlotCon checkpoint for mmsegmentation (``init_cfg=dict(type='Pretrained', ...)``).

    python transfer/segmentation/convert_pretrain_to_mm.py output/slotcon/ckpt_epoch_800.pth slotcon_r50_mm.pth

mmseg's (and mmcv's) ``ResNet`` uses torchvision's parameter names (conv1, bn1, layer1.0.downsample.0 ...),
so the tensors keep their names; only the classifier would be dropped. By default the teacher
(``encoder_k``) is exported, as in the paper; ``--student`` exports ``encoder_q``. The file holds nothing but
tensors, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run by path, as the original README does: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.weights import network_name
from transfer.backbone import check_output_path, load_resnet_backbone
from utils.atomic import OutputWriteError, write_atomic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="SlotCon checkpoint (.pth, ours or official full checkpoint)")
    parser.add_argument("output", help="mmseg backbone weights to write (.pth)")
    parser.add_argument("--student", action="store_true", help="export the student (encoder_q) instead of the teacher")
    args = parser.parse_args(argv)

    out = check_output_path(args.output)
    state, depth = load_resnet_backbone(args.input, student=args.student)  # "fc.*" already dropped
    # clone(): save each tensor on its own storage, not the whole checkpoint's storage it may view into.
    try:  # whole or not at all: a full disk must not leave a truncated file under the name mmseg is given
        weights = {"state_dict": {k: v.detach().clone() for k, v in state.items()}}
        write_atomic(out, lambda f: torch.save(weights, f))
    except OutputWriteError as e:
        raise SystemExit(str(e)) from None
    print(
        f"wrote {len(state)} tensors of the {network_name(args.student)} ResNet-{depth} to {out} "
        "(mmseg/torchvision names)"
    )


if __name__ == "__main__":
    main()
