"""Export the backbone of a SlotCon checkpoint to detectron2's pickle format (the original README's command).

    python transfer/detection/convert_pretrain_to_d2.py output/slotcon/ckpt_epoch_800.pth slotcon_r50.pkl

``python -m transfer.export CKPT --to detectron2 OUT`` under its original name: a ResNet with detectron2's names,
a ViT with ViTDet's (``--image-size``, ``--window-size``), a sidecar ``OUT.json`` beside it. By default the
teacher (``encoder_k``) is exported, as in the paper; ``--student`` exports ``encoder_q``. Works on our
checkpoints and on official full SlotCon checkpoints (their ``argparse.Namespace`` args are allow-listed;
nothing else is unpickled).
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
    parser.add_argument("output", help="detectron2 weights to write (.pkl)")
    export.add_arguments(parser)
    args = parser.parse_args(argv)
    export.run(args.input, "detectron2", args.output, args)


if __name__ == "__main__":
    main()
