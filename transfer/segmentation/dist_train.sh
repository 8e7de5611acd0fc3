#!/usr/bin/env bash
# Fine-tune an mmsegmentation 1.x config from a converted SlotCon backbone on GPUS GPUs of this machine.
#
#   bash transfer/segmentation/dist_train.sh CONFIG PRETRAINED GPUS [key=value ...]
#
# PRETRAINED is the output of convert_pretrain_to_mm.py. Extra arguments are config overrides
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
