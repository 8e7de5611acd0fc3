"""Export the backbone of a SlotCon checkpoint to detectron2's pickle format.

    python transfer/detection/convert_pretrain_to_d2.py output/slotcon/ckpt_epoch_800.pth slotcon_r50.pkl

By default the teacher (``encoder_k``) is exported, as in the paper; ``--student`` exports ``encoder_q``.
Works on our checkpoints and on official full SlotCon checkpoints (their ``argparse.Namespace`` args are
allow-listed; nothing else is unpickled).
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path

import numpy as np
from torch import Tensor

if __package__ in (None, ""):  # run by path, as the original README does: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.weights import network_name
from transfer.backbone import check_output_path, load_resnet_backbone
from utils.atomic import OutputWriteError, write_atomic

# detectron2 reads a .pkl with "__author__" as a non-Caffe2 model (so it keeps our names and RGB layout),
# and "matching_heuristics" lets it match names by suffix, as for its own converted models.
AUTHOR = "SlotCon"


def to_detectron2_name(name: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name (``layer1.0.bn3.weight`` -> ``res2.0.conv3.norm.weight``)."""
    if not name.startswith("layer"):
        name = "stem." + name
    name = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", name)
    name = re.sub(r"\bbn(\d)\b", r"conv\1.norm", name)
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def to_detectron2(state: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Rename every tensor (running stats and ``num_batches_tracked`` included) and turn it into numpy."""
    return {to_detectron2_name(k): v.detach().cpu().numpy() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="SlotCon checkpoint (.pth, ours or official full checkpoint)")
    parser.add_argument("output", help="detectron2 weights to write (.pkl)")
    parser.add_argument("--student", action="store_true", help="export the student (encoder_q) instead of the teacher")
    args = parser.parse_args(argv)

    out = check_output_path(args.output)
    state, depth = load_resnet_backbone(args.input, student=args.student)
    model = to_detectron2(state)
    payload = {"model": model, "__author__": AUTHOR, "matching_heuristics": True}
    try:  # whole or not at all: a full disk must not leave a truncated .pkl under the name detectron2 is given
        write_atomic(out, lambda f: pickle.dump(payload, f))
    except OutputWriteError as e:
        raise SystemExit(str(e)) from None
    print(f"wrote {len(model)} tensors of the {network_name(args.student)} ResNet-{depth} to {out} (detectron2 names)")


if __name__ == "__main__":
    main()
