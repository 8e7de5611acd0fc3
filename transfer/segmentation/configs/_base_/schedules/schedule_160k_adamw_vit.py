# The ViT UperNet schedule of mmseg 1.2.2 (configs/vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py on
# configs/_base_/schedules/schedule_160k.py): AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, none on
# pos_embed and cls_token; linear warmup from 1e-6 x lr over 1,500 iterations, then linear decay (poly, power 1)
# to 0 at 160k; checkpoint and mIoU every 16k. For a total batch of 16 (8 GPUs x 2 images). No layer-wise lr decay
# (mmseg uses one for BEiT/MAE backbones, not for these ViT configs).
#
# mmseg's file also lists custom key 'norm' (decay_mult 0) for the LayerNorms, but its ViT names them ln1/ln2, so the
# key matches no parameter and the LayerNorms are decayed in its published runs; we keep the key as it is, so the
# schedule is theirs. (norm_decay_mult=0.0 in paramwise_cfg would exempt them.)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={"pos_embed": dict(decay_mult=0.0), "cls_token": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}
    ),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
