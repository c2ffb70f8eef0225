#!/usr/bin/env bash
# Cloud TPU VM: create a slice, install grpo_jax on every worker, run one experiment on all of them.
#
#   TPU_NAME=grpo ZONE=us-central2-b ACCELERATOR=v4-8 WORKDIR=/mnt/gcs/my-bucket/runs/gsm8k \
#   SETUP_CMD='gsutil -m cp -r gs://my-bucket/models/Qwen2.5-0.5B-Instruct gs://my-bucket/gsm8k ~/' \
#     experiments/launch/tpu_vm.sh all \
#       --config.model.path=/home/$USER/Qwen2.5-0.5B-Instruct \
#       --config.task.kwargs.train_path=/home/$USER/gsm8k/train.jsonl \
#       --config.task.kwargs.eval_path=/home/$USER/gsm8k/test.jsonl
#
# STEP (first argument, default all): create | install | run | all (the three) | delete. Arguments after it
# are passed to `python -m grpo_jax.main`.
# Every worker runs the same command with --tpu_auto: jax.distributed discovers the slice itself (no
# coordinator flags), each process feeds its own chips, and every process takes part in the Orbax
# checkpoints under WORKDIR, which all workers must share: a bucket mounted at the same path on every worker
# (gcsfuse, e.g. in SETUP_CMD) or another shared filesystem. A gs:// URL is refused (here and by
# grpo_jax.main) until the loop, checkpointer, lock and metrics writer write through a remote-path API.
# Run the same `run` step again to resume.
#
# Environment: TPU_NAME, ZONE, WORKDIR (required); ACCELERATOR (v4-8, v5e-16 = v5litepod-16, v5p-32, ...;
# default v4-8); RUNTIME_VERSION (default: the TPU VM base image of the accelerator's generation);
# PROJECT (gcloud --project); SPOT=1 (a spot slice); CONFIG (default experiments/qwen2_5_0_5b_gsm8k.py);
# SETUP_CMD (run on every worker after the install: fetch the model and data that the config's paths
# name — the paths must exist on every worker); DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$HERE/common.sh"

STEP="${1:-all}"
shift || true
ACCELERATOR="${ACCELERATOR:-v4-8}"
ACCELERATOR="${ACCELERATOR/#v5e-/v5litepod-}"  # gcloud's name of v5e slices
case "$ACCELERATOR" in
  v4-*) DEFAULT_VERSION=tpu-ubuntu2204-base ;;
  v5litepod-*) DEFAULT_VERSION=v2-alpha-tpuv5-lite ;;
  v5p-*) DEFAULT_VERSION=v2-alpha-tpuv5 ;;
  v6e-*) DEFAULT_VERSION=v2-alpha-tpuv6e ;;
  *) DEFAULT_VERSION="" ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$DEFAULT_VERSION}"
CONFIG="${CONFIG:-experiments/qwen2_5_0_5b_gsm8k.py}"
need TPU_NAME ZONE
if [[ -z "$RUNTIME_VERSION" ]]; then
  echo "error: no default runtime for ACCELERATOR=$ACCELERATOR; set RUNTIME_VERSION" >&2
  exit 2
fi
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  WHERE+=(--project="$PROJECT")
fi
TARBALL="${TMPDIR:-/tmp}/grpo_jax_src.tar.gz"

create() {
  local extra=()
  if [[ "${SPOT:-0}" == 1 ]]; then
    extra+=(--spot)
  fi
  run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME_VERSION" "${extra[@]}"
}

install() {
  # The working tree as it is (not a git ref), without virtual environments and caches.
  run tar -czf "$TARBALL" -C "$ROOT" --exclude=.git --exclude=.venv --exclude=__pycache__ .
  run "${GCLOUD[@]}" scp "$TARBALL" "$TPU_NAME:grpo_jax_src.tar.gz" "${WHERE[@]}" --worker=all
  local remote="mkdir -p ~/grpo_jax && tar -xzf ~/grpo_jax_src.tar.gz -C ~/grpo_jax"
  remote+=" && python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ~/grpo_jax"
  if [[ -n "${SETUP_CMD:-}" ]]; then
    remote+=" && $SETUP_CMD"
  fi
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$remote"
}

train() {
  need WORKDIR
  if [[ "$WORKDIR" == *://* ]]; then
    echo "error: WORKDIR=$WORKDIR is a URL; mount the bucket on every worker (gcsfuse) and pass the mount path" >&2
    exit 2
  fi
  local cmd
  cmd="cd ~/grpo_jax && $(quote python3 -m grpo_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
    --tpu_auto "$@")"
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$cmd"
}

case "$STEP" in
  create) create ;;
  install) install ;;
  run) train "$@" ;;
  all) create && install && train "$@" ;;
  delete) run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet ;;
  *) echo "error: unknown step '$STEP' (create | install | run | all | delete)" >&2; exit 2 ;;
esac
