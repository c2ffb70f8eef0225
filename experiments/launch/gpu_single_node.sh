#!/usr/bin/env bash
# One machine with several GPUs. Arguments go to `python -m grpo_jax.main`:
#
#   experiments/launch/gpu_single_node.sh --config experiments/qwen2_5_0_5b_gsm8k.py --workdir runs/gsm8k \
#       --config.model.path=/data/Qwen2.5-0.5B-Instruct \
#       --config.task.kwargs.train_path=/data/gsm8k/train.jsonl
#
# PROCS=one (default): one process drives every local GPU (plain JAX: the mesh spans jax.devices()).
# PROCS=per_gpu: one process per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES), joined by
# jax.distributed through a coordinator on 127.0.0.1:PORT: the multi-host code path on one machine.
# Environment: NUM_GPUS (default: what nvidia-smi lists), PORT (default 12355), PYTHON (default python3),
# DRY_RUN=1 prints the commands instead of running them. Run the same command again to resume.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

PROCS="${PROCS:-one}"
PYTHON="${PYTHON:-python3}"
PORT="${PORT:-12355}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  if command -v nvidia-smi > /dev/null; then
    NUM_GPUS="$(nvidia-smi -L | wc -l)"
  else
    echo "error: no nvidia-smi; set NUM_GPUS" >&2
    exit 2
  fi
fi

case "$PROCS" in
  one)
    devices="$(seq -s, 0 $((NUM_GPUS - 1)))"
    run env CUDA_VISIBLE_DEVICES="$devices" "$PYTHON" -m grpo_jax.main "$@"
    ;;
  per_gpu)
    pids=()
    for ((i = 0; i < NUM_GPUS; i++)); do
      cmd=(env CUDA_VISIBLE_DEVICES="$i" "$PYTHON" -m grpo_jax.main --coordinator="127.0.0.1:$PORT"
           --num_processes="$NUM_GPUS" --process_id="$i" "$@")
      if [[ "$DRY_RUN" == 1 ]]; then
        run "${cmd[@]}"
      else
        "${cmd[@]}" &
        pids+=("$!")
      fi
    done
    # The first process to fail stops the others (they would wait for it in a collective forever).
    for _ in "${pids[@]}"; do
      status=0
      wait -n || status=$?
      if ((status != 0)); then
        kill "${pids[@]}" 2> /dev/null || true
        wait || true
        exit "$status"
      fi
    done
    ;;
  *) echo "error: PROCS must be one or per_gpu, got '$PROCS'" >&2; exit 2 ;;
esac
