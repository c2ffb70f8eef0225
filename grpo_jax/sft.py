"""A short supervised warm start: teaches a fresh model the task's answer format before GRPO.

The batch layout is the GRPO one (left-padded prompt `[N, P]`, completion `[N, T]` ending in EOS), and
the loss is the mean negative log-likelihood of the completion tokens computed by the same
`train.completion_logprobs` the GRPO loss uses.
"""

from __future__ import annotations

import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax import losses
from grpo_jax import model as model_lib
from grpo_jax import rollout as rollout_lib
from grpo_jax import sharding as shd
from grpo_jax.train import completion_logprobs

log = logging.getLogger(__name__)


def noisy_teacher(examples: Sequence[dict], frac: float, seed: int, key: str = "answer") -> list[dict]:
  """Demonstrations from an unreliable teacher: in a `frac` fraction of examples (chosen by `seed`) the
  target is written with its characters reversed ("46" -> "64").

  The warm-started model then puts probability on both the right and the reversed answer, and only the
  reward can tell them apart: the setting in which GRPO's group comparison pays off fastest.
  """
  if not 0.0 <= frac <= 1.0:
    raise ValueError(f"sft.noise_frac must be in [0, 1], got {frac}")
  flip = np.random.default_rng(seed).random(len(examples)) < frac
  return [{**ex, key: str(ex[key])[::-1]} if f else ex for ex, f in zip(examples, flip)]


def encode_targets(examples: Sequence[dict], tokenizer, length: int, key: str = "answer"):
  """Right-padded targets `example[key] + EOS`: `(tokens [B, T], mask [B, T])` int32."""
  tokens = np.full((len(examples), length), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(examples), length), np.int32)
  for i, ex in enumerate(examples):
    ids = list(tokenizer.encode(str(ex[key]))) + [tokenizer.eos_id]
    if len(ids) > length:
      raise ValueError(f"sft target {str(ex[key])[:40]!r} is {len(ids)} tokens with EOS, longer than "
                       f"rollout.max_new_tokens={length}")
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1
  return tokens, mask


def make_sft_step(graphdef, tx):
  """Jitted `(params, opt_state, batch) -> (params, opt_state, loss)`; params are donated."""

  def loss_fn(params, batch):
    logp, _ = completion_logprobs(graphdef, params, batch["prompt_tokens"], batch["prompt_mask"],
                                  batch["tokens"], batch["mask"], 1.0)
    return -losses.aggregate(logp, batch["mask"].astype(jnp.float32), "token-mean")

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def warm_start(graphdef, params, examples: Sequence[dict], tokenizer, mesh, *, steps: int,
               batch_size: int, lr: float, seed: int, prompt_len: int, target_len: int,
               fmt: rollout_lib.PromptFormat, target_key: str = "answer"):
  """Runs `steps` AdamW steps of supervised fine-tuning on `examples`; returns `(params, last_loss)`."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), max(steps, 2)), b2=0.99))
  opt_state = tx.init(params)
  step_fn = make_sft_step(model_lib.bind_mesh(graphdef, params, mesh), tx)
  rng = np.random.default_rng(seed)
  loss = float("nan")
  for step in range(steps):
    idx = rng.choice(len(examples), size=batch_size, replace=len(examples) < batch_size)
    chunk = [examples[i] for i in idx]
    _, p_tokens, p_mask = rollout_lib.encode_prompts(chunk, tokenizer, prompt_len, fmt)
    tokens, mask = encode_targets(chunk, tokenizer, target_len, target_key)
    batch = {"prompt_tokens": p_tokens, "prompt_mask": p_mask, "tokens": tokens, "mask": mask}
    batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    params, opt_state, loss = step_fn(params, opt_state, batch)
    if step % max(steps // 5, 1) == 0 or step == steps - 1:
      log.info("sft step %d/%d: loss %.4f", step + 1, steps, float(loss))
  return params, float(loss)
