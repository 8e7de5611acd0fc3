#!/usr/bin/env bash
# Fine-tune an mmsegmentation 1.x config from a converted SlotCon backbone on GPUS GPUs of this machine.
#
#   bash transfer/segmentation/dist_train.sh CONFIG PRETRAINED GPUS [key=value ...]
#
# PRETRAINED is the output of convert_pretrain_to_mm.py (a ResNet or a ViT, as CONFIG builds). Extra arguments are config overrides
# (--cfg-options), e.g. train_dataloader.batch_size=2 when training on 8 GPUs.
# Work dir: CONFIG's path with configs/ -> work_dirs/ and without .py, plus PRETRAINED's name
# (override with WORK_DIR=...). PORT: rendezvous port (default 29500); PYTHON: interpreter (default python);
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: $0 CONFIG PRETRAINED GPUS [key=value ...]" >&2
    exit 2
fi
CONFIG=$1
PRETRAINED=$2
GPUS=$3
shift 3

if [[ ! -f "$CONFIG" ]]; then
    echo "$CONFIG: no such config file" >&2
    exit 1
fi
if [[ ! -f "$PRETRAINED" ]]; then
    echo "$PRETRAINED: no such file (convert a SlotCon checkpoint with convert_pretrain_to_mm.py first)" >&2
    exit 1
fi
if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "GPUS must be a positive integer, got '$GPUS'" >&2
    exit 1
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config_stem=${CONFIG%.py}
if [[ "$config_stem" == *configs/* ]]; then
    work_base=${config_stem/configs\//work_dirs\/}
else
    work_base=work_dirs/$(basename "$config_stem")
fi
pretrained_name=$(basename "$PRETRAINED")
WORK_DIR=${WORK_DIR:-$work_base/${pretrained_name%.*}}

# The GPUs asked for must exist; otherwise say in one line what to run on this machine instead, with the
# same total batch of 16 (GPUS x train_dataloader.batch_size) that the configs' learning rates assume.
if [[ "${DRY_RUN:-0}" != 1 ]]; then
    available=$("${PYTHON:-python}" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null) || {
        echo "${PYTHON:-python} cannot import torch: install requirements.txt first" >&2; exit 1; }
    if (( available == 0 )); then
        echo "dist_train.sh: $GPUS GPUs asked for but this machine has none; to train on its CPU (one process," \
             "total batch 16) run instead: ${PYTHON:-python} $(dirname "$0")/train.py $CONFIG --pretrained $PRETRAINED" \
             "--work-dir $WORK_DIR --cfg-options train_dataloader.batch_size=16 $*" >&2
        exit 1
    fi
    if (( GPUS > available )); then
        per_gpu=$(( 16 / available ))
        echo "dist_train.sh: $GPUS GPUs asked for but this machine has $available; run instead:" \
             "bash $0 $CONFIG $PRETRAINED $available train_dataloader.batch_size=$per_gpu $*" >&2
        exit 1
    fi
fi

cmd=("${PYTHON:-python}" -m torch.distributed.run --nproc_per_node="$GPUS" --master_port="${PORT:-29500}"
     "$SCRIPT_DIR/train.py" "$CONFIG" --pretrained "$PRETRAINED" --work-dir "$WORK_DIR" --launcher pytorch)
if [[ $# -gt 0 ]]; then
    cmd+=(--cfg-options "$@")
fi

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
