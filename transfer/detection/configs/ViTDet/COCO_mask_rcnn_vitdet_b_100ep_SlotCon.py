# ViTDet Mask R-CNN on a SlotCon ViT-B/16 (vit_base), COCO, 100 epochs: detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (commit 02b5c4e) with our weights. From there and from
# configs/common/models/mask_rcnn_vitdet.py: a single-scale ViT-B at 1024 px (window attention of 14 x 14 in all
# blocks but 2, 5, 8, 11; relative position biases; drop path 0.1), a simple feature pyramid (x4, x2, x1, x0.5 and a
# max-pooled p6, 256 channels, LayerNorm), LN in the 4conv1fc box head and the mask head, 2 convs in the RPN head;
# LSJ data (coco_loader_lsj.py); AdamW lr 1e-4, weight decay 0.1 (none on normalisation layers and pos_embed),
# layer-wise lr decay 0.7 over the 12 blocks; 184,375 iterations of 64 images with a 250-iteration warmup from
# 0.001 x lr and x0.1 steps at 163,889 and 177,546; mixed precision. Reported for MAE ViT-B: 51.6 box AP, 45.9 mask AP.
#
# The backbone's weights: python -m transfer.export CKPT --to detectron2 vit_base_d2.pkl (the defaults, 1024 px and
# 14 x 14 windows, are this config's), which loads with 0 missing and 0 unexpected backbone keys (its
# relative-position tables are the zeros detectron2 would start from; see transfer/vit_weights.py). Run:
#   python transfer/detection/lazy_train_net.py --config-file THIS_FILE --num-gpus 8 \
#       train.init_checkpoint=/path/to/vit_base_d2.pkl train.output_dir=output/vitdet_b_slotcon
from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from transfer.vit_weights import detectron2_vit_kwargs

from .coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone.net.update(detectron2_vit_kwargs("vit_base"))

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
# A placeholder that lazy_train_net.py refuses: pass train.init_checkpoint=... (or "" to train from scratch).
train.init_checkpoint = "SET_ME__pass_train.init_checkpoint=/path/to/vit_d2.pth"
train.max_iter = 184375  # 100 epochs of COCO train2017 at 64 images per iteration

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
