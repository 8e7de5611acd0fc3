# UperNet on a ViT-B/16, the mmseg ViT standard (mmseg 1.2.2, configs/_base_/models/upernet_vit-b16_ln_mln.py),
# with the "-ln" variant's final norm (configs/vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py):
# the outputs of blocks 3, 6, 9 and 12 (out_indices 2, 5, 8, 11; the last one final-normed) go through a
# MultiLevelNeck that rescales them x4, x2, x1, x0.5 into a 768-channel pyramid, then UPerHead (pool scales
# 1, 2, 3, 6; 512 channels) and an FCN auxiliary head (weight 0.4) on the last level.
#
# The backbone takes a ViT exported by transfer/vit_weights.py (timm_to_mmseg) key for key. Two settings differ
# from mmseg's file for that: patch_bias=True (timm's patch embedding has a bias; mmseg's default has none, and
# would leave the pretrained bias unused) and final_norm=True (the trunk's final LayerNorm, which its dense map
# includes, is then used on the last level instead of being unused). transfer/vit_weights.mmseg_backbone_config
# builds the same dict (the tests compare them).
#
# Weights come ONLY from init_cfg; the checkpoint is a placeholder that fails loudly until it is set, e.g.
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/vit_mm.pth
# pos_embed is stored for 224 px; mmseg resizes it to img_size at load (bicubic). Export with
# timm_to_mmseg(state, pos_grid=(32, 32)) to start from the positions the trunk itself uses at 512 px.
#
# SyncBN in the heads, as in mmseg; on one CPU/GPU without a process group override norm_cfg to BN.
norm_cfg = dict(type="SyncBN", requires_grad=True)
pretrained_placeholder = "SET_ME__pass_model.backbone.init_cfg.checkpoint"
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,  # images are read as BGR; the trunk was pretrained on RGB
    pad_val=0,
    seg_pad_val=255,
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type="VisionTransformer",
        img_size=(512, 512),
        patch_size=16,
        patch_bias=True,
        in_channels=3,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=(2, 5, 8, 11),
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        act_cfg=dict(type="GELU"),
        norm_eval=False,
        interpolate_mode="bicubic",
        init_cfg=dict(type="Pretrained", checkpoint=pretrained_placeholder),
    ),
    neck=dict(type="MultiLevelNeck", in_channels=[768, 768, 768, 768], out_channels=768, scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type="UPerHead",
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=768,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
