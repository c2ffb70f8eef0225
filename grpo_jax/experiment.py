"""Builds everything an experiment config names: mesh, tokenizer, model, data, trainer."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax import lora as lora_lib
from grpo_jax import plan as plan_lib
from grpo_jax import sharding as shd
from grpo_jax import tasks as tasks_lib
from grpo_jax import tokenizer as tokenizer_lib
from grpo_jax import train as train_lib
from grpo_jax.model import Decoder, ModelConfig
from grpo_jax.rollout import PromptFormat
from grpo_jax.tasks.data import PromptIterator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
  config: Any
  mesh: Any
  tokenizer: Any
  graphdef: Any
  params: Any  # the initial policy parameters (nnx.State, sharded)
  trainer: train_lib.Trainer
  fmt: PromptFormat
  train_examples: list
  eval_examples: list
  iterator: PromptIterator


def build_model(c, tokenizer, mesh):
  """`(graphdef, params)` of the initial policy, placed on `mesh`."""
  if c.model.source == "hf":
    from grpo_jax import hf
    model = hf.from_pretrained(c.model.path, jnp.dtype(c.model.dtype), mesh=mesh,
                               scan_layers=c.model.scan_layers, scan_decode=c.model.scan_decode,
                               remat=c.model.remat)
    return nnx.split(model)
  tiny = dict(c.model.tiny)
  cfg = ModelConfig.tiny(vocab_size=tokenizer.vocab_size, dtype=c.model.dtype,
                         param_dtype=c.model.param_dtype, scan_layers=c.model.scan_layers,
                         scan_decode=c.model.scan_decode,
                         remat=c.model.remat, **tiny)
  return shd.init_sharded(lambda: Decoder(cfg, nnx.Rngs(params=c.seed)), mesh)


def loss_config(c) -> train_lib.LossConfig:
  g = c.grpo
  return train_lib.LossConfig(
      beta=0.0 if g.kl_in_reward else float(g.beta), kl_kind=g.kl_kind, clip_low=g.clip_low,
      clip_high=g.clip_high, clip_c=g.clip_c, ratio_level=g.ratio_level, agg=g.agg,
      norm_len=g.norm_len, temperature=c.rollout.temperature, loss_type=g.loss_type,
      sapo_tau=(float(g.sapo_tau_pos), float(g.sapo_tau_neg)), cov_control=g.cov_control,
      cov_ratio=float(g.cov_ratio), cov_bounds=tuple(float(b) for b in g.cov_bounds),
      kl_cov_coef=float(g.kl_cov_coef), entropy_coef=float(g.entropy_coef),
      logprob_chunk=int(g.logprob_chunk))


def advantage_config(c) -> train_lib.AdvantageConfig:
  g = c.grpo
  return train_lib.AdvantageConfig(
      estimator=g.estimator, scale=g.scale, kl_in_reward=g.kl_in_reward, beta=float(g.beta),
      kl_kind=g.kl_kind, filter_zero_std=g.filter_zero_std, mask_truncated=g.mask_truncated,
      rollout_is=g.rollout_is, rollout_is_level=g.rollout_is_level,
      rollout_is_threshold=float(g.rollout_is_threshold), logprob_chunk=int(g.logprob_chunk))


def lora_config(c) -> lora_lib.LoRAConfig | None:
  """The LoRA settings, or None for full fine-tuning (`lora.rank` 0)."""
  if not c.lora.rank:
    return None
  return lora_lib.LoRAConfig(rank=int(c.lora.rank), alpha=float(c.lora.alpha), targets=tuple(c.lora.targets))


def build_experiment(c) -> Experiment:
  mesh = shd.make_mesh(tuple(c.mesh))
  tok_path = c.tokenizer or c.model.path
  tokenizer = tokenizer_lib.load_tokenizer(tok_path)
  # Before any weight is read: a run whose planned peak exceeds the device memory stops here with a
  # ConfigError naming the knobs to change (a no-op where JAX reports no device memory and
  # plan.device_memory_gb is 0, e.g. on CPU).
  plan_lib.check_fits(c, jax.device_count(), vocab_size=tokenizer.vocab_size, loss_cfg=loss_config(c))
  graphdef, params = build_model(c, tokenizer, mesh)
  model_vocab = int(jax.tree.leaves(params["embed"])[0].shape[0])
  if tokenizer.vocab_size > model_vocab:
    raise ValueError(f"tokenizer {tok_path!r} has {tokenizer.vocab_size} tokens but the model's "
                     f"vocabulary has {model_vocab}")
  updates_per_step = c.grpo.num_iterations * c.grpo.num_minibatches
  tx, schedule = train_lib.make_optimizer(
      c.optim.lr, warmup_steps=c.optim.warmup_steps * updates_per_step,
      total_steps=c.train.num_steps * updates_per_step, schedule=c.optim.schedule,
      weight_decay=c.optim.weight_decay, b1=c.optim.b1, b2=c.optim.b2, grad_clip=c.optim.grad_clip)
  trainer = train_lib.Trainer(
      graphdef, params, mesh, tx=tx, schedule=schedule, loss_cfg=loss_config(c),
      adv_cfg=advantage_config(c), group_size=c.grpo.group_size, grad_accum=c.grpo.grad_accum,
      rescore_old=c.grpo.old_logp == "rescore", num_iterations=c.grpo.num_iterations,
      num_minibatches=c.grpo.num_minibatches, lora=lora_config(c))
  if trainer.lora is not None:
    log.info("LoRA rank %d on %s: %d trainable parameters, %d in the frozen base", trainer.lora.rank,
             ",".join(trainer.lora.targets), trainer.num_trainable, lora_lib.num_params(params))
  task_kwargs = {k: v for k, v in dict(c.task.kwargs).items() if v != ""}  # "": not given
  train_examples, eval_examples = tasks_lib.get_task(c.task.name, **task_kwargs)
  fmt = PromptFormat(system_prompt=c.prompt.system_prompt or None,
                     template=c.prompt.template or None,
                     use_chat_template=c.prompt.use_chat_template)
  iterator = PromptIterator(train_examples, c.rollout.prompts_per_step, seed=c.seed)
  return Experiment(config=c, mesh=mesh, tokenizer=tokenizer, graphdef=graphdef, params=params,
                    trainer=trainer, fmt=fmt, train_examples=train_examples,
                    eval_examples=eval_examples, iterator=iterator)

