#!/usr/bin/env bash
# SlotCon ViT-S/16 on COCO train2017, 800 epochs (as the R50 recipe), 256 prototypes, total batch 512 (8 GPUs x 64).
# Override: DATA_DIR, OUTPUT_DIR, GPUS (the total batch stays 512; GPUS=0 runs on the CPU); flags given to this
# script come last, so they override the recipe's (see pretrain_vit.sh for the hyperparameters and their sources).
set -euo pipefail
DATA_DIR=${DATA_DIR:-./datasets/coco/}
OUTPUT_DIR=${OUTPUT_DIR:-./output/slotcon_coco_vits16_800ep}
RECIPE=(--dataset COCO --num-prototypes 256 --epochs 800 --save-freq 50)
source "$(dirname "$0")/pretrain_vit.sh"
