# FCN on a dilated ResNet-50 (output stride 8), the model of the SlotCon / MoCo segmentation transfer protocol.
#
# The backbone is mmseg's plain `ResNet` (style 'pytorch': stride in the 3x3 conv, 7x7 stem), whose parameter
# names are torchvision's, so transfer/segmentation/convert_pretrain_to_mm.py output loads key for key.
# Its weights come ONLY from `init_cfg`: the checkpoint below is a placeholder that fails loudly
# ("... can not be found") unless overridden, e.g. by dist_train.sh / train.py --pretrained, or
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/slotcon_r50_mm.pth
# so a run can never silently start from torchvision's supervised weights or from scratch.
#
# SyncBN (trainable, norm_eval False) everywhere, as in the reference; on one CPU/GPU without a process group,
# override `norm_cfg` to BN (the tests do).
norm_cfg = dict(type="SyncBN", requires_grad=True)
pretrained_placeholder = "SET_ME__pass_--pretrained_or_model.backbone.init_cfg.checkpoint"
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,  # images are read as BGR; the backbone was pretrained on RGB
    pad_val=0,
    seg_pad_val=255,
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type="ResNet",
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
        init_cfg=dict(type="Pretrained", checkpoint=pretrained_placeholder),
    ),
    decode_head=dict(
        type="FCNHead",
        in_channels=2048,
        in_index=3,
        channels=512,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
