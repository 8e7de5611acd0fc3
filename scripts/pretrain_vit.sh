#!/usr/bin/env bash
# SlotCon on a ViT-S/16 (vit_small): the hyperparameters of the ViT self-supervised recipes, sourced by the
# slotcon_*_vits16_*.sh recipes; scripts/pretrain.sh launches them (its header lists the environment it reads).
# Where each value comes from (DINO: Caron et al. 2021, its ViT-S/16 recipe; SlotMIM: Wen et al., CVPR 2025, its
# ViT-B/16 scripts; SlotCon: the ResNet-50 recipe of pretrain_r50.sh):
#   --optimizer adamw, --base-lr 5e-4 per 256 images          DINO (lr = 5e-4 x batch / 256)
#   --warmup-epoch 10                                          DINO (SlotMIM: 5-10)
#   --weight-decay 0.04 --weight-decay-end 0.4 (cosine)        DINO and SlotMIM; none on norms and biases
#   --clip-grad 3.0                                            DINO ViT-S (SlotMIM's ViT-B: 0.3); here the global norm
#   --drop-path 0.1                                            DINO and SlotMIM (student only)
#   --teacher-momentum 0.996                                   DINO and SlotMIM
#   --head-norm none (the default for ViTs)                    DINO and SlotMIM: heads without BatchNorm
#   --dim-hidden 2048 --dim-out 256                            SlotMIM (SlotCon R50: 4096 / 256)
#   --teacher-temp 0.07 --group-loss-weight 0.5                SlotCon (SlotMIM ends its teacher-temperature warm-up at 0.07)
#   --batch-size 512 --fp16                                    SlotCon's total batch (8 GPUs x 64), bfloat16 autocast
# Not taken: DINO's multi-crop and teacher-temperature warm-up, SlotMIM's masked-image objective (another method).
set -euo pipefail
MODEL=(
  --arch vit_small --dim-hidden 2048 --dim-out 256
  --teacher-momentum 0.996 --teacher-temp 0.07 --group-loss-weight 0.5 --drop-path 0.1
  --batch-size 512 --optimizer adamw --base-lr 0.0005 --weight-decay 0.04 --weight-decay-end 0.4
  --clip-grad 3.0 --warmup-epoch 10 --fp16
)
source "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh"
