# ADE20K: mmseg's stock FCN R50-D8 (output stride 8, auxiliary head on stage 3), 512x512, 80k iterations.
# Train on 4 GPUs x 4 images (total batch 16; with other GPU counts keep GPUs x train_dataloader.batch_size = 16).
_base_ = [
    "../_base_/models/fcn_r50-d8.py",
    "../_base_/datasets/ade20k_512x512.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_80k_poly.py",
]
crop_size = (512, 512)
# Standard normalisation here (ImageNet mean/std on the 0-255 scale), unlike the VOC/Cityscapes configs.
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
model = dict(
    data_preprocessor=data_preprocessor, decode_head=dict(num_classes=150), auxiliary_head=dict(num_classes=150)
)
