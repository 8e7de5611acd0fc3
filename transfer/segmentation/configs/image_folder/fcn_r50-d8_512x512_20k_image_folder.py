# Your own data (see _base_/datasets/image_folder.py): FCN R50-D8 (output stride 8, auxiliary head), 512x512 crops,
# 20k iterations of SGD lr 0.01 with poly decay for a total batch of 16 (4 GPUs x 4 images).
#   python transfer/segmentation/train.py THIS_CONFIG --pretrained slotcon_mm.pth --classes classes.txt \
#       --train-images imgs/train --train-labels labels/train --val-images imgs/val --val-labels labels/val
# (num_classes follows --classes; another depth: --depth 18.)
_base_ = [
    "../_base_/models/fcn_r50-d8.py",
    "../_base_/datasets/image_folder.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_80k_poly.py",
]
crop_size = (512, 512)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
model = dict(data_preprocessor=data_preprocessor)
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=20000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=20000, val_interval=2000)
default_hooks = dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=2000))
