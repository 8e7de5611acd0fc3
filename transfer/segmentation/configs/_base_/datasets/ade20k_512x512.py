# ADE20K (ADEChallengeData2016: 20,210 train / 2,000 val, 150 classes), mmseg's stock 512x512 pipeline:
# crop with cat_max_ratio 0.75 and PhotoMetricDistortion. Label 0 ("other") is dropped (reduce_zero_label).
# Layout (data_root: relative to the working directory, or env ADE20K_ROOT):
#   images/{training,validation}/*.jpg, annotations/{training,validation}/*.png
dataset_type = "ADE20KDataset"
data_root = "{{$ADE20K_ROOT:data/ade/ADEChallengeData2016}}"  # env ADE20K_ROOT overrides
crop_size = (512, 512)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),  # after Resize: scored at full size
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=4,  # per GPU: 4 GPUs x 4 images = 16
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
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
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
