# The demo's semantic set with a linear head on a SlotCon ViT-T/16 (vit_tiny): ../ade20k/linear_vit-s16_... at the
# demo's size. The final-normed last block (the trunk's dense map, 8x8 at 128 px) -> a 1x1 conv to the 11 classes,
# fine-tuned end to end with the UperNet demo's data and AdamW schedule (./upernet_vit-t16_128x128_demo.py), whole
# images at test time. Set the data, weights and length as there.
_base_ = ["./upernet_vit-t16_128x128_demo.py"]
model = dict(
    backbone=dict(out_indices=(11,)),
    neck=None,
    decode_head=dict(
        _delete_=True,
        type="FCNHead",
        in_channels=192,
        channels=192,
        num_convs=0,
        dropout_ratio=0.0,
        concat_input=False,
        num_classes=11,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=None,
)
