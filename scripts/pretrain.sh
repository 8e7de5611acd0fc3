#!/usr/bin/env bash
# The launcher every recipe shares, sourced (through pretrain_r50.sh or pretrain_vit.sh, which set MODEL: the
# backbone's hyperparameters) by the slotcon_*.sh scripts after they set RECIPE (their dataset-specific flags); the
# caller's own flags come last, so they override. Environment:
#   GPUS         processes per node, one per GPU (default 8); 0 trains on the CPU in one process
#   DEVICE=cpu   run the GPUS processes on the CPU (gloo): a multi-process check on a machine without GPUs
#   DATA_DIR, OUTPUT_DIR (set by the recipes), MASTER_PORT (12348), PYTHON (python, else python3)
#   NNODES, RDZV_ENDPOINT, RDZV_ID: several nodes, c10d rendezvous (set by scripts/slurm_pretrain.sh)
set -euo pipefail
if [ -z "${RECIPE+set}" ] || [ -z "${MODEL+set}" ]; then
  echo "$0: run one of the recipes (scripts/slotcon_*.sh), which source this file" >&2
  exit 1
fi
command_line=$(printf '%q ' "$0" "$@")  # what the caller typed, for the messages below
command_line=${command_line% }
cd "$(dirname "$0")/.."
GPUS=${GPUS:-8}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

case " $* " in
  *" --data-dir"*) ;;  # the caller names the data on the command line
  *) if [ ! -d "$DATA_DIR" ]; then
       echo "$0: no data at $DATA_DIR (link the dataset there, e.g. ln -s /path/to/the/dataset ${DATA_DIR%/}," \
            "or set DATA_DIR)" >&2
       exit 1
     fi ;;
esac

device_flags=()
if [ "$GPUS" -eq 0 ] || [ "$DEVICE" = cpu ]; then
  device_flags=(--device cpu)
else
  found=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
  if [ "$found" -lt "$GPUS" ]; then
    if [ "$found" -eq 0 ]; then
      echo "$0 trains on $GPUS GPUs (GPUS=$GPUS) and this machine has none: run GPUS=0 $command_line to train on" \
           "the CPU (add e.g. --arch resnet18 --batch-size 32 --image-size 96 for a first try)" >&2
    else
      echo "$0 trains on $GPUS GPUs (GPUS=$GPUS) and this machine has $found: run GPUS=$found $command_line" \
           "(the total batch stays 512 unless you pass --batch-size)" >&2
    fi
    exit 1
  fi
fi

if [ "$GPUS" -eq 0 ]; then
  launch=("$PYTHON" main_pretrain.py)
else  # scripts/torchrun.py: torchrun that passes on SIGUSR1 and the workers' exit code 75 (requeue me)
  launch=("$PYTHON" scripts/torchrun.py --nproc_per_node="$GPUS")
  if [ -n "${RDZV_ENDPOINT:-}" ]; then
    launch+=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$RDZV_ID")
  else
    launch+=(--master_port "${MASTER_PORT:-12348}")
  fi
  launch+=(main_pretrain.py)
fi
set -x
# exec: no shell stays between the job and the training processes (a job's SIGUSR1 would kill a waiting shell)
exec "${launch[@]}" "${device_flags[@]}" \
  --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR" \
  "${MODEL[@]}" --print-freq 10 --auto-resume --num-workers 8 \
  "${RECIPE[@]}" "$@"
