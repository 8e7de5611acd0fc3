# Your own data: a folder of images and a folder of label PNGs with the same names (pixel value = class index,
# 255 = ignored), and a class list. train.py fills it in from the command line:
#   --train-images DIR --train-labels DIR [--train-list FILE] --val-images DIR --val-labels DIR [--val-list FILE]
#   --classes FILE|a,b,c
# (a list file names one image per line, without suffix; without one, every image of the folder is used).
# mmseg's generic BaseSegDataset; stock 512x512 crops with random rescaling and flips, no photometric changes.
dataset_type = "BaseSegDataset"
crop_size = (512, 512)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),  # after Resize: scored at full size
    dict(type="PackSegInputs"),
]
# data_prefix, ann_file, img_suffix and metainfo.classes are set by train.py.
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root="",
        data_prefix=dict(img_path=None, seg_map_path=None),
        img_suffix=".jpg",
        seg_map_suffix=".png",
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
        data_root="",
        data_prefix=dict(img_path=None, seg_map_path=None),
        img_suffix=".jpg",
        seg_map_suffix=".png",
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
