#!/usr/bin/env bash
# The peer benchmark: one GRPO workload with grpo_jax, Tunix and TRL on this CPU, each in its own venv and
# process, interleaved and repeated; then the table (results.md) and the plot (docs/benchmarks_peers.png).
#
#   bash benchmarks/peers/run.sh                 # 3 rounds of the four runners, 9 steps each
#   REPEATS=5 STEPS=12 bash benchmarks/peers/run.sh
#
# Environment: PEER_VENVS (venv folder, default /tmp/grpo_jax_peer_venvs), PEER_DATA (checkpoint and
# prompts, default /tmp/grpo_jax_peer_data), PEER_OUT (results, default benchmarks/peers/results),
# GRPO_JAX_PYTHON (use this interpreter for grpo_jax instead of creating a venv), IMPLS (runners to run),
# BEFORE_REPO (a checkout of an older commit: the runner "grpo_jax-before" runs its bench_grpo_jax.py with
# its grpo_jax, for before/after comparisons in the same rounds).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/benchmarks/peers"
VENVS="${PEER_VENVS:-/tmp/grpo_jax_peer_venvs}"
DATA="${PEER_DATA:-/tmp/grpo_jax_peer_data}"
OUT="${PEER_OUT:-$HERE/results}"
REPEATS="${REPEATS:-3}"
STEPS="${STEPS:-9}"
IMPLS="${IMPLS:-grpo_jax grpo_jax-warm-cache grpo_jax-bf16 grpo_jax-off-policy tunix trl trl-no-gc}"
TUNIX_VERSION="0.1.7"
TRL_VERSION="1.16.0"
TORCH_VERSION="2.13.0"  # the local wheel; any other version downloads GBs

make_venv() {  # name, pip arguments...
  local name="$1"; shift
  if [[ ! -x "$VENVS/$name/bin/python" ]] || [[ ! -f "$VENVS/$name/.complete" ]]; then
    echo "== creating venv $VENVS/$name: pip install $*"
    rm -rf "$VENVS/$name"
    python3 -m venv "$VENVS/$name"
    "$VENVS/$name/bin/pip" install -q "$@"
    touch "$VENVS/$name/.complete"
  fi
}

mkdir -p "$VENVS" "$OUT"
if [[ -n "${GRPO_JAX_PYTHON:-}" ]]; then
  PY_GRPO="$GRPO_JAX_PYTHON"
else
  make_venv grpo_jax -e "$REPO"  # the user install: no torch (transformers would import it, +200 MiB RSS)
  PY_GRPO="$VENVS/grpo_jax/bin/python"
fi
make_venv tunix "google-tunix==$TUNIX_VERSION"
make_venv trl "trl==$TRL_VERSION" "torch==$TORCH_VERSION"
PY_TUNIX="$VENVS/tunix/bin/python"
PY_TRL="$VENVS/trl/bin/python"

# transformers + torch make the checkpoint (the TRL venv has both; grpo_jax's tokenizer code comes from the repo).
[[ -f "$DATA/prompts.jsonl" ]] || "$PY_TRL" "$HERE/make_checkpoint.py" "$DATA"

RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
LOGS="$OUT/logs"
mkdir -p "$LOGS"

record() {  # tag, round, command... : runs it and appends its RESULT line (with tag and round) to results
  local tag="$1" round="$2"; shift 2
  local log="$LOGS/${tag}_round${round}.log"
  echo "== round $round: $tag"
  local load_start load_end
  load_start="$(cut -d' ' -f1 /proc/loadavg)"
  if ! "$@" > "$log" 2>&1; then
    echo "   FAILED (see $log):"; tail -n 5 "$log" | sed 's/^/   /'
    echo "{\"impl\": \"$tag\", \"round\": $round, \"error\": $(tail -n 1 "$log" | "$PY_GRPO" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')}" >> "$RESULTS"
    return 0
  fi
  load_end="$(cut -d' ' -f1 /proc/loadavg)"
  grep '^RESULT ' "$log" | tail -n 1 | sed 's/^RESULT //' \
    | "$PY_GRPO" -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(tag='$tag', round=$round, load=[$load_start, $load_end]); print(json.dumps(r))" \
    >> "$RESULTS"
  tail -n 1 "$RESULTS" | "$PY_GRPO" -c "
import json, sys
r = json.loads(sys.stdin.read())
if 'peak_gflops' in r:
    print('   %.1f GFLOP/s' % r['peak_gflops'])
else:
    print('   median step %.3f s, first step %.2f s, peak RSS %.0f MiB'
          % (r['median_step_s'], r['first_step_s'], r['peak_rss_mib']))"
}

peaks() {  # round: the f32 matmul peak, measured by JAX (XLA) and by torch, best of 20
  record peak-jax "$1" "$PY_GRPO" "$REPO/benchmarks/roofline.py" --backend jax --repeats 20
  record peak-torch "$1" "$PY_TRL" "$REPO/benchmarks/roofline.py" --backend torch --repeats 20
}

# grpo_jax-warm-cache: a second kind of grpo_jax process, whose XLA executables come from JAX's persistent
# compilation cache (filled here once, not timed): what every run after the first one on a machine sees.
XLA_CACHE="$OUT/xla_cache"
rm -rf "$XLA_CACHE"
if [[ " $IMPLS " == *" grpo_jax-warm-cache "* ]]; then
  echo "== filling the XLA compilation cache"
  "$PY_GRPO" "$HERE/bench_grpo_jax.py" "$DATA" --steps 2 --compilation_cache "$XLA_CACHE" > "$LOGS/fill_cache.log" 2>&1
fi

peaks 0
for round in $(seq 1 "$REPEATS"); do
  for impl in $IMPLS; do
    case "$impl" in
      grpo_jax) record grpo_jax "$round" "$PY_GRPO" "$HERE/bench_grpo_jax.py" "$DATA" --steps "$STEPS" ;;
      grpo_jax-warm-cache) record grpo_jax-warm-cache "$round" "$PY_GRPO" "$HERE/bench_grpo_jax.py" "$DATA" \
                             --steps "$STEPS" --compilation_cache "$XLA_CACHE" ;;
      grpo_jax-bf16) record grpo_jax-bf16 "$round" "$PY_GRPO" "$HERE/bench_grpo_jax.py" "$DATA" \
                       --steps "$STEPS" --dtype bfloat16 ;;  # item 5: bf16 matmuls, f32 accumulation
      grpo_jax-off-policy) record grpo_jax-off-policy "$round" "$PY_GRPO" "$HERE/bench_grpo_jax.py" "$DATA" \
                             --steps "$STEPS" --off_policy ;;  # rollout of step t+1 during update t
      grpo_jax-before) record grpo_jax-before "$round" env PYTHONPATH="$BEFORE_REPO" "$PY_GRPO" \
                         "$BEFORE_REPO/benchmarks/peers/bench_grpo_jax.py" "$DATA" --steps "$STEPS" ;;
      grpo_jax-scan-decode) record grpo_jax-scan-decode "$round" "$PY_GRPO" "$HERE/bench_grpo_jax.py" "$DATA" \
                              --steps "$STEPS" --decode scan ;;
      tunix) record tunix "$round" "$PY_TUNIX" "$HERE/bench_tunix.py" "$DATA" --steps "$STEPS" ;;
      trl) record trl "$round" "$PY_TRL" "$HERE/bench_trl.py" "$DATA" --steps "$STEPS" ;;
      trl-no-gc) record trl-no-gc "$round" "$PY_TRL" "$HERE/bench_trl.py" "$DATA" --steps "$STEPS" \
                   --no_gradient_checkpointing ;;
      *) echo "unknown runner $impl" >&2; exit 2 ;;
    esac
  done
done
peaks "$((REPEATS + 1))"

"$PY_GRPO" "$HERE/report.py" "$RESULTS" --data "$DATA" --markdown "$OUT/results.md" \
  --plot "$REPO/docs/benchmarks_peers.png" --machine "$OUT/machine.json"
cat "$OUT/results.md"
