# The demo's semantic set (python -m transfer.demo_sets): UperNet on a SlotCon ViT-T/16 (vit_tiny), scenes scaled to
# 128 px (an 8x8 patch grid, the ResNet-18 demo's output stride 16), small enough to train on a CPU. The ViT UperNet
# of ../ade20k/ with the neck and heads cut to 64 channels (auxiliary head 32), BN (one process), 11 classes
# (background + the 10 demo classes), and a short AdamW schedule: lr 1e-4 (not tuned), 50 warmup iterations, then
# linear decay to 0. Train it with this folder's train.py, as the ResNet demo:
#   python transfer/segmentation/convert_pretrain_to_mm.py output/demo_vit/current.pth vit_tiny_mm.pth
#   python transfer/segmentation/train.py transfer/segmentation/configs/demo/upernet_vit-t16_128x128_demo.py \
#       --pretrained vit_tiny_mm.pth --classes ... --train-images ... --train-labels ... --val-images ... \
#       --val-labels ... --cfg-options train_cfg.max_iters=250 param_scheduler.1.end=250
# A vit_tiny_p8 trunk (patch 8, a 16x16 grid): model.backbone.patch_size=8.
_base_ = [
    "../_base_/models/upernet_vit-b16_ln_mln.py",
    "../_base_/datasets/image_folder.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_160k_adamw_vit.py",
]
crop_size = (128, 128)
norm_cfg = dict(type="BN", requires_grad=True)
num_classes = 11
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=crop_size, embed_dims=192, num_heads=3),
    neck=dict(in_channels=[192, 192, 192, 192], out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=32, num_classes=num_classes, norm_cfg=norm_cfg),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(128, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(128, 128), keep_ratio=True),  # the training scale, whatever the scenes' size
    dict(type="LoadAnnotations"),  # after Resize: scored at the scenes' own size
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=8, num_workers=1, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=50, end=1000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=1000, val_interval=1000)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=1000),
)
