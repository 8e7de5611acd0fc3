# ViTDet Mask R-CNN on a SlotCon ViT-S/16 (vit_small): COCO_mask_rcnn_vitdet_b_100ep_SlotCon.py with the ViT-S
# width (384) and heads (6). detectron2 ships ViTDet configs for ViT-B/L/H only; the rest of the recipe (12 blocks,
# window and global blocks, drop path 0.1, layer-wise lr decay 0.7) is ViT-B's, untuned for ViT-S.
from transfer.vit_weights import detectron2_vit_kwargs

from .COCO_mask_rcnn_vitdet_b_100ep_SlotCon import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(detectron2_vit_kwargs("vit_small"))

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
