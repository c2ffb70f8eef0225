"""GRPO on GSM8K with Qwen2.5-0.5B-Instruct (a Cloud TPU / GPU run; the model and data are local files).

  python -m grpo_jax.main --config experiments/qwen2_5_0_5b_gsm8k.py \
      --config.model.path=/data/Qwen2.5-0.5B-Instruct \
      --config.task.kwargs.train_path=/data/gsm8k/train.jsonl \
      --config.task.kwargs.eval_path=/data/gsm8k/test.jsonl --workdir gs://bucket/runs/gsm8k

Settings and their sources:
- G = 16, beta = 0.04 (k3), eps = 0.2, one update per rollout (mu = 1): DeepSeekMath §4.2 / Table 6 use
  G = 64, beta = 0.04, lr 1e-6, mu = 1; G = 16 is the common budget choice for 0.5B models (TRL GRPO
  examples use 8-16).
- lr 1e-6 constant after a short warmup, AdamW (b2 0.99), grad clip 1.0: DeepSeekMath and
  SimpleRL-Zoo (Zeng et al. 2025) for Qwen2.5-0.5B.
- 512 new tokens, temperature 1.0: SimpleRL-Zoo samples at 1.0; GSM8K chains of thought fit in 512.
- Prompt: Qwen's math system prompt ("Please reason step by step, and put your final answer within
  \\boxed{}."), graded by `math_correctness` (\\boxed / #### / last number, numeric + symbolic).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402  (every field is documented there)


def get_config():
  c = default.get_config()
  c.mesh = (1, -1, 1)  # FSDP over all chips
  c.model.source = "hf"
  c.model.path = ""  # required: a local Qwen2.5-0.5B-Instruct directory
  c.model.dtype = "bfloat16"
  c.tokenizer = ""  # "": the model directory's tokenizer
  c.task.name = "gsm8k"
  c.task.kwargs = dict(train_path="", eval_path="", num_eval=0, seed=0)  # GSM8K jsonl/parquet files
  c.prompt.system_prompt = "Please reason step by step, and put your final answer within \\boxed{}."
  c.prompt.use_chat_template = True
  c.rewards.names = ("math_correctness",)
  c.rewards.weights = (1.0,)
  c.rewards.correctness = "math_correctness"
  c.rollout.prompts_per_step = 64
  c.rollout.prompt_len = 256
  c.rollout.max_new_tokens = 512
  c.rollout.temperature = 1.0
  c.grpo.group_size = 16
  c.grpo.beta = 0.04
  c.grpo.num_minibatches = 4  # 1024 sequences per rollout, 4 optimizer steps of 256
  c.grpo.grad_accum = 4
  c.optim.lr = 1e-6
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  c.sft.steps = 0  # the instruct model already follows the format
  c.train.num_steps = 500
  c.train.export_hf = True
  c.eval.every = 50
  c.eval.num_examples = 1319  # the GSM8K test set
  c.eval.batch_size = 256
  c.eval.k = 8
  c.eval.temperature = 1.0
  c.checkpoint.every = 50
  c.checkpoint.keep = 3
  return c
