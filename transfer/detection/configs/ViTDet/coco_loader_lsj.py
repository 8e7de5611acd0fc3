# COCO with large-scale jitter at 1024 px, the data of detectron2's ViTDet COCO configs
# (projects/ViTDet/configs/common/coco_loader_lsj.py, detectron2 commit 02b5c4e): flip, rescale by 0.1-2.0 of
# 1024 x 1024, crop 1024 x 1024 (no padding: SimpleFeaturePyramid's square_pad pads the batch), RGB, 64 images per
# iteration in total, boxes recomputed from the masks after cropping; testing at short side 1024, long side <= 1024.
# On detectron2's common/data/coco.py (coco_2017_train / coco_2017_val, COCOEvaluator). Cropping polygon masks needs
# shapely (pip install shapely; an optional detectron2 dependency), which lazy_train_net.py checks for.
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=_size, target_width=_size),
    L(T.FixedSizeCrop)(crop_size=(_size, _size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=_size, max_size=_size)]
# Box and mask AP even for a model that predicts nothing yet (detectron2 then reports NaN), as train_net.py does.
dataloader.evaluator.tasks = ("bbox", "segm")
