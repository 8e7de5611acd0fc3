"""Export the backbone of a SlotCon checkpoint for mmsegmentation 1.x (the original README's command).

    python transfer/segmentation/convert_pretrain_to_mm.py output/slotcon/ckpt_epoch_800.pth slotcon_r50_mm.pth

``python -m transfer.export CKPT --to mmseg OUT`` under its original name. mmseg's ``ResNet`` uses torchvision's
parameter names (conv1, bn1, layer1.0.downsample.0 ...), so a ResNet's tensors keep their names; a ViT takes
mmseg's ``VisionTransformer`` names (``--image-size``: the crop its position table is stored for). By default
the teacher (``encoder_k``) is exported, as in the paper; ``--student`` exports ``encoder_q``. The file holds
nothing but tensors (``torch.load(..., weights_only=True)``), with a sidecar ``OUT.json`` beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path, as the original README does: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transfer import export


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="SlotCon checkpoint (.pth, ours or official full checkpoint)")
    parser.add_argument("output", help="mmseg backbone weights to write (.pth)")
    export.add_arguments(parser)
    args = parser.parse_args(argv)
    export.run(args.input, "mmseg", args.output, args)


if __name__ == "__main__":
    main()
