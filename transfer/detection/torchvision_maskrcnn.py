"""torchvision's Mask R-CNN R50-FPN initialised from a SlotCon checkpoint: a detection client that installs with
the core requirements (detectron2 does not install from PyPI).

    model = build_maskrcnn_from_checkpoint("ckpt_epoch_800.pth", num_classes=91)

The backbone gets the pretrained teacher (or ``student=True``: student) ResNet-50; FPN and heads start random.
As in the detectron2 protocol (FREEZE_AT 0, trainable norm), no stage is frozen and the backbone keeps
ordinary trainable BatchNorm layers (wrap the model in ``nn.SyncBatchNorm.convert_sync_batchnorm`` for
multi-GPU training). torchvision normalises inputs with the ImageNet mean/std on 0-1 RGB images, which is
the normalisation SlotCon was pretrained with.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so that running this file by path works

from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn

from transfer.backbone import load_resnet_backbone, network_name


def build_maskrcnn_from_checkpoint(path: str | os.PathLike, num_classes: int, student: bool = False,
                                   **maskrcnn_kwargs: Any) -> MaskRCNN:
    """A Mask R-CNN R50-FPN whose ``backbone.body`` holds the SlotCon backbone of ``path``, every key loaded.

    ``maskrcnn_kwargs`` go to torchvision's ``MaskRCNN`` (e.g. ``min_size``, ``max_size``).
    Raises ``SystemExit`` with a one-line message for a checkpoint that does not fit.
    """
    state, depth = load_resnet_backbone(path, student=student)
    if depth != 50:
        raise SystemExit(f"{path}: holds a ResNet-{depth}; torchvision's Mask R-CNN FPN builder here is ResNet-50 only")
    # No weights at all: torchvision then builds plain BatchNorm2d and leaves all five stages trainable.
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **maskrcnn_kwargs)
    result = model.backbone.body.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"{path}: {network_name(student)} backbone does not fit torchvision's ResNet-50: "
                         f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model
