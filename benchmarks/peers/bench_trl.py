"""The peer-benchmark GRPO step with Hugging Face TRL's `GRPOTrainer` (PyTorch on CPU, transformers'
`generate`, no vLLM). Prints one `RESULT {json}` line.

Only the shared workload is set (see common.py); everything else is GRPOConfig's default — including
`gradient_checkpointing=True` (pass --no_gradient_checkpointing for the variant without it) and the
default loss aggregation. `min_new_tokens=T` makes every completion exactly T tokens, as in the other two.

Usage: python benchmarks/peers/bench_trl.py DATA_DIR [--steps 9] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("data_dir")
  ap.add_argument("--steps", type=int, default=9)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--no_gradient_checkpointing", action="store_true")
  args = ap.parse_args()
  if args.steps <= args.warmup:
    ap.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")

  import numpy as np
  import torch
  import transformers
  import trl
  from datasets import Dataset

  c = common
  torch.manual_seed(c.SEED)
  model_dir = os.path.join(args.data_dir, "model")
  rows = common.load_prompts(args.data_dir)[:args.steps * c.PROMPTS_PER_STEP]
  dataset = Dataset.from_list(rows)  # "prompt" as plain (already chat-formatted) text, "answer" column

  def exact_match(prompts, completions, answer, **_):
    return common.exact_match_reward(completions, answer)

  phases: list[dict] = []
  step_ends: list[float] = []
  cpu_ends: list[float] = []

  class Timed(trl.GRPOTrainer):
    """Times phases by wrapping GRPOTrainer's own methods (no behaviour change)."""

    def _timed(self, name, fn, *a, **kw):
      t0 = time.perf_counter()
      out = fn(*a, **kw)
      phases[-1][name] = phases[-1].get(name, 0.0) + time.perf_counter() - t0
      return out

    def _generate_and_score_completions(self, inputs):
      return self._timed("rollout+reference", super()._generate_and_score_completions, inputs)

    def _generate(self, prompts):
      return self._timed("generate", super()._generate, prompts)

    def _calculate_rewards(self, *a, **kw):
      return self._timed("reward", super()._calculate_rewards, *a, **kw)

  class StepTimes(transformers.TrainerCallback):

    def on_train_begin(self, *a, **kw):
      step_ends.append(time.perf_counter())
      cpu_ends.append(time.process_time())

    def on_step_begin(self, *a, **kw):
      phases.append({})

    def on_step_end(self, *a, **kw):
      step_ends.append(time.perf_counter())
      cpu_ends.append(time.process_time())

  out_dir = tempfile.mkdtemp(prefix="trl_bench_")
  config = trl.GRPOConfig(
      output_dir=out_dir, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
      max_steps=args.steps, per_device_train_batch_size=c.PROMPTS_PER_STEP * c.GROUP_SIZE,
      num_generations=c.GROUP_SIZE, max_completion_length=c.COMPLETION_LEN,
      generation_kwargs={"min_new_tokens": c.COMPLETION_LEN}, temperature=c.TEMPERATURE,
      beta=c.BETA, epsilon=c.EPSILON, num_iterations=1, learning_rate=c.LEARNING_RATE,
      lr_scheduler_type="constant", seed=c.SEED,
      model_init_kwargs={"dtype": torch.float32},
      **({"gradient_checkpointing": False} if args.no_gradient_checkpointing else {}))
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  trainer = Timed(model=model_dir, reward_funcs=exact_match, args=config, train_dataset=dataset,
                  processing_class=tokenizer, callbacks=[StepTimes()])
  setup_s = time.perf_counter() - T_START
  trainer.train()

  step_times = list(np.diff(step_ends))
  for p, total in zip(phases, step_times):
    p["rollout"] = p.get("generate", 0.0) + p.get("reward", 0.0)
    p["reference"] = p["rollout+reference"] - p["rollout"]
    p["update"] = total - p["rollout+reference"]
  keys = ("rollout", "reference", "update", "generate", "reward")
  timed = phases[args.warmup:]
  impl = "trl" + ("-no-gc" if args.no_gradient_checkpointing else "")
  common.emit(common.summarize(impl, step_times, warmup=args.warmup, cpu_times=list(np.diff(cpu_ends)), extra={
      "version": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
      "torch_threads": torch.get_num_threads(), "gradient_checkpointing": config.gradient_checkpointing,
      "loss_type": config.loss_type, "setup_s": setup_s,
      "phases_per_step_s": [{k: round(v, 4) for k, v in p.items()} for p in phases],
      "first_step_phases_s": {k: phases[0][k] for k in keys},
      "median_phases_s": {k: float(np.median([p[k] for p in timed])) for k in keys}}))


if __name__ == "__main__":
  main()
