# ADE20K: UperNet on a SlotCon ViT-S/16 (vit_small), 512x512 crops, 160k iterations. As the ViT-B/16 config with
# mmseg's ViT-S/16 sizes (mmseg 1.2.2, configs/vit/vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py:
# 384 channels and 6 heads in the backbone, a 384-channel neck and heads reading 384; drop path 0.1, final norm).
_base_ = "./upernet_vit-b16-ln_mln_512x512_160k_ade20k.py"
model = dict(
    backbone=dict(embed_dims=384, num_heads=6),
    neck=dict(in_channels=[384, 384, 384, 384], out_channels=384),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384),
)
