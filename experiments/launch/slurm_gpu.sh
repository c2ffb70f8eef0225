#!/usr/bin/env bash
#SBATCH --job-name=grpo_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
# Multi-node GPU training under SLURM. Arguments go to `python -m grpo_jax.main` (a shared --workdir):
#
#   sbatch experiments/launch/slurm_gpu.sh --config experiments/qwen2_5_0_5b_gsm8k.py \
#       --workdir /shared/runs/gsm8k --config.model.path=/shared/Qwen2.5-0.5B-Instruct ...
#
# srun starts one task per node by default (each drives all GPUs of its node); for one task per GPU submit
# with `sbatch --ntasks-per-node=8 ...` and PROCS=per_gpu (each task then sees only GPU $SLURM_LOCALID).
# Every task runs grpo_jax.main with --coordinator=<first node>:PORT --num_processes=$SLURM_NTASKS
# --process_id=$SLURM_PROCID: plain jax.distributed. Resubmit the same job to resume from the checkpoints.
# Environment: PORT (default 12355), PYTHON (default python3), PROCS (per_node | per_gpu), HOSTS (the
# job's host names; default from scontrol), DRY_RUN=1 prints the srun command and each task's command.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ ! -f "$HERE/common.sh" ]]; then  # sbatch runs a copy of this file: submit from the repository root
  HERE="${SLURM_SUBMIT_DIR:-.}/experiments/launch"
fi
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

PORT="${PORT:-12355}"
PYTHON="${PYTHON:-python3}"
PROCS="${PROCS:-per_node}"
need SLURM_JOB_NODELIST SLURM_NTASKS
HOSTS="${HOSTS:-$(scontrol show hostnames "$SLURM_JOB_NODELIST")}"
read -r COORDINATOR _ <<< "$HOSTS"
# Each task expands its own $SLURM_PROCID and $SLURM_LOCALID: the task's command is single-quoted here and
# run by the task's shell; the arguments follow as "$@" of that shell ($0 is the coordinator address).
# shellcheck disable=SC2016
case "$PROCS" in
  per_node) GPUS='' ;;
  per_gpu) GPUS='export CUDA_VISIBLE_DEVICES="$SLURM_LOCALID"; ' ;;
  *) echo "error: PROCS must be per_node or per_gpu, got '$PROCS'" >&2; exit 2 ;;
esac
TASK="${GPUS}exec $(quote "$PYTHON") -m grpo_jax.main"
# shellcheck disable=SC2016
TASK+=' --coordinator="$0" --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID" "$@"'
run srun --kill-on-bad-exit=1 bash -c "$TASK" "$COORDINATOR:$PORT" "$@"
if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < SLURM_NTASKS; i++)); do
    echo "# task $i:"
    run "$PYTHON" -m grpo_jax.main --coordinator="$COORDINATOR:$PORT" --num_processes="$SLURM_NTASKS" \
      --process_id="$i" "$@"
  done
fi
