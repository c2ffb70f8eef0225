"""TinyZero's Countdown with GRPO: reach the target with + - * / using each given number once.

  python -m grpo_jax.main --config experiments/countdown.py \
      --config.model.path=/data/Qwen2.5-1.5B-Instruct --workdir /tmp/countdown

Settings and sources: TinyZero (Pan et al. 2025) trains Qwen2.5-3B with 3-4 numbers in 1..99, reward 1 for
a correct equation and 0.1 for a well-formed one (`countdown` with format_score=0.1), lr 1e-6, KL 0.001,
1024 response tokens, temperature 1.0; G = 8 follows its rollout.n. The problems are generated
(`grpo_jax.tasks.countdown`), so only the model directory is needed.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402


def get_config():
  c = default.get_config()
  c.mesh = (1, -1, 1)
  c.model.source = "hf"
  c.model.path = ""  # required: a local Qwen2.5 (Instruct) directory
  c.model.dtype = "bfloat16"
  c.tokenizer = ""
  c.task.name = "countdown"
  c.task.kwargs = dict(num_train=32768, num_eval=512, seed=0, min_numbers=3, max_numbers=4)
  c.prompt.use_chat_template = True
  c.rewards.names = ("countdown",)
  c.rewards.weights = (1.0,)
  c.rewards.kwargs = dict(countdown=dict(format_score=0.1))
  c.rewards.correctness = "countdown"
  c.rollout.prompts_per_step = 32
  c.rollout.prompt_len = 256
  c.rollout.max_new_tokens = 1024
  c.grpo.group_size = 8
  c.grpo.beta = 0.001
  c.grpo.grad_accum = 4
  c.optim.lr = 1e-6
  c.optim.warmup_steps = 10
  c.sft.steps = 0
  c.train.num_steps = 300
  c.eval.every = 50
  c.eval.num_examples = 512
  c.eval.batch_size = 128
  c.eval.k = 0
  c.checkpoint.every = 50
  return c
