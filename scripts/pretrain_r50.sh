#!/usr/bin/env bash
# The SlotCon ResNet-50 hyperparameters (the reference's, total batch 512), sourced by the slotcon_*_r50_*.sh recipes;
# scripts/pretrain.sh launches them (its header lists the environment it reads).
set -euo pipefail
MODEL=(
  --arch resnet50 --dim-hidden 4096 --dim-out 256
  --teacher-momentum 0.99 --teacher-temp 0.07 --group-loss-weight 0.5
  --batch-size 512 --optimizer lars --base-lr 1.0 --weight-decay 1e-5 --warmup-epoch 5 --fp16
)
source "$(dirname "${BASH_SOURCE[0]}")/pretrain.sh"
