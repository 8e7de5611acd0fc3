# PASCAL VOC 2012 + SBD "aug" (10,582 training images), 513x513 crops, as in the reference's "_moco" VOC config.
# Layout (data_root: relative to the working directory, or env VOC_ROOT):
#   JPEGImages/, SegmentationClass/, SegmentationClassAug/,
#   ImageSets/Segmentation/{train,aug,val}.txt  (aug.txt: see mmseg's docs, tools/dataset_converters/voc_aug.py)
# No photometric distortion and no cat_max_ratio in the crop (the reference's choices). Normalisation and
# padding to 513 happen in the model's data_preprocessor (see the top-level config).
dataset_type = "PascalVOCDataset"
data_root = "{{$VOC_ROOT:data/VOCdevkit/VOC2012}}"  # env VOC_ROOT overrides
crop_size = (513, 513)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2049, 513), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2049, 513), keep_ratio=True),
    dict(type="LoadAnnotations"),  # after Resize: the metric compares with the full-size label map
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=8,  # per GPU: the reference trains on 2 GPUs x 8 images = 16
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="ConcatDataset",
        datasets=[
            dict(
                type=dataset_type,
                data_root=data_root,
                data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                ann_file="ImageSets/Segmentation/train.txt",
                pipeline=train_pipeline,
            ),
            dict(
                type=dataset_type,
                data_root=data_root,
                data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
                ann_file="ImageSets/Segmentation/aug.txt",
                pipeline=train_pipeline,
            ),
        ],
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
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/val.txt",
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
