#!/usr/bin/env bash
# Shared launcher of the SlotCon ResNet-50 recipes (the reference's hyperparameters, total batch 512).
# Called by the slotcon_*.sh scripts with their dataset-specific flags; extra flags pass through.
# Environment: GPUS (default 8), MASTER_PORT (12348), PYTHON (python), DATA_DIR and OUTPUT_DIR (set by the callers).
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${GPUS:-8}
PYTHON=${PYTHON:-python}
if [ "$GPUS" -eq 0 ]; then
  launch=("$PYTHON" main_pretrain.py --device cpu)
else
  launch=("$PYTHON" -m torch.distributed.run --master_port "${MASTER_PORT:-12348}" --nproc_per_node="$GPUS"
          main_pretrain.py)
fi
set -x
"${launch[@]}" \
  --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR" \
  --arch resnet50 --dim-hidden 4096 --dim-out 256 \
  --teacher-momentum 0.99 --teacher-temp 0.07 --group-loss-weight 0.5 \
  --batch-size 512 --optimizer lars --base-lr 1.0 --weight-decay 1e-5 --warmup-epoch 5 --fp16 \
  --print-freq 10 --auto-resume --num-workers 8 \
  "$@"
