"""The shared GRPO workload of the peer benchmark, and the helpers every runner uses (stdlib only: it is
imported from three venvs — grpo_jax, Tunix and TRL — none of which has the others' packages).

One GRPO step = rollout (B prompts x G completions of exactly T tokens) + reference log-probs + one
policy update. Each runner prints one JSON line (`emit`) that `report.py` turns into the table.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import sys
import time

# The workload (identical in the three runners; see docs/benchmarks.md).
GROUP_SIZE = 8  # G
PROMPTS_PER_STEP = 8  # B
PROMPT_LEN = 24  # P: prompts (18-21 tokens with the chat template) are left-padded to this bucket
COMPLETION_LEN = 32  # T: exactly T new tokens (EOS never ends a completion early)
TEMPERATURE = 1.0
BETA = 0.04  # k3 KL to the reference
EPSILON = 0.2  # PPO clip, both sides
LEARNING_RATE = 1e-5  # AdamW
SEED = 0

# The tiny Qwen2 checkpoint (make_checkpoint.py).
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=704, tie_word_embeddings=True)
TOKENIZER_VOCAB = 384

_NUMBER = re.compile(r"-?\d+")


def exact_match_reward(completions, answer):
  """1.0 when the first integer of the completion equals the answer (the sum), else 0.0."""
  out = []
  for c, a in zip(completions, answer):
    m = _NUMBER.search(c)
    out.append(float(m is not None and m.group(0) == str(a).strip()))
  return out


def load_prompts(data_dir: str) -> list[dict]:
  """`[{"prompt": chat-formatted text, "answer": "46"}, ...]` written by make_checkpoint.py."""
  with open(os.path.join(data_dir, "prompts.jsonl")) as f:
    return [json.loads(line) for line in f]


def peak_rss_mib() -> float:
  """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarize(impl: str, step_times: list[float], *, warmup: int, cpu_times: list[float] | None = None,
              extra: dict | None = None) -> dict:
  """Step-time statistics: the first step (compile / warm-up) and the median of the steps after warm-up.

  `cpu_times` are the process CPU seconds (all threads) of the same steps: less sensitive than wall time
  to other load on the machine (2 cores fully used give 2 CPU-s per wall-s)."""
  timed = step_times[warmup:]
  tokens = GROUP_SIZE * PROMPTS_PER_STEP * COMPLETION_LEN
  med = statistics.median(timed)
  out = {
      "impl": impl,
      "first_step_s": step_times[0],
      "median_step_s": med,
      "min_step_s": min(timed),  # the least-disturbed step: a quiet-machine estimate
      "max_step_s": max(timed),
      "steps_timed": len(timed),
      "completion_tokens_per_s": tokens / med,
      "peak_rss_mib": peak_rss_mib(),
      "step_times_s": [round(t, 4) for t in step_times],
  }
  if cpu_times:
    out["first_step_cpu_s"] = cpu_times[0]
    out["median_step_cpu_s"] = statistics.median(cpu_times[warmup:])
  out.update(extra or {})
  return out


def emit(result: dict) -> None:
  """The one machine-readable line of a runner (prefixed so that library logging can't be mistaken for it)."""
  sys.stdout.flush()
  print("RESULT " + json.dumps(result), flush=True)


class Timer:
  """Accumulates wall time per phase name: `with timer("rollout"): ...`."""

  def __init__(self):
    self.totals: dict[str, float] = {}
    self._name = None

  def __call__(self, name):
    self._name = name
    return self

  def __enter__(self):
    self._t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.totals[self._name] = self.totals.get(self._name, 0.0) + time.perf_counter() - self._t0
