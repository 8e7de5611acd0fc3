#!/usr/bin/env bash
# SlotCon ViT-S/16 on ImageNet-1k train, 100 epochs (DINO's shortest ViT-S/16 schedule), 2048 prototypes (as the R50
# ImageNet recipe), total batch 512 (8 GPUs x 64). Override: DATA_DIR, OUTPUT_DIR, GPUS (the total batch stays 512;
# GPUS=0 runs on the CPU); flags given to this script come last, so they override the recipe's (see pretrain_vit.sh).
set -euo pipefail
DATA_DIR=${DATA_DIR:-./datasets/imagenet/}
OUTPUT_DIR=${OUTPUT_DIR:-./output/slotcon_imagenet_vits16_100ep}
RECIPE=(--dataset ImageNet --num-prototypes 2048 --epochs 100 --save-freq 5)
source "$(dirname "$0")/pretrain_vit.sh"
