"""A whole GRPO training run on a toy task as ONE pure function of arrays (purejaxrl-style).

`make_train(toy, spec)` returns `train(rng, knobs) -> (curves, final, params)`: `lax.scan` over the steps
of sample -> reward -> advantages -> loss -> update, so `jax.vmap` runs many seeds, and many arms, in one
compiled program. Every piece of GRPO math comes from the package: `advantages.group_advantages` /
`process_advantages`, `losses.grpo_loss` / `kl_penalty` / `token_logprobs`, and the sampler's
`SamplingParams.sample` / `.logprobs` draw the tokens.

Settings come in two kinds. A `Spec` holds what changes the compiled program (shapes, the loss
aggregation, the clip range, the KL estimator, ...). The `KNOBS` are traced float32 scalars — the
learning rate and β, but also the advantage estimator, the supervision, the KL placement, the loss
filters, the soft overlong penalty, reference resets, μ, the sampler's temperature and the rollout
correction — so arms that differ only in knobs share one compiled program and are vmapped together (each
cheap alternative is computed and one is selected). The loss objective (`Spec.loss_type`) is static.
`arm_program(**settings)` splits a flat dict of settings into the two.

A toy (see `grpo_jax.toys`) is a frozen dataclass with
  vocab_size, completion_len (T), eos_id (or None), has_process (exact step rewards exist)
  init_params() -> params pytree;  draw_prompts(key, n) -> ctx pytree with leading dim n
  logits(params, ctx_N, tokens_NxT) -> [N, T, V]: teacher-forced, position t sees only tokens < t
  step_logits(params, ctx_N, tokens_NxT, t) -> [N, V]: `logits(...)[:, t]` for a traced t (the sampler's
                                                        call; tests check that the two agree)
  score(ctx_N, tokens_NxT, mask_NxT, truncated_N) -> Scores
  exact_metrics(params, ref_params, params0) -> {name: scalar}  (exact, from the tables, no sampling)
  diagnostics(spec, knobs, params, ref_params, grads, ctx_N, rewards_BxG) -> {name: scalar}
  final_metrics(params, key) -> {name: scalar}  (costly evaluations, jitted separately by the runner and
                                                 applied to the initial and the final policy)

Shapes: B prompts per step, G group size, N = B*G, T completion length, V vocabulary, K reward steps.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from grpo_jax import advantages as adv_lib
from grpo_jax import correction, losses
from grpo_jax.sampler import SamplingParams

# Runtime-selectable choices (index = knob value). "grpo_batch" is group_advantages(scale="batch").
ESTIMATORS = ("grpo", "dr_grpo", "rloo", "grpo_batch")
SUPERVISION = ("outcome", "process", "rft_online", "rft_offline")
KL_PLACEMENTS = ("none", "loss", "reward")
FILTERS = ("none", "mask_zero_std", "dynamic")
OVERLONG = ("none", "mask", "soft", "mask_soft")
OPTIMIZERS = ("sgd", "adam")
OLD_LOGP = ("sampler", "rescore")  # π_θold of the ratio: the sampler's log-probs, or the trainer's re-score
KNOBS = ("lr", "beta", "estimator", "supervision", "kl_in_reward", "mask_zero_std", "mask_truncated",
         "soft_overlong", "ref_reset_every", "num_iterations", "sampler_temperature", "rescore_old",
         "rollout_is", "rollout_is_sequence")


@flax.struct.dataclass
class Scores:
  rewards_N: jax.Array  # float32 [N]: the task reward (correctness)
  correct_N: jax.Array  # float32 [N]: 1 for a correct, finished answer (RFT keeps these)
  step_rewards_NxK: jax.Array  # float32 [N, K]: exact process reward of each step (K = 0 without)
  step_end_NxK: jax.Array  # int32 [N, K]: index of the last token of each step
  step_mask_NxK: jax.Array  # float32 [N, K]: 1 for steps that exist


@flax.struct.dataclass
class Rollout:
  tokens_NxT: jax.Array  # int32; pad 0 after EOS
  logp_NxT: jax.Array  # float32 sampler log-probs of the drawn tokens (0 after EOS)
  mask_NxT: jax.Array  # float32; 1 up to and including EOS
  truncated_N: jax.Array  # bool; no EOS within T tokens


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static settings: one compiled program per (toy, Spec)."""

  steps: int = 100
  prompts_per_step: int = 16  # B
  group_size: int = 8  # G
  agg: str = "seq-mean-token-mean"  # losses.aggregate mode
  kl_kind: str = "k3"  # losses.kl_penalty estimator (used when a knob puts a KL term in)
  clip_low: float = 0.2
  clip_high: float = 0.2
  ratio_level: str = "token"  # token | sequence (GSPO)
  max_iterations: int = 1  # compiled gradient steps per rollout; the knob num_iterations <= this applies
  oversample: int = 1  # > 1: DAPO dynamic sampling, draw oversample * B groups and keep B informative ones
  use_ref: bool = False  # compute reference log-probs (KL terms, reference resets)
  soft_cache: int = 3  # L_cache of DAPO's soft overlong punishment (tokens), used when the knob is on
  optimizer: str = "sgd"  # sgd | adam
  temperature: float = 1.0
  loss_type: str = "grpo"  # losses.policy_loss objective: grpo | cispo | gmpo | sapo
  # Compile the sampler/trainer mismatch path: the sampler divides its logits by the knob
  # sampler_temperature, the trainer re-scores the rollout (knob rescore_old) and the rollout-correction
  # weights of `grpo_jax.correction` (knobs rollout_is, rollout_is_sequence) multiply the loss.
  mismatch: bool = False
  rollout_is_threshold: float = 2.0  # C of correction.rollout_is_weights (TIS: min(ρ, C); MIS: [1/C, C])


def arm_program(*, steps=100, prompts_per_step=16, group_size=8, agg="seq-mean-token-mean", kl_kind="k3",
                clip_low=0.2, clip_high=0.2, ratio_level="token", num_iterations=1, optimizer="sgd",
                temperature=1.0, soft_cache=3, lr=0.0, beta=0.0, estimator="grpo", scale="group",
                supervision="outcome", kl_placement="none", filter="none", oversample=1, overlong="none",
                ref_reset_every=0, loss_type="grpo", sampler_temperature=1.0, old_logp="sampler",
                rollout_is="none", rollout_is_level="token", rollout_is_threshold=2.0
                ) -> tuple[Spec, dict[str, float]]:
  """(Spec, knob values) of one arm from its flat settings; errors name the bad setting.

  The mismatch settings (as `train.prepare_batch`): `sampler_temperature` ≠ 1 makes the behaviour policy
  μ sample from softmax(logits / (temperature · sampler_temperature)) while the trainer scores at
  `temperature`; `old_logp="rescore"` uses the trainer's re-score as π_θold instead of the sampler's
  log-probs; `rollout_is` ("tis" / "mis", at `rollout_is_level` token / sequence, threshold C) weighs the
  loss by `correction.rollout_is_weights` of π_θold/μ and needs the re-score."""
  def check(name, value, choices):
    if value not in choices:
      raise ValueError(f"{name}={value!r} is not one of {choices}")
  for name, value, choices in (("supervision", supervision, SUPERVISION), ("kl_placement", kl_placement,
                               KL_PLACEMENTS), ("filter", filter, FILTERS), ("overlong", overlong, OVERLONG),
                               ("optimizer", optimizer, OPTIMIZERS), ("scale", scale, adv_lib.SCALES),
                               ("loss_type", loss_type, losses.LOSS_TYPES), ("old_logp", old_logp, OLD_LOGP),
                               ("rollout_is", rollout_is, correction.IS_MODES),
                               ("rollout_is_level", rollout_is_level, correction.IS_LEVELS)):
    check(name, value, choices)
  if loss_type != "grpo" and ratio_level != "token":
    raise ValueError(f"ratio_level={ratio_level!r} (GSPO) needs loss_type='grpo', got loss_type={loss_type!r}")
  if not sampler_temperature > 0:
    raise ValueError(f"sampler_temperature must be > 0, got sampler_temperature={sampler_temperature!r}")
  if rollout_is != "none" and old_logp != "rescore":
    raise ValueError(f"rollout_is={rollout_is!r} weighs the trainer's π_θold against the sampler's log-probs "
                     f"and needs old_logp='rescore', got old_logp={old_logp!r}")
  if not rollout_is_threshold > 1:
    raise ValueError(f"rollout_is_threshold must be > 1, got rollout_is_threshold={rollout_is_threshold!r}")
  est = "grpo_batch" if (estimator, scale) == ("grpo", "batch") else \
      "dr_grpo" if (estimator, scale) == ("grpo", "none") else estimator
  check("estimator", est, ESTIMATORS)
  if scale == "batch" and estimator != "grpo":
    raise ValueError(f"scale='batch' only applies to estimator='grpo', got estimator={estimator!r}")
  if filter == "dynamic" and oversample < 2:
    raise ValueError(f"filter='dynamic' needs oversample >= 2, got oversample={oversample}")
  if supervision.startswith("rft") and (num_iterations != 1 or kl_placement != "none"):
    raise ValueError("supervision='rft_*' takes one SFT step per rollout (num_iterations=1) without KL")
  if kl_placement == "reward" and supervision != "outcome":
    raise ValueError("kl_placement='reward' shapes the outcome reward; use supervision='outcome'")
  if num_iterations < 1 or ref_reset_every < 0:
    raise ValueError(f"need num_iterations >= 1 and ref_reset_every >= 0, got {num_iterations}, "
                     f"{ref_reset_every}")
  use_ref = kl_placement != "none" or ref_reset_every > 0
  mismatch = sampler_temperature != 1.0 or old_logp == "rescore" or rollout_is != "none"
  spec = Spec(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size, agg=agg,
              kl_kind=kl_kind if kl_placement != "none" else "k3", clip_low=clip_low, clip_high=clip_high,
              ratio_level=ratio_level, max_iterations=num_iterations,
              oversample=oversample if filter == "dynamic" else 1, use_ref=use_ref, soft_cache=soft_cache,
              optimizer=optimizer, temperature=temperature, loss_type=loss_type, mismatch=mismatch,
              rollout_is_threshold=rollout_is_threshold if rollout_is != "none" else 2.0)
  knobs = {"lr": lr, "beta": beta if kl_placement != "none" else 0.0, "estimator": ESTIMATORS.index(est),
           "supervision": SUPERVISION.index(supervision), "kl_in_reward": kl_placement == "reward",
           "mask_zero_std": filter == "mask_zero_std", "mask_truncated": overlong in ("mask", "mask_soft"),
           "soft_overlong": overlong in ("soft", "mask_soft"), "ref_reset_every": ref_reset_every,
           "num_iterations": num_iterations, "sampler_temperature": sampler_temperature,
           "rescore_old": old_logp == "rescore", "rollout_is": correction.IS_MODES.index(rollout_is),
           "rollout_is_sequence": rollout_is_level == "sequence"}
  return spec, {k: float(v) for k, v in knobs.items()}


def program_base(spec: Spec) -> Spec:
  """`spec` without the capabilities a shared program may add (more passes, a reference, the mismatch
  path): arms whose bases are equal run as one program."""
  return dataclasses.replace(spec, max_iterations=1, use_ref=False, mismatch=False)


def merge_specs(specs) -> Spec:
  """One Spec that runs every arm of `specs` (equal but for max_iterations, use_ref and mismatch; an arm
  without the mismatch path runs in it with neutral knobs: the sampler's log-probs, weights 1)."""
  specs = list(specs)
  base = program_base(specs[0])
  for s in specs[1:]:
    if program_base(s) != base:
      raise ValueError(f"specs differ in more than max_iterations/use_ref/mismatch: {specs[0]} vs {s}")
  return dataclasses.replace(base, max_iterations=max(s.max_iterations for s in specs),
                             use_ref=any(s.use_ref for s in specs), mismatch=any(s.mismatch for s in specs))


def soft_overlong_penalty(length_N, truncated_N, max_len: int, cache_len: int):
  """DAPO Eq. 13 in tokens, as `grpo_jax.rewards.soft_overlong_penalty`: 0 up to max_len − cache_len,
  linear to −1 at max_len, −1 beyond (a truncated completion is longer than max_len).  [N] -> [N]."""
  start = max_len - cache_len
  length_N = length_N.astype(jnp.float32)
  ramp = jnp.where(length_N <= start, 0.0, (start - length_N) / cache_len)
  return jnp.where(truncated_N, -1.0, ramp)


def row_keys(key, n: int):
  """[n] typed keys `fold_in(key, b)`: row b's draws do not depend on the other rows (as the sampler)."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))


def sample(toy, params, ctx_N, key, sampling: SamplingParams, logit_divisor=None) -> Rollout:
  """Autoregressive rollout of N rows with the sampler's sampling functions; token t of row b uses
  `fold_in(fold_in(key, b), t)` like `sampler.generate`. Step t reads `toy.step_logits` on the buffer,
  which equals the teacher-forced `toy.logits(...)[:, t]` the trainer scores with, so the on-policy ratio
  is 1 up to float error. `logit_divisor` (a traced scalar) makes the sampler deliberately differ from
  the trainer: it samples from, and reports the log-probs of, the logits divided by it."""
  T = toy.completion_len
  n = jax.tree.leaves(ctx_N)[0].shape[0]
  keys_N = row_keys(key, n)

  def step(carry, t):
    tokens_NxT, done_N = carry
    logits_NxV = toy.step_logits(params, ctx_N, tokens_NxT, t)
    if logit_divisor is not None:
      logits_NxV = logits_NxV / logit_divisor
    tok_N = sampling.sample(logits_NxV, jax.vmap(jax.random.fold_in, (0, None))(keys_N, t))
    logp_N = sampling.logprobs(logits_NxV, tok_N)
    live_N = ~done_N
    tok_N = jnp.where(live_N, tok_N, 0)
    tokens_NxT = tokens_NxT.at[:, t].set(tok_N)
    if toy.eos_id is not None:
      done_N = done_N | (live_N & (tok_N == toy.eos_id))
    return (tokens_NxT, done_N), (jnp.where(live_N, logp_N, 0.0), live_N)

  init = (jnp.zeros((n, T), jnp.int32), jnp.zeros((n,), bool))
  (tokens_NxT, done_N), (logp_TxN, live_TxN) = jax.lax.scan(step, init, jnp.arange(T))
  truncated_N = ~done_N if toy.eos_id is not None else jnp.zeros((n,), bool)
  return Rollout(tokens_NxT, logp_TxN.T, live_TxN.T.astype(jnp.float32), truncated_N)


def completion_logprobs(toy, params, ctx_N, tokens_NxT, temperature):
  """[N, T] log-probs of the tokens under `params`, through `losses.token_logprobs`."""
  return losses.token_logprobs(toy.logits(params, ctx_N, tokens_NxT), tokens_NxT, temperature)


def _select_groups(idx_B, tree, group_size: int):
  """Gathers groups `idx_B` from a pytree whose leaves have a leading [B'*G] axis."""
  def pick(x):
    n_groups = x.shape[0] // group_size
    picked = x.reshape(n_groups, group_size, *x.shape[1:])[idx_B]
    return picked.reshape(idx_B.shape[0] * group_size, *x.shape[1:])  # explicit: K may be 0
  return jax.tree.map(pick, tree)


def _tree_where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def make_train(toy, spec: Spec):
  """Returns `train(rng, knobs) -> (curves {name: [steps]}, final {name: []}, params)`.

  `knobs` maps every name of `KNOBS` to a float32 scalar (see `arm_program`). `curves[m][t]` is measured
  at the START of step t (exact metrics of the policy before update t; rollout statistics of the batch
  sampled at step t); `final` holds the exact metrics after the last update and `params` the final policy.
  """
  B, G, T = spec.prompts_per_step, spec.group_size, toy.completion_len
  sampling = SamplingParams(temperature=spec.temperature)
  clip_names = ("clip_frac", "clip_frac_low", "clip_frac_high", "approx_kl_old", "ratio_max")

  def advantages_NxT(scores: Scores, rewards_BxG, knobs):
    """Every advantage the knobs can pick, computed by the package, then the chosen one.  -> [N, T]."""
    outcome = jnp.stack([adv_lib.group_advantages(rewards_BxG, "grpo"),
                         adv_lib.group_advantages(rewards_BxG, "dr_grpo"),
                         adv_lib.group_advantages(rewards_BxG, "rloo"),
                         adv_lib.group_advantages(rewards_BxG, "grpo", scale="batch")])
    outcome_N = outcome[knobs["estimator"].astype(jnp.int32)].reshape(-1)
    choices = [outcome_N[:, None], outcome_N[:, None]]
    if toy.has_process:  # DeepSeekMath §4.1.3 from the exact step rewards
      k = scores.step_rewards_NxK.shape[-1]
      choices[1] = adv_lib.process_advantages(
          scores.step_rewards_NxK.reshape(B, G, k), scores.step_end_NxK.reshape(B, G, k),
          scores.step_mask_NxK.reshape(B, G, k), T).reshape(B * G, T)
    rft = scores.correct_N[:, None]  # RFT (DeepSeekMath §5.2.1): gradient coefficient 1 on correct samples
    choices = [jnp.broadcast_to(c, (B * G, T)) for c in (*choices, rft, rft)]
    return jnp.stack(choices)[knobs["supervision"].astype(jnp.int32)]

  def loss_fn(params, ctx_N, ro: Rollout, old_logp, ref_logp, adv, loss_mask, is_weight, knobs):
    logp = completion_logprobs(toy, params, ctx_N, ro.tokens_NxT, spec.temperature)
    # RFT is supervised fine-tuning on the kept samples: with old = sg(logp) the ratio is 1 and the
    # clipped objective's gradient is exactly -adv * grad log pi, whoever sampled them (offline RFT).
    is_rft = knobs["supervision"] >= SUPERVISION.index("rft_online")
    old = jnp.where(is_rft, jax.lax.stop_gradient(logp), old_logp)
    beta_loss = knobs["beta"] * (1.0 - knobs["kl_in_reward"]) if spec.use_ref else 0.0
    return losses.grpo_loss(
        logp, old, ref_logp if spec.use_ref else None, adv, loss_mask, beta=beta_loss,
        kl_kind=spec.kl_kind, clip_low=spec.clip_low, clip_high=spec.clip_high,
        ratio_level=spec.ratio_level, agg=spec.agg, loss_type=spec.loss_type, is_weight=is_weight)

  def correct(params, ctx_N, ro: Rollout, knobs):
    """(π_θold [N, T], rollout-IS weights [N, T] or None, stats) of the mismatch path (`Spec.mismatch`):
    the trainer's re-score or the sampler's log-probs, and the weights the knobs pick (1 for "none")."""
    if not spec.mismatch:
      return ro.logp_NxT, None, {}
    rescored = jax.lax.stop_gradient(completion_logprobs(toy, params, ctx_N, ro.tokens_NxT, spec.temperature))
    old = jnp.where(knobs["rescore_old"] > 0, rescored, ro.logp_NxT)
    weights = {}
    for mode in ("tis", "mis"):
      for level in correction.IS_LEVELS:
        weights[mode, level] = correction.rollout_is_weights(
            old, ro.logp_NxT, ro.mask_NxT, mode=mode, level=level, threshold=spec.rollout_is_threshold)[0]
    seq = knobs["rollout_is_sequence"] > 0
    w = jnp.stack([ro.mask_NxT] + [jnp.where(seq, weights[m, "sequence"], weights[m, "token"])
                                   for m in ("tis", "mis")])[knobs["rollout_is"].astype(jnp.int32)]
    valid = ro.mask_NxT > 0
    n = jnp.maximum(jnp.sum(valid), 1)
    stats = {"mismatch_kl": correction.mismatch_metrics(rescored, ro.logp_NxT, ro.mask_NxT)["mismatch/kl"],
             "is_weight_mean": jnp.sum(jnp.where(valid, w, 0.0)) / n,
             "is_masked_frac": jnp.sum(valid & (w == 0)) / n}
    return old, w, stats

  def train(rng, knobs):
    params0 = toy.init_params()
    tx = optax.sgd(knobs["lr"]) if spec.optimizer == "sgd" else optax.adam(knobs["lr"])
    is_offline = knobs["supervision"] == SUPERVISION.index("rft_offline")

    def step(carry, t):
      params, opt_state, ref = carry
      key = jax.random.fold_in(rng, t)
      k_prompt, k_sample = jax.random.split(key)
      ctx_N = jax.tree.map(lambda x: jnp.repeat(x, G, axis=0), toy.draw_prompts(k_prompt, B * spec.oversample))
      ro = sample(toy, _tree_where(is_offline, params0, params), ctx_N, k_sample, sampling,
                  knobs["sampler_temperature"] if spec.mismatch else None)
      scores = toy.score(ctx_N, ro.tokens_NxT, ro.mask_NxT, ro.truncated_N)
      length_N = jnp.sum(ro.mask_NxT, -1)
      penalty_N = soft_overlong_penalty(length_N, ro.truncated_N, T, spec.soft_cache)
      scores = scores.replace(rewards_N=scores.rewards_N + knobs["soft_overlong"] * penalty_N)
      r_GxB = scores.rewards_N.reshape(-1, G)
      zero_std_all = jnp.all(r_GxB == r_GxB[:, :1], 1)
      stats = {"reward": jnp.mean(scores.rewards_N), "correct": jnp.mean(scores.correct_N),
               "dead_groups": jnp.mean(zero_std_all.astype(jnp.float32)), "length": jnp.mean(length_N),
               "truncated": jnp.mean(ro.truncated_N.astype(jnp.float32))}
      if spec.oversample > 1:
        # DAPO dynamic sampling with a static shape: informative groups first (stable order), keep B.
        idx_B = jnp.argsort(zero_std_all.astype(jnp.int32), stable=True)[:B]
        ctx_N, ro, scores = _select_groups(idx_B, (ctx_N, ro, scores), G)
      task_BxG = scores.rewards_N.reshape(B, G)
      zero_std_B = jnp.all(task_BxG == task_BxG[:, :1], axis=1)  # on the task reward, as prepare_batch
      rewards_BxG = task_BxG
      ref_logp = completion_logprobs(toy, ref, ctx_N, ro.tokens_NxT, spec.temperature) if spec.use_ref else None
      if spec.use_ref:  # KL in the reward (as train.prepare_batch): r - beta * sum_t KL(old, ref)
        kl_N = jnp.sum(losses.kl_penalty(ro.logp_NxT, ref_logp, spec.kl_kind) * ro.mask_NxT, -1)
        rewards_BxG = rewards_BxG - knobs["kl_in_reward"] * knobs["beta"] * kl_N.reshape(B, G)
      adv = advantages_NxT(scores, rewards_BxG, knobs)
      # The loss filters of train.prepare_batch (filter_zero_std, mask_truncated), switched by knobs.
      drop_N = ((knobs["mask_zero_std"] > 0) & jnp.repeat(zero_std_B, G)) | \
               ((knobs["mask_truncated"] > 0) & ro.truncated_N)
      loss_mask = ro.mask_NxT * (~drop_N)[:, None]
      stats["informative_kept"] = 1.0 - jnp.mean(zero_std_B.astype(jnp.float32))

      old_logp, is_weight, is_stats = correct(params, ctx_N, ro, knobs)
      stats.update(is_stats)
      grad_fn = jax.grad(loss_fn, has_aux=True)

      def update(p, s):
        grads, m = grad_fn(p, ctx_N, ro, old_logp, ref_logp, adv, loss_mask, is_weight, knobs)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, grads, {k: m[k] for k in clip_names}

      # The first (on-policy) gradient feeds the diagnostics; up to mu - 1 more steps reuse the rollout.
      new_params, opt_state, first_grads, m_sum = update(params, opt_state)
      if spec.max_iterations > 1:
        def inner(c, i):
          p, s, m_acc = c
          p2, s2, _, m = update(p, s)
          on = i < knobs["num_iterations"]
          return (_tree_where(on, p2, p), _tree_where(on, s2, s),
                  {k: m_acc[k] + jnp.where(on, m[k], 0.0) for k in m_acc}), None
        (new_params, opt_state, m_sum), _ = jax.lax.scan(
            inner, (new_params, opt_state, m_sum), jnp.arange(1, spec.max_iterations))
      stats.update({k: v / knobs["num_iterations"] for k, v in m_sum.items()})
      stats.update(toy.diagnostics(spec, knobs, params, ref, first_grads, ctx_N, task_BxG))
      stats.update(toy.exact_metrics(params, ref, params0))
      if spec.use_ref:  # iterative GRPO (DeepSeekMath §4.2): the reference follows the policy
        period = knobs["ref_reset_every"].astype(jnp.int32)
        reset = (period > 0) & ((t + 1) % jnp.maximum(period, 1) == 0)
        ref = _tree_where(reset, new_params, ref)
      return (new_params, opt_state, ref), stats

    carry = (params0, tx.init(params0), params0)
    (params, _, ref), curves = jax.lax.scan(step, carry, jnp.arange(spec.steps))
    return curves, toy.exact_metrics(params, ref, params0), params

  return train


def stack_knobs(rows) -> dict[str, jax.Array]:
  """[R] float32 arrays from a list of knob dicts (one per arm or swept value)."""
  return {k: jnp.asarray([r[k] for r in rows], jnp.float32) for k in KNOBS}
