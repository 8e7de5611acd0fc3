# The demo's instance set (python -m transfer.demo_sets, 128 x 128 scenes with 2-4 objects): ViTDet Mask R-CNN on a
# SlotCon ViT-T/16 (vit_tiny), the recipe of COCO_mask_rcnn_vitdet_b_100ep_SlotCon.py cut to a CPU's size. The
# ViT at 128 px (an 8 x 8 grid) with 4 x 4 attention windows (the 14 x 14 windows of a 64 x 64 grid would cover the
# whole image) in the same blocks, relative position biases, the pyramid and every head at 64 channels (box head
# 4 convs of 64 and an fc of 256), anchors halved for the small images (16-256 px), fewer proposals and sampled
# RoIs; scale jitter 0.75-1.0 of 128 px (LSJ's 0.1-2.0 would shrink a 2-4 item scene to a few pixels) without the
# crop, which for polygon masks needs shapely (an optional detectron2 dependency); AdamW lr 1e-4
# (not tuned) with layer-wise decay 0.7, 8 images per iteration, 300 iterations with a 25-iteration warmup and x0.1
# at 240; full precision. As in Demo_R_18_FPN_SlotCon.yaml, the data come from the command line:
#   python transfer/detection/lazy_train_net.py --config-file THIS_FILE --train-json sets/coco/train.json \
#       --train-images demo/train/images --val-json sets/coco/val.json --val-images demo/val/images \
#       train.init_checkpoint=vit_tiny_d2.pkl train.output_dir=output/demo_vitdet train.device=cpu
# with the weights from python -m transfer.export CKPT --to detectron2 vit_tiny_d2.pkl --image-size 128 --window-size 4
# (registered as custom_train / custom_val; roi_heads.num_classes follows their categories).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from transfer.vit_weights import detectron2_vit_kwargs

from .COCO_mask_rcnn_vitdet_b_100ep_SlotCon import dataloader, lr_multiplier, model, optimizer, train

_size, _width = 128, 64
model.backbone.net.update(detectron2_vit_kwargs("vit_tiny", img_size=_size, window_size=4))
model.backbone.square_pad = _size
model.backbone.out_channels = _width
model.proposal_generator.head.in_channels = _width
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.batch_size_per_image = 128
model.proposal_generator.pre_nms_topk = (512, 256)
model.proposal_generator.post_nms_topk = (256, 128)
model.roi_heads.num_classes = 10
model.roi_heads.batch_size_per_image = 64  # scenes hold 2-4 objects
model.roi_heads.box_head.input_shape = ShapeSpec(channels=_width, height=7, width=7)
model.roi_heads.box_head.conv_dims = [_width] * 4
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.box_predictor.test_topk_per_image = 20
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=_width, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [_width] * 5

dataloader.train.dataset.names = "custom_train"
dataloader.test.dataset.names = "custom_val"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    # at most 128 px: square_pad pads the batch to 128 x 128 and cannot shrink it
    L(T.ResizeScale)(min_scale=0.75, max_scale=1.0, target_height=_size, target_width=_size),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=_size, max_size=_size)]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

train.amp.enabled = False
train.max_iter = 300
train.eval_period = 300  # after the last iteration only
train.checkpointer.period = 100000  # only model_final.pth
optimizer.lr = 1e-4
lr_multiplier.scheduler.milestones = [240]
lr_multiplier.scheduler.values = [1.0, 0.1]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 25 / train.max_iter

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
