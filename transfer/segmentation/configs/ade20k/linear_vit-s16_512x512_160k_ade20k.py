# ADE20K: a linear head on a SlotCon ViT-S/16 (vit_small), fine-tuned end to end, 512x512 crops, 160k iterations:
# Segmenter's linear decoder as mmseg 1.2.2 configures it (configs/segmenter/segmenter_vit-s_fcn_8xb1-160k_ade20k-
# 512x512.py on segmenter_vit-s_mask_... and _base_/models/segmenter_vit-b16_mask.py): the final-normed last block
# (exactly the trunk's dense map) -> dropout-free 1x1 conv to the 150 classes (FCNHead with no conv), bilinear
# upsampling; backbone drop path 0.1; SGD lr 0.001, momentum 0.9, no weight decay, poly (power 0.9) to 1e-4 over
# 160k; 8 GPUs x 1 image; sliding 512 windows with stride 480 at test time.
# One change: ImageNet mean/std normalisation (what SlotCon pretrains with) instead of Segmenter's 127.5/127.5.
_base_ = [
    "../_base_/models/upernet_vit-b16_ln_mln.py",
    "../_base_/datasets/ade20k_512x512.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_80k_poly.py",
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(embed_dims=384, num_heads=6, out_indices=(11,)),
    neck=None,
    decode_head=dict(
        _delete_=True,
        type="FCNHead",
        in_channels=384,
        channels=384,
        num_convs=0,
        dropout_ratio=0.0,
        concat_input=False,
        num_classes=150,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=None,
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(480, 480)),
)
optimizer = dict(type="SGD", lr=0.001, momentum=0.9, weight_decay=0.0)
optim_wrapper = dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=160000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
default_hooks = dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000))
train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
