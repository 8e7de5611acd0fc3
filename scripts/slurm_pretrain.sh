#!/usr/bin/env bash
# SlotCon pretraining as a SLURM batch job: one torchrun per node (c10d rendezvous on the allocation's first node),
# one process per GPU, requeued from its last checkpoint until all epochs are done. Submit from the repository root:
#
#   sbatch scripts/slurm_pretrain.sh scripts/slotcon_coco_r50_800ep.sh [main_pretrain.py flags]
#   sbatch --nodes=4 --time=12:00:00 --partition=gpu scripts/slurm_pretrain.sh scripts/slotcon_imagenet_r50_100ep.sh
#
# Options given to sbatch override the #SBATCH lines below. The recipe's total batch (512) is split over all GPUs of
# all nodes; pass --batch-size to change it (the learning rate follows: --base-lr x batch / 256).
#
# Before the time limit SLURM sends SIGUSR1 to every process of the training step: each finishes its step, rank 0
# saves current.pth, and they exit with 75 (scripts/torchrun.py passes that code on). On 75 this script requeues
# the job, and the next one resumes (--auto-resume, set by the recipes) at the same iteration, from current.pth even
# when the recipe is also given --resume FILE (the newer of the two wins). A signal that arrives while the processes
# still import torch is kept, so it too ends in 75. Any other failure is not requeued: a bug or a full disk (exit 74,
# also for a log, metrics.jsonl or TensorBoard that cannot be written) would only fail again.
#
#SBATCH --job-name=slotcon
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the GPU processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # 8 data loading processes per GPU (the recipes' --num-workers 8)
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300            # SIGUSR1 5 minutes before the limit: time to finish a step and save
#SBATCH --requeue                    # allow `scontrol requeue` (and requeues after a node failure)
#SBATCH --open-mode=append           # a requeued job appends to its log instead of truncating it
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"  # sbatch runs a copy of this script from its spool folder: work where it was submitted

EXIT_PREEMPTED=75  # main_pretrain.py: stopped on a preemption signal (SIGUSR1, SIGTERM, Ctrl-C) after saving current.pth
if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: sbatch scripts/slurm_pretrain.sh RECIPE [flags], RECIPE one of scripts/slotcon_*.sh" \
       "(submit from the repository root)" >&2
  exit 1
fi
recipe=$1
shift

first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export NNODES=$SLURM_JOB_NUM_NODES
export RDZV_ENDPOINT=$first_node:${RDZV_PORT:-$((29500 + SLURM_JOB_ID % 1000))}  # jobs sharing a node differ
export RDZV_ID=$SLURM_JOB_ID
export GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-8}}
echo "job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)): $NNODES node(s) x $GPUS GPUs, rendezvous at" \
     "$RDZV_ENDPOINT: $recipe $*"

# --kill-on-bad-exit=0: a node whose processes exit 75 first must not have the others killed while rank 0 saves.
# --cpus-per-task again: since SLURM 22.05 a step does not inherit it from the job.
srun_flags=(--kill-on-bad-exit=0)
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then srun_flags+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
status=0
srun "${srun_flags[@]}" "$recipe" "$@" || status=$?

if [ "$status" -eq "$EXIT_PREEMPTED" ]; then
  echo "job $SLURM_JOB_ID stopped before its time limit with current.pth saved: requeueing it"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"
