# Cityscapes fine (2,975 train / 500 val), 769x769 crops, as in the reference's "_moco" Cityscapes config.
# Layout (data_root: relative to the working directory, or env CITYSCAPES_ROOT):
#   leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and gtFine/{train,val}/<city>/
#   *_gtFine_labelTrainIds.png (made by mmseg's tools/dataset_converters/cityscapes.py).
# No photometric distortion and no cat_max_ratio in the crop (the reference's choices). Normalisation and
# padding to 769 happen in the model's data_preprocessor (see the top-level config).
dataset_type = "CityscapesDataset"
data_root = "{{$CITYSCAPES_ROOT:data/cityscapes}}"  # env CITYSCAPES_ROOT overrides
crop_size = (769, 769)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2049, 1025), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2049, 1025), keep_ratio=True),
    dict(type="LoadAnnotations"),  # after Resize: the metric compares with the full-size label map
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,  # per GPU: the reference trains on 2 GPUs x 8 images = 16
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
