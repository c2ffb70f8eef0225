"""Rollouts: prompts -> G completions each -> host rewards -> a training batch.

Sampling runs on device (the jitted sampler); decoding and reward functions run in host Python, the way
TRL's reward functions do, so any Python callable can score a completion.

Shapes: B prompts, G group size, N = B*G, P prompt length (a fixed bucket), T completion length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from grpo_jax import sampler as sampler_lib
from grpo_jax.tasks import format_prompt


@dataclasses.dataclass
class PromptFormat:
  """How an example's `prompt` text becomes model input (see `tasks.format_prompt`)."""

  system_prompt: str | None = None
  template: str | None = None
  use_chat_template: bool = False


def encode_prompts(examples: Sequence[dict], tokenizer, prompt_len: int, fmt: PromptFormat):
  """Formats and left-pads prompts: `(texts, tokens [B, P] int32, mask [B, P] int32)`."""
  texts = [format_prompt(ex["prompt"], tokenizer, system_prompt=fmt.system_prompt,
                         template=fmt.template, use_chat_template=fmt.use_chat_template)
           for ex in examples]
  tokens, mask = tokenizer.batch_encode_left_padded(texts, prompt_len)
  return texts, np.asarray(tokens, np.int32), np.asarray(mask, np.int32)


def reward_columns(examples: Sequence[dict], group_size: int) -> dict[str, list]:
  """Dataset columns (everything but `prompt`), each repeated G times to align with completions."""
  keys = sorted({k for ex in examples for k in ex if k != "prompt"})
  return {k: [ex.get(k) for ex in examples for _ in range(group_size)] for k in keys}


def decode_completions(tokenizer, tokens_NxT: np.ndarray, mask_NxT: np.ndarray) -> list[str]:
  return [tokenizer.decode([int(t) for t, m in zip(row, mrow) if m])
          for row, mrow in zip(tokens_NxT, mask_NxT)]


@dataclasses.dataclass
class Rollout:
  batch: dict[str, np.ndarray]  # prompt_tokens/prompt_mask [N, P], tokens/mask/old_logp [N, T], truncated [N]
  rewards_BxG: np.ndarray
  valid_N: np.ndarray
  prompts: list[str]  # [N]
  completions: list[str]  # [N]
  reward_metrics: dict[str, float]
  metrics: dict[str, float]


def rollout(generate_fn: Callable, params, examples: Sequence[dict], tokenizer, reward_runner, rng,
            *, group_size: int, prompt_len: int, fmt: PromptFormat) -> Rollout:
  """Samples G completions for each of the B examples and scores them.

  `generate_fn(params, prompt_tokens [N, P], prompt_mask [N, P], rng) -> SampleOutput` is the jitted
  sampler (`sampler.jit_generate`).
  """
  texts, tokens, mask = encode_prompts(examples, tokenizer, prompt_len, fmt)
  tokens_NxP, mask_NxP = sampler_lib.repeat_for_group(tokens, mask, group_size)
  out = generate_fn(params, tokens_NxP, mask_NxP, rng)
  host = jax.device_get({"tokens": out.tokens, "mask": out.mask, "logprobs": out.logprobs,
                         "truncated": out.truncated, "lengths": out.lengths})
  completions = decode_completions(tokenizer, host["tokens"], host["mask"])
  prompts = [t for t in texts for _ in range(group_size)]
  columns = reward_columns(examples, group_size)
  columns["completion_lengths"] = [int(x) for x in host["lengths"]]
  result = reward_runner(prompts, completions, **columns)
  lengths = host["lengths"].astype(np.float32)
  metrics = {
      "completion_len/mean": float(lengths.mean()),
      "completion_len/min": float(lengths.min()),
      "completion_len/max": float(lengths.max()),
      "completion_len/truncated_frac": float(np.mean(host["truncated"])),
      "completion_tokens": float(lengths.sum()),
  }
  batch = {
      "prompt_tokens": np.asarray(tokens_NxP, np.int32),
      "prompt_mask": np.asarray(mask_NxP, np.int32),
      "tokens": host["tokens"].astype(np.int32),
      "mask": host["mask"].astype(np.int32),
      "old_logp": host["logprobs"].astype(np.float32),
      "truncated": host["truncated"].astype(bool),
  }
  rewards = np.asarray(result.total, np.float32).reshape(-1, group_size)
  return Rollout(batch=batch, rewards_BxG=rewards, valid_N=np.asarray(result.valid, bool),
                 prompts=prompts, completions=completions, reward_metrics=result.metrics(),
                 metrics=metrics)


def sample_table(r: Rollout, n: int = 4) -> list[dict[str, Any]]:
  """A few (prompt, completion, reward) rows for logging."""
  flat = r.rewards_BxG.reshape(-1)
  return [{"prompt": r.prompts[i], "completion": r.completions[i], "reward": float(flat[i])}
          for i in range(min(n, len(r.completions)))]
