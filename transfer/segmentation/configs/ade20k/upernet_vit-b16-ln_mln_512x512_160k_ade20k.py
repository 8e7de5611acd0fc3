# ADE20K: UperNet on a SlotCon ViT-B/16 (vit_base), 512x512 crops, 160k iterations: the mmseg ViT standard
# (mmseg 1.2.2, configs/vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py), see the two _base_ files.
# Train on 8 GPUs x 2 images (total batch 16; with other GPU counts keep GPUs x train_dataloader.batch_size = 16)
# with this folder's launcher, as the ResNet configs (weights: convert_pretrain_to_mm.py or
# python -m transfer.export CKPT --to mmseg OUT, which give mmseg's ViT names):
#   bash transfer/segmentation/dist_train.sh transfer/segmentation/configs/ade20k/THIS.py vit_base_mm.pth 8
_base_ = [
    "../_base_/models/upernet_vit-b16_ln_mln.py",
    "../_base_/datasets/ade20k_512x512.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_160k_adamw_vit.py",
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
