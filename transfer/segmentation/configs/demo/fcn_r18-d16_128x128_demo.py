# The demo's semantic set (python -m transfer.demo_sets): FCN on a ResNet-18 at output stride 16 (BasicBlock channels:
# the heads read 512 and 256; narrower heads), scenes scaled to 128 px, BN (one process), SGD lr 0.01, poly decay.
# transfer/demo_table.py sets the data, the classes and the number of iterations from the command line.
_base_ = ["../image_folder/fcn_r50-d8_512x512_20k_image_folder.py"]
crop_size = (128, 128)
norm_cfg = dict(type="BN", requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # output stride 16 (the paper's VOC/Cityscapes layout): an 8x8 map of a 128 px scene, a quarter of the
    # compute of output stride 8
    backbone=dict(depth=18, dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1), norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, norm_cfg=norm_cfg),
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
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=1000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=1000, val_interval=1000)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=1000),
)
