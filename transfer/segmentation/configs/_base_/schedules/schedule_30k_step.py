# PASCAL VOC 2012 aug schedule of the reference: SGD lr 0.003 (total batch 16), wd 1e-4,
# lr x0.1 at 21k and 27k iterations (no warmup), 30k iterations, checkpoint + mIoU every 3k.
optimizer = dict(type="SGD", lr=0.003, momentum=0.9, weight_decay=0.0001)
optim_wrapper = dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type="MultiStepLR", milestones=[21000, 27000], gamma=0.1, begin=0, end=30000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=30000, val_interval=3000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3000),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
