#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md, most important first (a device session is short); each line runs
# on its own so one failure does not hide the rest. Usage: bench/gpu_suite.sh OUT_DIR [PYTHON]
out=${1:-bench_out}; py=${2:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "cpu cores: $(nproc); commit: $(git rev-parse --short HEAD 2>/dev/null)"
bench() { $py -m bench.benchmark --device cuda --arch resnet50 --image-size 224 --dim-hidden 4096 \
  --num-prototypes 256 --output "$out/bench.jsonl" "$@" || echo "FAILED: $*"; }
bench --modes augment --batch-size 128 --steps 20 --warmup 5
bench --modes augment --batch-size 128 --steps 20 --warmup 5 --compile
bench --modes step --batch-size 128 --compile --steps 10 --warmup 5
bench --modes step --arch vit_small --optimizer adamw --dim-hidden 2048 --batch-size 128 --steps 10 --warmup 5
bench --modes e2e --batch-size 128 --compile --num-workers 15 --num-images 3840 --jpeg-dir /tmp/slotcon_jpegs
bench --modes check,step --batch-size 128 --steps 15 --warmup 5
bench --modes data,e2e --batch-size 128 --num-workers 15 --num-images 3840 --jpeg-dir /tmp/slotcon_jpegs --steps 20
bench --modes step --batch-size 128 --amp-dtype float16 --no-channels-last --steps 10 --warmup 5
bench --modes step --batch-size 64 --steps 10 --warmup 5
