"""Train an mmsegmentation 1.x model from a converted SlotCon backbone (what dist_train.sh launches per GPU).

    python transfer/segmentation/train.py CONFIG --pretrained slotcon_r50_mm.pth [--work-dir DIR]
        [--launcher pytorch] [--resume] [--cfg-options key=value ...]

A thin wrapper around mmengine's ``Runner.from_cfg`` (what mmseg's own tools/train.py does) that refuses to
start without usable pretrained weights: mmengine loads ``init_cfg`` checkpoints non-strictly and would
otherwise train from a random backbone with only a warning in the log.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so that running this file by path works

from transfer.backbone import SUPPORTED_DEPTHS, reference_resnet_shapes

_REMOTE_PREFIXES = ("http://", "https://", "torchvision://", "open-mmlab://", "mmcls://", "pretrain://")


def check_pretrained(path: str, depth: int) -> None:
    """One-line error unless ``path`` is a converted backbone with every ResNet-``depth`` tensor."""
    if path.startswith(_REMOTE_PREFIXES):
        raise SystemExit(f"{path}: refusing remote/supervised weights; pass a backbone converted with "
                         "convert_pretrain_to_mm.py")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: pretrained backbone not found; convert a SlotCon checkpoint with "
                         "convert_pretrain_to_mm.py and pass --pretrained /path/to/it.pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for foreign files
        raise SystemExit(f"{path}: not a loadable weights file ({str(e).strip().splitlines()[0]})") from None
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        hint = " (a full SlotCon checkpoint? convert it first)" if isinstance(obj, dict) and "model" in obj else ""
        raise SystemExit(f"{path}: has no 'state_dict' entry{hint}")
    if depth not in SUPPORTED_DEPTHS:
        raise SystemExit(f"config backbone depth {depth} is not one of {SUPPORTED_DEPTHS}")
    missing = sorted(set(reference_resnet_shapes(depth)) - set(state))
    if missing:
        raise SystemExit(f"{path}: {len(missing)} ResNet-{depth} backbone tensors missing (e.g. {missing[0]})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="mmseg 1.x config, e.g. configs/voc12aug/<name>.py")
    parser.add_argument("--pretrained", help="backbone from convert_pretrain_to_mm.py (sets model.backbone.init_cfg)")
    parser.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="'pytorch' under torchrun (dist_train.sh)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. train_dataloader.batch_size=2")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The config with the command line applied and the pretrained weights checked (returns mmengine ``Config``)."""
    from mmengine.config import Config

    if not os.path.isfile(args.config):
        raise SystemExit(f"{args.config}: no such config file")
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    if args.pretrained:
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=args.pretrained)
    init_cfg = cfg.model.backbone.get("init_cfg") or {}
    if init_cfg.get("type") != "Pretrained":
        raise SystemExit(f"{args.config}: model.backbone.init_cfg is not a Pretrained checkpoint; pass --pretrained")
    if not args.resume:  # a resumed run restores the fine-tuned backbone from its own checkpoint
        check_pretrained(str(init_cfg["checkpoint"]), int(cfg.model.backbone.depth))
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or os.path.join("work_dirs", Path(args.config).stem)
    cfg.resume = args.resume
    return cfg


def main(argv: list[str] | None = None) -> None:
    try:
        from mmengine.runner import Runner
    except ImportError as e:
        raise SystemExit(f"train.py needs mmengine/mmsegmentation ({e}): pip install -r requirements-transfer.txt, "
                         "and full mmcv==2.1.0 on GPU machines") from None
    try:
        import mmseg.models  # noqa: F401  (registers the models; needs mmcv's compiled ops)
    except ModuleNotFoundError as e:
        if e.name == "mmcv._ext":
            raise SystemExit("mmcv has no compiled ops (mmcv-lite?): install full mmcv==2.1.0 for training, see "
                             "https://mmcv.readthedocs.io/en/latest/get_started/installation.html") from None
        raise SystemExit(f"train.py needs mmsegmentation 1.2.2 ({e}): "
                         "pip install -r requirements-transfer.txt") from None
    cfg = build_config(parse_args(argv))
    Runner.from_cfg(cfg).train()


if __name__ == "__main__":
    main()
