"""The GRPO update: `TrainState`, the optimizer, rollout scoring and the jitted `train_step`.

Everything here is a pure function of pytrees. `Trainer` builds the jitted functions once, with explicit
in/out shardings over a (`data`, `fsdp`, `tensor`) mesh and a donated state, and the Python loop
(`grpo_jax.loop`) only calls them.

Shapes: B prompts, G group size, N = B*G sequences, P prompt length, T completion length.
A `Batch` is a dict of device arrays:
  prompt_tokens, prompt_mask  [N, P]  (left-padded)
  tokens, mask                [N, T]  completion and its mask (1 up to and including EOS)
  old_logp, ref_logp          [N, T]  behaviour-policy and reference log-probs
  advantages                  [N]     or [N, T] (process supervision)
  loss_mask                   [N, T]  mask with filtered sequences zeroed (dynamic sampling, overlong)
  action_mask (optional)      [N, T]  multi-turn rollouts (`grpo_jax.multiturn`): 1 on the policy's tokens,
                                      0 on environment tokens, which `mask` keeps as attended context
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from grpo_jax import advantages as adv_lib
from grpo_jax import correction
from grpo_jax import hostmem
from grpo_jax import lora as lora_lib
from grpo_jax import losses
from grpo_jax.chunked_logprobs import chunked_logprobs
from grpo_jax import sharding as shd
from grpo_jax import model as model_lib
from grpo_jax.model import positions_from_mask


@flax.struct.dataclass
class TrainState:
  params: Any  # nnx.State of the policy
  opt_state: Any
  step: jax.Array  # int32 scalar: optimizer updates done
  rng: jax.Array  # typed PRNG key; per-step keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static GRPO objective settings (see `losses.grpo_loss` / `losses.policy_loss`)."""

  beta: float = 0.0
  kl_kind: str = "k3"
  clip_low: float = 0.2
  clip_high: float = 0.2
  clip_c: float | None = None
  ratio_level: str = "token"
  agg: str = "seq-mean-token-mean"  # "token-mean-global": by the rollout's token count (`tokens_per_seq`)
  norm_len: int | None = None
  temperature: float = 1.0  # the sampling temperature: logits are scored at the same temperature
  loss_type: str = "grpo"  # grpo | cispo | gmpo | sapo
  sapo_tau: tuple[float, float] = (1.0, 1.05)  # SAPO (tau_pos, tau_neg)
  cov_control: str = "none"  # none | clip_cov | kl_cov (Cui et al. 2025)
  cov_ratio: float = 2e-4  # fraction of tokens Clip-Cov detaches / KL-Cov penalizes
  cov_bounds: tuple[float, float] = (1.0, 5.0)  # Clip-Cov's covariance band
  kl_cov_coef: float = 1.0  # KL-Cov's coefficient of |log ratio|
  entropy_coef: float = 0.0  # entropy bonus: loss -= entropy_coef * aggregate(entropy)
  logprob_chunk: int = 0  # completion positions per LM-head chunk (`chunked_logprobs`); 0: unchunked


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
  """Static settings of the per-rollout preparation (advantages, sequence filters, rollout correction)."""

  estimator: str = "grpo"
  scale: str = "group"
  eps: float = 1e-6
  kl_in_reward: bool = False  # PPO-style: subtract beta * sum_t KL from the reward instead of the loss
  beta: float = 0.0
  kl_kind: str = "k3"
  filter_zero_std: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal
  mask_truncated: bool = False  # DAPO overlong filtering: drop completions without EOS
  rollout_is: str = "none"  # none | tis | mis: sampler/trainer mismatch correction (`correction`)
  rollout_is_level: str = "token"  # token | sequence
  rollout_is_threshold: float = 2.0  # C: TIS truncates at C, MIS keeps ratios in [1/C, C]
  logprob_chunk: int = 0  # as LossConfig.logprob_chunk, for the re-scoring and reference forwards


def make_optimizer(lr: float, *, warmup_steps: int = 0, total_steps: int = 1, schedule: str = "constant",
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.99,
                   grad_clip: float = 1.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW behind global-norm clipping, with linear warmup then a constant or cosine schedule."""
  if schedule == "constant":
    after = optax.constant_schedule(lr)
  elif schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {schedule!r}")
  sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps])
  tx = optax.chain(optax.clip_by_global_norm(grad_clip),
                   optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay))
  return tx, sched


def completion_logprobs(graphdef, params, prompt_tokens, prompt_mask, tokens, mask, temperature,
                        chunk: int = 0, entropy_grad: bool = True):
  """Teacher-forced log-probs and entropies of the completion under `params`: two `[N, T]` float32.

  With `chunk` > 0 the LM head and its reductions run `chunk` positions at a time
  (`chunked_logprobs.chunked_logprobs`: no `[N, T, V]` logits, forward or backward); `entropy_grad=False`
  then makes the entropy a stop-gradient metric. Unchunked, the logits are one `[N, T, V]` array.
  """
  model = nnx.merge(graphdef, params)
  p = prompt_tokens.shape[1]
  full_tokens = jnp.concatenate([prompt_tokens, tokens], axis=1)
  full_mask = jnp.concatenate([prompt_mask, mask], axis=1)
  hidden = model(full_tokens, positions_from_mask(full_mask), full_mask, return_hidden=True)
  # Position P-1+t predicts completion token t: only those T positions are projected to logits.
  hidden = hidden[:, p - 1:-1]
  if chunk:
    return chunked_logprobs(model.logits, hidden, tokens, temperature, chunk, entropy_grad)
  logits = model.logits(hidden)
  return (losses.token_logprobs(logits, tokens, temperature),
          losses.token_entropy(logits, temperature))


def scored_in_parts(graphdef, params, args, parts: int):
  """`completion_logprobs(graphdef, params, *args)[0]` computed `parts` strided parts at a time
  (`strided_split`, a `lax.map`), so the scoring peak is that of N / parts rows: `[N / parts, T, V]`
  logits instead of `[N, T, V]`. Returns the `[N, T]` log-probs in the original row order."""
  *rows, temperature, chunk = args
  if parts <= 1:
    return completion_logprobs(graphdef, params, *rows, temperature, chunk)[0]
  split = strided_split(tuple(rows), parts)
  out = jax.lax.map(lambda r: completion_logprobs(graphdef, params, *r, temperature, chunk)[0], split)
  return jnp.swapaxes(out, 0, 1).reshape(-1, out.shape[-1])  # [parts, N/parts, T] -> [N, T]


def prepare_batch(graphdef, params, ref_params, batch, rewards_BxG, valid_N, *, group_size: int,
                  cfg: AdvantageConfig, rescore_old: bool, temperature: float, score_parts: int = 1):
  """Per-rollout, on device: old/reference log-probs, (KL-shaped) rewards, advantages, loss mask, rollout
  correction weights and the token count of "token-mean-global". The log-probs are scored `score_parts`
  strided parts at a time (`scored_in_parts`): the logits peak is that of one update micro-batch.

  Args:
    batch: dict with prompt_tokens/prompt_mask `[N, P]`, tokens/mask `[N, T]`, and `old_logp [N, T]`
      from the sampler (replaced by a re-scoring under `params` when `rescore_old`).
    rewards_BxG: float32 rewards; valid_N: bool, False for samples dropped by the reward runner.
  Returns `(batch, metrics)`; the batch gains
    behaviour_logp [N, T]  the sampler's log-probs μ (the input old_logp), whatever `rescore_old` is;
    old_logp, ref_logp, advantages, loss_mask  (see the module docstring);
    tokens_per_seq [N]     Σ loss_mask / N of the whole rollout, in every row (`loss_fn`'s
                           "token-mean-global" denominator: a microbatch of n rows divides by n · it);
    is_weight [N, T]       with `cfg.rollout_is` != "none" (needs `rescore_old`): the correction weights
                           of π_θold/μ (`correction.rollout_is_weights`).
  Metrics add `correction.mismatch_metrics` (π_θold vs μ) when `rescore_old`, and the weights' statistics.
  """
  if cfg.rollout_is != "none" and not rescore_old:
    raise ValueError(f"prepare_batch: rollout_is={cfg.rollout_is!r} weighs the trainer's π_θold against the "
                     "sampler's log-probs and needs rescore_old=True (grpo.old_logp='rescore')")
  out = dict(batch)
  args = (batch["prompt_tokens"], batch["prompt_mask"], batch["tokens"], batch["mask"], temperature,
          cfg.logprob_chunk)
  out["behaviour_logp"] = jax.lax.stop_gradient(batch["old_logp"])
  # The tokens the policy chose: environment tokens of multi-turn rollouts are context, not actions, and
  # stay out of the loss, the KL and the rollout correction.
  act = batch.get("action_mask", batch["mask"])
  metrics = {}
  if rescore_old:
    out["old_logp"] = scored_in_parts(graphdef, params, args, score_parts)
    metrics.update(correction.mismatch_metrics(out["old_logp"], out["behaviour_logp"], act))
  out["old_logp"] = jax.lax.stop_gradient(out["old_logp"])
  mask = act.astype(jnp.float32)
  need_ref = ref_params is not None
  out["ref_logp"] = (scored_in_parts(graphdef, ref_params, args, score_parts) if need_ref
                     else jnp.zeros_like(out["old_logp"]))
  if cfg.rollout_is != "none":
    out["is_weight"], is_metrics = correction.rollout_is_weights(
        out["old_logp"], out["behaviour_logp"], act, mode=cfg.rollout_is,
        level=cfg.rollout_is_level, threshold=cfg.rollout_is_threshold)
    metrics.update(is_metrics)
  rewards = rewards_BxG
  if cfg.kl_in_reward and need_ref:
    kl_N = jnp.sum(losses.kl_penalty(out["old_logp"], out["ref_logp"], cfg.kl_kind) * mask, axis=1)
    rewards = rewards - cfg.beta * kl_N.reshape(rewards.shape)
    metrics["kl_reward_penalty"] = jnp.mean(cfg.beta * kl_N)
  advantages = adv_lib.group_advantages(rewards, cfg.estimator, cfg.eps, scale=cfg.scale)
  keep_N = valid_N
  zero_std_B = jnp.all(rewards_BxG == rewards_BxG[:, :1], axis=1)
  metrics["frac_zero_std_groups"] = jnp.mean(zero_std_B.astype(jnp.float32))
  if cfg.filter_zero_std:
    keep_N = keep_N & ~jnp.repeat(zero_std_B, group_size)
  truncated_N = batch["truncated"]
  if cfg.mask_truncated:
    keep_N = keep_N & ~truncated_N
  out["advantages"] = advantages.reshape(-1)
  out["loss_mask"] = mask * keep_N[:, None].astype(jnp.float32)
  n = mask.shape[0]
  out["tokens_per_seq"] = jnp.full((n,), jnp.sum(out["loss_mask"]) / n, jnp.float32)
  metrics["frac_kept"] = jnp.mean(keep_N.astype(jnp.float32))
  metrics["advantage_abs_mean"] = jnp.mean(jnp.abs(advantages))
  return out, metrics


def global_token_count(mb, cfg: LossConfig):
  """The "token-mean-global" denominator of a microbatch of n rows: n · `tokens_per_seq`, its share of the
  rollout's loss tokens (None for the other aggregations). `train_step` averages the microbatch losses, so
  a full batch split into any number of equal microbatches gives Σ_all ℓ·m / Σ_all m, the full-batch token
  mean; with M minibatches per rollout each update divides by (N/M)·(Σ_rollout m / N), so every token of
  the rollout has the same weight in every update, whatever minibatch it lands in."""
  if cfg.agg != "token-mean-global":
    return None
  if "tokens_per_seq" not in mb:
    raise ValueError("agg='token-mean-global' needs the batch field tokens_per_seq [N] (Σ loss_mask / N of "
                     "the whole batch, in every row), which prepare_batch adds")
  # max, not mean: every row holds the same value, and a max of equal floats is exact.
  return mb["tokens_per_seq"].shape[0] * jnp.max(mb["tokens_per_seq"])


def loss_fn(params, graphdef, mb, cfg: LossConfig, merge=None):
  """GRPO loss of one microbatch (dict as `Batch`), returning `(loss, metrics)`. Uses the batch's
  `is_weight` (rollout correction) and `tokens_per_seq` ("token-mean-global") when they are present.
  With `merge` (LoRA: `lora.merge` with the frozen base bound) `params` are the adapters and the decoder
  runs on `merge(params)`."""
  if merge is not None:
    params = merge(params)
  logp, entropy = completion_logprobs(graphdef, params, mb["prompt_tokens"], mb["prompt_mask"],
                                      mb["tokens"], mb["mask"], cfg.temperature, cfg.logprob_chunk,
                                      entropy_grad=cfg.entropy_coef != 0)
  ref_logp = mb["ref_logp"] if cfg.beta else None
  noise = (losses.token_uniform_noise(mb["tokens"], mb["old_logp"]) if cfg.cov_control == "clip_cov"
           else None)
  loss, metrics = losses.grpo_loss(
      logp, mb["old_logp"], ref_logp, mb["advantages"], mb["loss_mask"], beta=cfg.beta,
      kl_kind=cfg.kl_kind, clip_low=cfg.clip_low, clip_high=cfg.clip_high, clip_c=cfg.clip_c,
      ratio_level=cfg.ratio_level, agg=cfg.agg, norm_len=cfg.norm_len,
      num_tokens=global_token_count(mb, cfg), loss_type=cfg.loss_type, is_weight=mb.get("is_weight"),
      sapo_tau=cfg.sapo_tau, cov_control=cfg.cov_control, cov_ratio=cfg.cov_ratio,
      cov_bounds=cfg.cov_bounds, kl_cov_coef=cfg.kl_cov_coef, cov_noise=noise,
      entropy=entropy if cfg.entropy_coef else None, entropy_coef=cfg.entropy_coef)
  m = mb["loss_mask"]
  metrics = dict(metrics)
  metrics["entropy"] = jax.lax.stop_gradient(jnp.sum(entropy * m) / jnp.maximum(jnp.sum(m), 1.0))
  return loss, metrics


def strided_split(batch, num: int):
  """`[N, ...]` -> `[num, N / num, ...]`, part m holding rows m, m + num, m + 2·num, … A batch sharded in
  contiguous row blocks over the data axes stays local: every device holds N / (num · shards) rows of each
  part, so the parts can be scanned over without moving data between devices."""

  def split(x):
    n = x.shape[0]
    if n % num:
      raise ValueError(f"a batch of {n} sequences is not divisible into {num} equal parts")
    return jnp.swapaxes(x.reshape(n // num, num, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch, *, graphdef, tx: optax.GradientTransformation,
               schedule: optax.Schedule, cfg: LossConfig, grad_accum: int = 1, merge=None):
  """One optimizer update on `batch` (N sequences), accumulating gradients over `grad_accum`
  equal microbatches (`strided_split`) with `lax.scan`. The loss is the mean of the microbatch losses,
  which equals the full-batch loss for the sequence-mean aggregations (equal microbatch sizes).

  A non-finite loss, gradient, update or new parameter norm skips the update: the state is returned
  unchanged (params, optimizer state, step) and `metrics["update_skipped"]` is 1. With `merge` (LoRA, see
  `loss_fn`) `state.params` are the adapters: they alone are differentiated and updated."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum == 1:  # no scan: a smaller program, faster to compile
    (loss, metrics), grads = grad_fn(state.params, graphdef, batch, cfg, merge)
    return _apply_update(state, grads, loss, metrics, tx, schedule)

  def accumulate(carry, mb):
    grads_acc, loss_acc = carry
    (loss, metrics), grads = grad_fn(state.params, graphdef, mb, cfg, merge)
    grads_acc = jax.tree.map(lambda a, g: a + g / grad_accum, grads_acc, grads)
    return (grads_acc, loss_acc + loss / grad_accum), metrics

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, loss), metrics = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)),
                                        strided_split(batch, grad_accum))
  return _apply_update(state, grads, loss, jax.tree.map(jnp.mean, metrics), tx, schedule)


def _apply_update(state: TrainState, grads, loss, metrics, tx, schedule):
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  update_norm, param_norm = optax.tree.norm(updates), optax.tree.norm(params)
  ok = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
        & jnp.isfinite(param_norm))
  # A non-finite update leaves the state exactly as it was: params, moments, step and rng.
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
  metrics.update(loss=loss, grad_norm=grad_norm, update_norm=update_norm, param_norm=param_norm,
                 learning_rate=schedule(state.step), update_skipped=1.0 - ok.astype(jnp.float32))
  return TrainState(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                    step=jnp.where(ok, state.step + 1, state.step), rng=state.rng), metrics


def rollout_update(state: TrainState, batch, *, num_iterations: int = 1, num_minibatches: int = 1,
                   **step_kwargs):
  """Every optimizer update of one rollout in one program: `num_iterations` (μ) passes over the batch,
  each `num_minibatches` updates on its `strided_split` parts, as `lax.scan`s. Returns the final state
  and each metric averaged over the μ · M updates (`update_skipped` summed: updates skipped)."""
  one = lambda s, mb: train_step(s, mb, **step_kwargs)  # noqa: E731
  if num_iterations * num_minibatches == 1:
    state, metrics = one(state, batch)
    return state, metrics
  parts = strided_split(batch, num_minibatches)
  epoch = lambda s, _: jax.lax.scan(one, s, parts)  # noqa: E731
  state, metrics = jax.lax.scan(epoch, state, None, length=num_iterations)  # metrics [μ, M]
  skipped = jnp.sum(metrics.pop("update_skipped"))
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics["update_skipped"] = skipped
  return state, metrics


class Trainer:
  """Holds the jitted update and preparation functions for one model, mesh and config.

  With `lora` (a `lora.LoRAConfig`) the state's params are the adapters (`lora.init_adapters`): they alone
  are in the optimizer and the checkpoint, and every program runs the decoder on `lora.merge(self.base,
  adapters)`. `self.base` is the frozen base (default: `params`; the loop sets it after a warm start or a
  restore) and is the reference model as well."""

  skips_nonfinite = True  # `train_step` leaves the state unchanged on a non-finite update (loop.guarded_update)

  def __init__(self, graphdef, params, mesh: Mesh, *, tx, schedule, loss_cfg: LossConfig,
               adv_cfg: AdvantageConfig, group_size: int, grad_accum: int = 1,
               rescore_old: bool = False, num_iterations: int = 1, num_minibatches: int = 1,
               score_parts: int | None = None, lora: lora_lib.LoRAConfig | None = None):
    hostmem.trim_after_compiles()  # compile garbage goes back to the OS before the programs run
    self.param_shardings = shd.param_shardings(params, mesh)  # the decoder's (and the LoRA base's)
    graphdef = model_lib.bind_mesh(graphdef, self.param_shardings, mesh)
    self.graphdef, self.mesh, self.tx, self.lora = graphdef, mesh, tx, lora
    self.base = params if lora is not None else None
    repl = shd.replicated(mesh)
    # What the optimizer updates: the params, or with LoRA the adapters.
    trainable = (params if lora is None else
                 jax.eval_shape(lambda p: lora_lib.init_adapters(p, lora, jax.random.PRNGKey(0)), params))
    self.trainable_shardings = shd.param_shardings(trainable, mesh)
    self.num_trainable = lora_lib.num_params(trainable)
    opt_shape = jax.eval_shape(tx.init, trainable)
    # Optimizer moments shard like the parameters they follow; scalars (counts) are replicated.
    self.opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, opt_shape, self.trainable_shardings, transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    self.state_shardings = TrainState(params=self.trainable_shardings, opt_state=self.opt_shardings,
                                      step=repl, rng=repl)

    def init(p, rng):
      t = p if lora is None else lora_lib.init_adapters(p, lora,
                                                         jax.random.fold_in(rng, lora_lib.INIT_SALT))
      return TrainState(t, tx.init(t), jnp.zeros((), jnp.int32), rng)

    self._init = jax.jit(init, out_shardings=self.state_shardings)
    # With LoRA every jitted function takes the frozen base as one more (last) argument, `*base`, and
    # `merge(*base)` maps the adapters to the decoder's params; without LoRA it is None.
    merge = lambda *base: (functools.partial(lora_lib.merge, base[0], scale=lora.scale)  # noqa: E731
                           if base else None)
    base_sh = () if lora is None else (self.param_shardings,)
    step_kwargs = dict(graphdef=graphdef, tx=tx, schedule=schedule, cfg=loss_cfg, grad_accum=grad_accum)
    # Every batch array has the N rows first: one spec shards them all over the data axes.
    rows = self.row_sharding = shd.batch_sharding(mesh, 1)
    self._step = jax.jit(
        lambda s, b, *base: train_step(s, b, merge=merge(*base), **step_kwargs),
        in_shardings=(self.state_shardings, rows, *base_sh), out_shardings=(self.state_shardings, repl),
        donate_argnums=0)
    self._update = jax.jit(
        lambda s, b, *base: rollout_update(s, b, num_iterations=num_iterations,
                                           num_minibatches=num_minibatches, merge=merge(*base),
                                           **step_kwargs),
        in_shardings=(self.state_shardings, rows, *base_sh), out_shardings=(self.state_shardings, repl),
        donate_argnums=0)
    need_ref = loss_cfg.beta != 0.0 or (adv_cfg.kl_in_reward and adv_cfg.beta != 0.0)
    self.need_ref = need_ref
    # Scoring for the reference / old policy runs in as many parts as the update has micro-batches.
    self.score_parts = num_minibatches * grad_accum if score_parts is None else score_parts
    # The loop keeps reference params: for the KL term, or with LoRA as the frozen base (the same tree).
    self.keeps_ref = need_ref or lora is not None
    self._prepare = jax.jit(
        lambda p, r, b, rew, valid, *base: prepare_batch(
            graphdef, merge(*base)(p) if base else p, r, b, rew, valid, group_size=group_size,
            cfg=adv_cfg, rescore_old=rescore_old, temperature=loss_cfg.temperature,
            score_parts=self.score_parts),
        out_shardings=(rows, repl))
    if lora is not None:  # only the adapted weights are computed; the other leaves stay the base's
      self._merged_targets = jax.jit(
          lambda base, a: lora_lib.merged_targets(base, a, lora.scale),
          out_shardings=lora_lib.targets_of(self.param_shardings, lora))

  def init_state(self, params, rng) -> TrainState:
    """The initial state: `params` and fresh optimizer moments, or with LoRA new adapters (B = 0) for the
    base `params` drawn from `rng`."""
    return self._init(params, rng)

  def policy_params(self, params):
    """The decoder's params of the policy whose state params are `params`: those, or with LoRA the base
    with the adapters merged in (for the sampler, evaluation and export). A new array per adapted
    projection; every other leaf is the base's own."""
    if self.lora is None:
      return params
    return lora_lib.replace(self.base, self._merged_targets(self.base, params))

  def shard_batch(self, batch: dict, num_rows: int | None = None) -> dict:
    """Host arrays -> global device arrays `[N, ...]` sharded over the batch axes. With several
    processes each passes its own rows (`sharding.process_rows`) and `num_rows` = N; on one process the
    arrays are the whole batch."""
    if jax.process_count() == 1:
      return jax.device_put(batch, self.row_sharding)
    return {k: shd.global_rows(v, self.mesh, num_rows or v.shape[0]) for k, v in batch.items()}

  @property
  def _base(self) -> tuple:
    return () if self.lora is None else (self.base,)

  def prepare(self, params, ref_params, batch, rewards_BxG, valid_N):
    """`prepare_batch` on device; host `rewards_BxG` / `valid_N` (the same on every process) go in as
    replicated global arrays."""
    if jax.process_count() > 1:
      rewards_BxG, valid_N = (shd.global_replicated(x, self.mesh) if isinstance(x, np.ndarray) else x
                              for x in (rewards_BxG, valid_N))
    return self._prepare(params, ref_params if self.need_ref else None, batch, rewards_BxG, valid_N,
                         *self._base)

  def step(self, state: TrainState, batch: dict):
    """One optimizer update on the whole batch (`train_step`); `state` is donated."""
    return self._step(state, batch, *self._base)

  def update(self, state: TrainState, batch: dict):
    """All μ × minibatch updates of one rollout in one jitted program (`rollout_update`); `state` is
    donated. Returns `(state, metrics averaged over the updates)`."""
    return self._update(state, batch, *self._base)
