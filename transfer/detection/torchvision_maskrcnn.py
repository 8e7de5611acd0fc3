"""torchvision's Mask R-CNN ResNet-FPN initialised from a SlotCon checkpoint: a detection client that installs with
the core requirements (detectron2 does not install from PyPI).

    model = build_maskrcnn_from_checkpoint("ckpt_epoch_800.pth", num_classes=91)

The backbone gets the pretrained teacher (or ``student=True``: student) ResNet-18/34/50/101/152; FPN and heads
start random. As in the detectron2 protocol (FREEZE_AT 0, trainable norm), no stage is frozen and the
backbone keeps ordinary trainable BatchNorm layers (wrap the model in ``nn.SyncBatchNorm.convert_sync_batchnorm``
for multi-GPU training). torchvision normalises inputs with the ImageNet mean/std on 0-1 RGB images, which is
the normalisation SlotCon was pretrained with.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so that running this file by path works

import torchvision
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from transfer.backbone import SUPPORTED_DEPTHS, load_resnet_backbone, network_name


def build_maskrcnn(
    depth: int, num_classes: int, backbone_state: dict[str, Tensor] | None = None, **maskrcnn_kwargs: Any
) -> MaskRCNN:
    """Mask R-CNN on a ResNet-``depth`` FPN (torchvision's R50-FPN layout for every depth), all stages trainable.

    ``backbone_state`` (torchvision names, no ``fc``) must fit the ResNet exactly; ``None`` keeps the random
    initialisation. ``maskrcnn_kwargs`` go to torchvision's ``MaskRCNN`` (e.g. ``min_size``, ``max_size``).
    """
    if depth not in SUPPORTED_DEPTHS:
        raise ValueError(f"depth {depth} is not one of {SUPPORTED_DEPTHS}")
    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=nn.BatchNorm2d)
    if backbone_state is not None:
        result = resnet.load_state_dict(backbone_state, strict=False)
        unexpected = result.unexpected_keys
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"backbone does not fit torchvision's ResNet-{depth}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
    stage_channels = [resnet.inplanes // 8 * 2**i for i in range(4)]  # 64..512 (BasicBlock) or 256..2048
    backbone = BackboneWithFPN(resnet, {f"layer{k}": str(k - 1) for k in range(1, 5)}, stage_channels, 256)
    return MaskRCNN(backbone, num_classes=num_classes, **maskrcnn_kwargs)


def build_maskrcnn_from_checkpoint(
    path: str | os.PathLike, num_classes: int, student: bool = False, **maskrcnn_kwargs: Any
) -> MaskRCNN:
    """A Mask R-CNN whose ``backbone.body`` holds the SlotCon backbone of ``path``, every key loaded.

    Raises ``SystemExit`` with a one-line message for a checkpoint that does not fit.
    """
    state, depth = load_resnet_backbone(path, student=student)
    try:
        return build_maskrcnn(depth, num_classes, state, **maskrcnn_kwargs)
    except ValueError as e:
        raise SystemExit(f"{path}: {network_name(student)} {e}") from None
