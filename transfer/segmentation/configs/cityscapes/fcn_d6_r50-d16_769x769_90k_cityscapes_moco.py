# Cityscapes: FCN, ResNet-50 at output stride 16, 3x3 convs with dilation 6, 769x769, 90k iterations,
# sliding-window test (769 crops, stride 513).
# Train on 2 GPUs x 8 images (total batch 16; with other GPU counts keep GPUs x train_dataloader.batch_size = 16).
_base_ = [
    "../_base_/models/fcn_r50-d8.py",
    "../_base_/datasets/cityscapes_769x769.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_90k_step.py",
]
crop_size = (769, 769)
# Normalisation quirk kept from the reference ("_moco" configs, mmseg 0.x img_norm_cfg): the ImageNet
# mean/std *of 0-1 images* applied to 0-255 pixels, i.e. x -> (x - 0.45) / 0.23, about x * 4.4 with almost
# no mean removal. The trainable BN layers absorb most of it; keep it to reproduce the reported mIoU.
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)  # pads every training image to 769x769 (ignored label 255 in the padding)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1)),
    decode_head=dict(channels=256, concat_input=False, dropout_ratio=0, dilation=6, num_classes=19, align_corners=True),
    auxiliary_head=None,
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(513, 513)),
)
