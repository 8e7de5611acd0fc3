#!/usr/bin/env bash
# The demo (`make demo`): pretrain SlotCon on the CPU on scenes built from the vendored Fashion-MNIST photos,
# then compare the trained network with a random one and draw what the prototypes learned.
# Environment: PYTHON, DEMO_DATA (demo_data), DEMO_OUT (output/demo), DEMO_EPOCHS (8).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA=${DEMO_DATA:-demo_data}
OUT=${DEMO_OUT:-output/demo}
EPOCHS=${DEMO_EPOCHS:-8}
start=$(date +%s)
export PYTHONWARNINGS=ignore

echo "== 1/4 demo scenes (Fashion-MNIST items on 128 px canvases) -> $DATA"
$PYTHON -m data.demo_scenes --out-dir "$DATA"

echo "== 2/4 pretraining on the CPU, $EPOCHS epochs -> $OUT"
if [ -f "$OUT/current.pth" ]; then echo "(found $OUT/current.pth: resuming; delete $OUT to start over)"; fi
# Small-compute settings: ResNet-18, 96 px crops (3x3 feature maps), 32 prototypes; LARS at lr 1.0 as the
# reference's 2.0, a faster teacher (0.98) for a run of a few hundred steps, and a sharper teacher (0.03, the
# reference's is 0.07): at this scale a pixel's scores to the prototypes differ little, and at 0.07 the teacher's
# targets stay nearly uniform, so the grouping loss would teach almost nothing (README, Results).
$PYTHON main_pretrain.py --dataset demo --data-dir "$DATA" --output-dir "$OUT" --auto-resume \
  --device cpu --no-fp16 --arch resnet18 --image-size 96 --min-scale 0.2 \
  --dim-hidden 512 --dim-out 128 --num-prototypes 32 --teacher-momentum 0.98 --teacher-temp 0.03 \
  --batch-size 32 --optimizer lars --base-lr 8.0 --warmup-epoch 1 --epochs "$EPOCHS" \
  --num-workers 2 --print-freq 31 --save-every-minutes 2

echo "== 3/4 evaluation on held-out scenes: random init vs trained (numbers in %)"
$PYTHON -m eval.report --checkpoints random "$OUT/current.pth" --dataset demo --data-dir "$DATA" \
  --device cpu --output-json "$OUT/eval.json"

echo "== 4/4 pictures"
$PYTHON viz_slots.py --model-path "$OUT/current.pth" --dataset demo --data-dir "$DATA" --image-size 128 \
  --device cpu --topk 5 --save-path "$OUT/prototypes.png"
$PYTHON viz_slots.py --model-path "$OUT/current.pth" --dataset demo --data-dir "$DATA" --image-size 128 \
  --device cpu --mode assign --num-images 6 --save-path "$OUT/assignments.png"

cat <<DONE

Done in $(( $(date +%s) - start )) s. Everything is under $OUT/:
  current.pth, ckpt_epoch_$EPOCHS.pth   checkpoints
  log.txt, metrics.jsonl              training log
  tensorboard/                        tensorboard --logdir $OUT/tensorboard
  eval.json                           all evaluation numbers (table above)
  prototypes.png, assignments.png     what the prototypes learned
DONE
