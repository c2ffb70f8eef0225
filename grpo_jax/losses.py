"""GRPO losses: token log-probs, KL estimators, the clipped policy objective and its aggregation modes.

Shapes: N = B·G sequences, T completion length, V vocabulary. `mask` is [N, T], 1 on completion tokens that
count and 0 on padding / after EOS. Every function is jit-compatible: string and clip arguments are static
Python values, arrays are traced.

Masking contract: masked positions may hold anything (-inf, 1e9, NaN). Each function replaces them with 0
through `jnp.where` *before* any exp/log, so the loss is finite and masked tokens get exactly zero gradient
(multiplying by the mask after an exp would give 0·inf = NaN in the backward pass).

Arithmetic is done in float32, or float64 when given float64 inputs (bf16 inputs are upcast).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3", "low_var_kl")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
             "token-mean-global")
RATIO_LEVELS = ("token", "sequence")
LOSS_TYPES = ("grpo", "cispo", "gmpo", "sapo")
COV_CONTROLS = ("none", "clip_cov", "kl_cov")


def _upcast(x: jax.Array) -> jax.Array:
  """At least float32: bf16 log-probs lose ~3 digits, and exp() of their differences amplifies the error."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_choice(fn: str, name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{fn}: unknown {name}={value!r}; expected one of {choices}")


def token_logprobs(logits_NxTxV: jax.Array, tokens_NxT: jax.Array, temperature: float = 1.0) -> jax.Array:
  """log softmax(logits / temperature)[token], [N, T, V] × [N, T] -> [N, T] float32.

  Computed as `logits[tok]/τ − logsumexp(logits/τ)` so only the gathered column and the logsumexp reduction
  are float32 — no [N, T, V] float32 log-softmax is materialized (under jit the upcast and division fuse into
  the reduction). This is the same quantity the sampler reports, so the on-policy ratio is exactly 1.
  """
  chex.assert_rank([logits_NxTxV, tokens_NxT], [3, 2])
  chex.assert_equal_shape_prefix([logits_NxTxV, tokens_NxT], 2)
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"token_logprobs: temperature must be > 0, got temperature={temperature!r}")
  scaled_NxTxV = _upcast(logits_NxTxV) / temperature
  lse_NxT = jax.nn.logsumexp(scaled_NxTxV, axis=-1)
  picked_NxT = jnp.take_along_axis(logits_NxTxV, tokens_NxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return _upcast(picked_NxT) / temperature - lse_NxT


def token_entropy(logits_NxTxV: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Entropy H(softmax(logits / temperature)) in nats, [N, T, V] -> [N, T] float32. For metrics."""
  chex.assert_rank(logits_NxTxV, 3)
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"token_entropy: temperature must be > 0, got temperature={temperature!r}")
  scaled_NxTxV = _upcast(logits_NxTxV) / temperature
  logp_NxTxV = jax.nn.log_softmax(scaled_NxTxV, axis=-1)
  p_NxTxV = jnp.exp(logp_NxTxV)
  # Vocab entries masked to -inf have p = 0 and contribute 0 (not 0·(−inf) = NaN).
  return -jnp.sum(jnp.where(p_NxTxV > 0, p_NxTxV * logp_NxTxV, 0.0), axis=-1)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "k3") -> jax.Array:
  """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ (Schulman, "Approximating KL").

  With log r = ref_logp − logp:
    "k1": −log r = logp − ref_logp                 (unbiased, high variance, can be negative)
    "k2": ½ (log r)²                               (biased, low variance, ≥ 0)
    "k3": r − log r − 1                            (unbiased, ≥ 0; DeepSeekMath Eq. 4)
    "low_var_kl": k3 with log r clamped to [−20, 20] and the result to [−10, 10] (verl's variant: bounded).
  Elementwise; any shape. Mask (and zero masked garbage) with `aggregate`, or sanitize before calling.
  """
  _check_choice("kl_penalty", "kind", kind, KL_KINDS)
  chex.assert_equal_shape([logp, ref_logp])
  log_r = _upcast(ref_logp) - _upcast(logp)
  if kind == "k1":
    return -log_r
  if kind == "k2":
    return 0.5 * log_r**2
  if kind == "k3":
    return jnp.exp(log_r) - log_r - 1.0
  log_r = jnp.clip(log_r, -20.0, 20.0)
  return jnp.clip(jnp.exp(log_r) - log_r - 1.0, -10.0, 10.0)


def aggregate(x_NxT: jax.Array, mask_NxT: jax.Array, mode: str, norm_len=None, num_tokens=None) -> jax.Array:
  """Reduce per-token values [N, T] to a scalar under `mask` [N, T].

    "token-mean":              Σ x·m / Σ m                      (DAPO §3.3 token-level loss)
    "seq-mean-token-mean":     1/N Σ_i (Σ_t x·m / Σ_t m)        (DeepSeekMath GRPO, Eq. 3)
    "seq-mean-token-sum":      1/N Σ_i Σ_t x·m
    "seq-mean-token-sum-norm": Σ x·m / (N · norm_len)           (Dr. GRPO §3.2; norm_len defaults to T)
    "token-mean-global":       Σ x·m / num_tokens               (DAPO §3.3 over a whole batch that is split)

  The seq-mean modes average over ALL N sequences (as TRL and verl do): a fully-masked sequence contributes 0
  and still counts in the 1/N. That keeps the denominator a static constant, so a data-parallel mean of
  per-shard losses equals the global loss. Counts are clamped to ≥ 1, so fully-masked sequences and a fully
  masked batch give a finite 0 and zero gradients.

  "token-mean-global" divides by a token count given from outside (a Python number or a traced scalar): when
  a batch is split into microbatches whose losses are averaged, "token-mean" normalizes each microbatch by
  its own count, which weights tokens of short microbatches more; passing each microbatch the share of the
  whole batch's count it stands for (`train.loss_fn` does) makes the average the full-batch token mean.
  """
  _check_choice("aggregate", "mode", mode, AGG_MODES)
  chex.assert_rank([x_NxT, mask_NxT], 2)
  chex.assert_equal_shape([x_NxT, mask_NxT])
  if norm_len is not None and mode != "seq-mean-token-sum-norm":
    raise ValueError(f"aggregate: norm_len={norm_len!r} only applies to mode='seq-mean-token-sum-norm', "
                     f"got mode={mode!r}")
  if isinstance(norm_len, (int, float)) and not norm_len > 0:
    raise ValueError(f"aggregate: norm_len must be > 0, got norm_len={norm_len!r}")
  if (num_tokens is None) != (mode != "token-mean-global"):
    raise ValueError(f"aggregate: num_tokens is required by, and only used with, mode='token-mean-global'; "
                     f"got mode={mode!r}, num_tokens={num_tokens!r}")
  N, T = x_NxT.shape
  x_NxT = _upcast(x_NxT)
  valid_NxT = mask_NxT.astype(bool)
  m_NxT = valid_NxT.astype(x_NxT.dtype)
  xm_NxT = jnp.where(valid_NxT, x_NxT, 0.0)  # where, not x·m: masked inf/NaN must not leak
  if mode == "token-mean":
    return jnp.sum(xm_NxT) / jnp.maximum(jnp.sum(m_NxT), 1.0)
  if mode == "token-mean-global":
    # Not clamped to 1: a microbatch's share of the global count may be fractional. 0 means no token counts.
    return jnp.sum(xm_NxT) / jnp.where(num_tokens > 0, num_tokens, 1.0)
  if mode == "seq-mean-token-mean":
    per_seq_N = jnp.sum(xm_NxT, axis=-1) / jnp.maximum(jnp.sum(m_NxT, axis=-1), 1.0)
    return jnp.sum(per_seq_N) / N
  if mode == "seq-mean-token-sum":
    return jnp.sum(xm_NxT) / N
  return jnp.sum(xm_NxT) / (N * (T if norm_len is None else norm_len))


def _masked_stats(x_NxT: jax.Array, valid_NxT: jax.Array):
  """(mean, max, min) of x over valid tokens; all 0 when no token is valid."""
  count = jnp.sum(valid_NxT)
  mean = jnp.sum(jnp.where(valid_NxT, x_NxT, 0.0)) / jnp.maximum(count, 1)
  mx = jnp.max(jnp.where(valid_NxT, x_NxT, -jnp.inf))
  mn = jnp.min(jnp.where(valid_NxT, x_NxT, jnp.inf))
  return mean, jnp.where(count > 0, mx, 0.0), jnp.where(count > 0, mn, 0.0)


def cispo_token_loss(logp_NxT: jax.Array, old_logp_NxT: jax.Array, adv_NxT: jax.Array, *, clip_low: float,
                     clip_high: float) -> jax.Array:
  """CISPO per-token loss, MiniMax-M1 (MiniMax 2025, arXiv 2506.13585) Eq. 4–5.  [N, T] -> [N, T].

      J_CISPO = E[ 1/Σ_i|o_i| · Σ_i Σ_t sg(r̂_{i,t}) · Â_{i,t} · log π_θ(o_{i,t}) ]              (Eq. 4)
      r̂_{i,t} = clip(r_{i,t}, 1 − ε_low^IS, 1 + ε_high^IS),  r = π_θ / π_θold                 (Eq. 5)

  so ℓ = −sg(r̂)·Â·log π_θ: a REINFORCE gradient sg(r̂)·Â·∇log π_θ for every token. The clip bounds the
  importance weight, but unlike PPO's clip it never removes a token's gradient. ε_low = `clip_low`,
  ε_high = `clip_high`; `clip_low = 1` is no lower bound (the paper sets ε_low^IS large). Eq. 4 is a token
  mean over the batch (`agg="token-mean"` or "token-mean-global").
  """
  weight = jnp.clip(jnp.exp(logp_NxT - old_logp_NxT), 1.0 - clip_low, 1.0 + clip_high)
  return -jax.lax.stop_gradient(weight) * adv_NxT * logp_NxT


def sapo_token_loss(log_ratio_NxT: jax.Array, adv_NxT: jax.Array, *, tau_pos: float = 1.0,
                    tau_neg: float = 1.05) -> jax.Array:
  """SAPO per-token loss, Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv 2511.20347), the
  soft-gated surrogate of its §3.  [N, T] -> [N, T].

      J_SAPO = E[ 1/G Σ_i 1/|y_i| Σ_t f_{i,t}(r_{i,t}) · Â_{i,t} ],  f_{i,t}(x) = σ(τ_{i,t}(x − 1))·4/τ_{i,t},
      τ_{i,t} = τ_pos if Â_{i,t} > 0 else τ_neg,

  so ℓ = −f(r)·Â. The gate's slope f'(r) = 4σ(1 − σ) is 1 at r = 1 (the on-policy gradient is GRPO's) and
  decays smoothly as r leaves 1, faster for a larger τ: a soft trust region instead of a hard clip. The paper
  uses τ_pos = 1.0, τ_neg = 1.05 and the sequence-mean-token-mean aggregation.
  """
  tau = jnp.where(adv_NxT > 0, tau_pos, tau_neg)
  # exp() of a clamped log-ratio: beyond |20| the gate is flat to float precision, and an infinite ratio
  # would make σ'·r = 0·inf = NaN in the backward pass.
  ratio = jnp.exp(jnp.clip(log_ratio_NxT, -20.0, 20.0))
  return -jax.nn.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * adv_NxT


def gmpo_sequence_loss(log_ratio_NxT: jax.Array, adv_NxT: jax.Array, valid_NxT: jax.Array, *,
                       clip_low: float = 0.4, clip_high: float = 0.4):
  """GMPO per-sequence loss, Geometric-Mean Policy Optimization (Zhao et al. 2025, arXiv 2507.20673), the
  objective J_GMPO of its §3.  -> (loss [N], clipped [N, T] bool).

      J_GMPO = E[ 1/G Σ_i ( Π_{t=1}^{|o_i|} |ρ̃_{i,t} · Â_i| )^{1/|o_i|} · sgn(Â_i) ]

  with each token ratio clipped in log space before the geometric mean, pessimistically for the sign of Â:
      log ρ̃_{i,t} = sgn(Â)·min(sgn(Â)·log ρ_{i,t}, sgn(Â)·clip(log ρ_{i,t}, −ε_low, ε_high)).
  Since (Π_t |ρ̃ Â|)^{1/|o|}·sgn(Â) = Â·exp(mean_t log ρ̃), the loss is ℓ_i = −Â_i·exp(mean_t log ρ̃_{i,t}),
  means over the valid tokens of sequence i; Â_i is the masked token mean of the advantages (the outcome
  advantage). ε_low = `clip_low`, ε_high = `clip_high` are log-space bounds (paper: 0.4, i.e. ratios in
  (e^−0.4, e^0.4)). The paper averages ℓ_i over sequences (agg "seq-mean-token-mean" in `policy_loss`).
  """
  sgn = jnp.sign(adv_NxT)
  clipped_NxT = jnp.clip(log_ratio_NxT, -clip_low, clip_high)
  log_ratio_clip_NxT = sgn * jnp.minimum(sgn * log_ratio_NxT, sgn * clipped_NxT)
  m = valid_NxT.astype(log_ratio_NxT.dtype)
  count_N = jnp.maximum(jnp.sum(m, axis=-1), 1.0)
  mean_log_ratio_N = jnp.sum(log_ratio_clip_NxT * m, axis=-1) / count_N
  adv_N = jnp.sum(adv_NxT * m, axis=-1) / count_N
  return -adv_N * jnp.exp(mean_log_ratio_N), valid_NxT & (log_ratio_clip_NxT != log_ratio_NxT)


def covariance_tokens(logp_NxT: jax.Array, adv_NxT: jax.Array, valid_NxT: jax.Array, *, mode: str,
                      ratio: float, bounds=(1.0, 5.0), noise_NxT: jax.Array | None = None,
                      exclude_NxT: jax.Array | None = None) -> jax.Array:
  """The high-covariance tokens of Clip-Cov / KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for
  Reasoning LMs", arXiv 2505.22617, §4), bool [N, T].

  Each valid token's centred covariance of log-prob and advantage, means over the valid tokens of the batch:
      Cov_{i,t} = (log π_θ(y_{i,t}) − mean log π_θ) · (Â_{i,t} − mean Â)          (log π_θ detached)
  With n valid tokens:
    "clip_cov": I_clip = max(⌊ratio·n⌋, 1) tokens drawn uniformly among those with ω_low < Cov < ω_high
                (`bounds`), not in `exclude_NxT` (the tokens a PPO clip already stops); "uniformly" = the
                smallest values of `noise_NxT` (i.i.d. uniform, given by the caller: the loss has no key);
    "kl_cov":   I_KL = the max(⌊ratio·n⌋, 1) valid tokens of largest Cov (ties at the cut are all kept).
  The paper uses ratio r = 2e-4 with (ω_low, ω_high) = (1, 5) for Clip-Cov and k = 2e-3 (7B) for KL-Cov.
  """
  valid_NxT = valid_NxT.astype(bool)
  count = jnp.sum(valid_NxT)
  mean = lambda x: jnp.sum(jnp.where(valid_NxT, x, 0.0)) / jnp.maximum(count, 1)  # noqa: E731
  logp_NxT = jax.lax.stop_gradient(logp_NxT)
  cov_NxT = (logp_NxT - mean(logp_NxT)) * (adv_NxT - mean(adv_NxT))
  k = jnp.maximum(jnp.floor(ratio * count).astype(jnp.int32), 1)
  if mode == "kl_cov":
    score = jnp.where(valid_NxT, cov_NxT, -jnp.inf).reshape(-1)
    kth = jnp.take(jnp.sort(score)[::-1], k - 1)
    return valid_NxT & (cov_NxT >= kth)
  if noise_NxT is None:
    raise ValueError("covariance_tokens: mode='clip_cov' draws tokens at random and needs noise_NxT")
  eligible = valid_NxT & (cov_NxT > bounds[0]) & (cov_NxT < bounds[1])
  if exclude_NxT is not None:
    eligible = eligible & ~exclude_NxT
  score = jnp.where(eligible, noise_NxT, jnp.inf)
  kth = jnp.take(jnp.sort(score.reshape(-1)), k - 1)  # inf when fewer than k are eligible: take them all
  return eligible & (score <= kth)


def token_uniform_noise(tokens_NxT: jax.Array, logp_NxT: jax.Array) -> jax.Array:
  """Per-token pseudo-random numbers in [0, 1), [N, T]: a hash (murmur3's finalizer) of each token's id,
  position and the float bits of its log-prob. Deterministic (a rollout's batch always gives the same
  draw; different rollouts give different ones) and elementwise (no key, no communication across shards):
  the randomness Clip-Cov's selection needs inside a loss that takes no PRNG key."""
  n, t = tokens_NxT.shape
  pos = jnp.arange(n * t, dtype=jnp.uint32).reshape(n, t)
  h = (jax.lax.bitcast_convert_type(logp_NxT.astype(jnp.float32), jnp.uint32)
       ^ (tokens_NxT.astype(jnp.uint32) * jnp.uint32(0x9E3779B1)) ^ (pos * jnp.uint32(0x85EBCA77)))
  for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
    h = (h ^ (h >> shift)) * jnp.uint32(mult)
  h = h ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) * 2.0**-24


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float | None = None,
                ratio_level: str = "token", agg: str = "seq-mean-token-mean", norm_len=None,
                num_tokens=None, loss_type: str = "grpo", is_weight: jax.Array | None = None,
                sapo_tau=(1.0, 1.05), cov_control: str = "none", cov_ratio: float = 2e-4,
                cov_bounds=(1.0, 5.0), kl_cov_coef: float = 1.0, cov_noise: jax.Array | None = None):
  """Policy loss of one of four objectives -> (scalar loss, metrics).

  Args:
    logp, old_logp: [N, T] log-probs of the sampled tokens under π_θ (differentiated) and π_θold.
    advantages: [N] (outcome, broadcast over tokens) or [N, T] (process supervision).
    mask: [N, T] 1 on tokens that count.
    is_weight: optional [N, T] rollout-correction weights (`correction.rollout_is_weights`), constants that
      multiply each token's loss (for "gmpo": each sequence's loss by their masked geometric mean).
  `loss_type="grpo"` (the default), the clipped surrogate (PPO/GRPO, DeepSeekMath Eq. 3). Per token, with
  ρ = π_θ/π_θold = exp(logp − old_logp) (a log-space difference, never a probability ratio):
      ℓ = max(−A·ρ, −A·clip(ρ, 1 − clip_low, 1 + clip_high))
  clip_low ≠ clip_high is DAPO's clip-higher (Yu et al. 2025, §3.1). With `clip_c` > 1 (dual-clip PPO,
  Ye et al. 2020) tokens with A < 0 use min(ℓ, −A·clip_c), bounding the loss when ρ ≫ 1.
  ratio_level="sequence" is GSPO (Zheng et al. 2025, GSPO-token Eq. 13): s_i = exp(masked-mean_t(logp −
  old_logp)), ρ_{i,t} = sg[s_i]·π_θ/sg[π_θ] — its value is s_i and its gradient s_i·∇logp_t; clipping then
  acts per sequence (GSPO uses much smaller clip ranges, e.g. 3e-4 / 4e-4).
  `cov_control` (grpo only; Cui et al. 2025 §4, see `covariance_tokens`): "clip_cov" zeroes the loss — and so
  the gradient — of the Clip-Cov tokens I_clip (L_Clip-Cov); "kl_cov" is L_KL-Cov: the unclipped −A·ρ for
  every token (the paper drops the PPO clip) plus `kl_cov_coef`·|log ρ| on the top-covariance tokens I_KL.
  `loss_type="cispo"`: `cispo_token_loss` (clip_low / clip_high bound the detached IS weight; clip_low ≤ 1).
  `loss_type="sapo"`: `sapo_token_loss` with (τ_pos, τ_neg) = `sapo_tau`; no clip.
  `loss_type="gmpo"`: `gmpo_sequence_loss` with the log-space bounds (clip_low, clip_high), each sequence's
  loss on each of its valid tokens: "seq-mean-token-mean" is the paper's 1/G Σ_i; a token mean weights
  sequence i by its length.
  Then `aggregate(ℓ, mask, agg, norm_len, num_tokens)`.

  Metrics (scalars; fractions and ratio statistics are means over valid tokens, all 0 for an empty mask):
    clip_frac_low / clip_frac_high: grpo: A < 0 and ρ < 1 − clip_low / A > 0 and ρ > 1 + clip_high (the clip
                   is active); cispo: the IS weight is clipped below / above; gmpo: the log-ratio is clipped
                   with A < 0 / A > 0; sapo and kl_cov: 0.  clip_frac = low + high;
    dual_clip_frac (only with clip_c)  A < 0 and ρ > clip_c;  cov_frac (with cov_control) |I| / n;
    approx_kl_old  mean of k3 = (ρ_t − 1) − log ρ_t, an estimate of KL(π_θold ‖ π_θ) from π_θold's samples,
                   always from the token ratio ρ_t;
    ratio_mean / ratio_max / ratio_min  of the ρ of the grpo loss (s_i under GSPO), else of ρ_t;
    pg_loss  the aggregated loss.
  """
  _check_choice("policy_loss", "loss_type", loss_type, LOSS_TYPES)
  _check_choice("policy_loss", "ratio_level", ratio_level, RATIO_LEVELS)
  _check_choice("policy_loss", "agg", agg, AGG_MODES)
  _check_choice("policy_loss", "cov_control", cov_control, COV_CONTROLS)
  if loss_type != "grpo" and (ratio_level != "token" or clip_c is not None or cov_control != "none"):
    raise ValueError(f"policy_loss: ratio_level='sequence' (GSPO), clip_c (dual clip) and cov_control modify "
                     f"the GRPO clip and need loss_type='grpo'; got loss_type={loss_type!r}, ratio_level="
                     f"{ratio_level!r}, clip_c={clip_c!r}, cov_control={cov_control!r}")
  max_low = {"cispo": 1.0, "gmpo": float("inf")}.get(loss_type)
  ok = 0 <= clip_low <= max_low if max_low else 0 <= clip_low < 1
  if not (ok and clip_high >= 0):
    raise ValueError(f"policy_loss: need 0 <= clip_low {'<= ' + str(max_low) if max_low else '< 1'} and "
                     f"clip_high >= 0 for loss_type={loss_type!r}, got clip_low={clip_low!r}, "
                     f"clip_high={clip_high!r}")
  if clip_c is not None and not clip_c > 1:
    raise ValueError(f"policy_loss: dual-clip constant must be > 1, got clip_c={clip_c!r}")
  chex.assert_rank([logp, old_logp, mask], 2)
  chex.assert_equal_shape([logp, old_logp, mask])
  chex.assert_rank(advantages, {1, 2})
  if advantages.ndim == 1:
    chex.assert_shape(advantages, logp.shape[:1])
    advantages = jnp.broadcast_to(advantages[:, None], logp.shape)
  else:
    chex.assert_equal_shape([advantages, logp])

  valid = mask.astype(bool)
  # Zero masked garbage before exp(): gradients into masked tokens are then exactly 0 (see module docstring).
  logp = jnp.where(valid, _upcast(logp), 0.0)
  old_logp = jnp.where(valid, _upcast(old_logp), 0.0)
  adv = jnp.where(valid, _upcast(advantages), 0.0)
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  no_clip = jnp.zeros_like(valid)
  n_valid = jnp.maximum(jnp.sum(valid), 1)

  def frac(cond):
    return jnp.sum(valid & cond) / n_valid

  extra = {}
  if loss_type == "grpo":
    if ratio_level == "sequence":
      m = valid.astype(log_ratio.dtype)
      seq_log_ratio_N = jnp.sum(log_ratio * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
      s_N = jax.lax.stop_gradient(jnp.exp(seq_log_ratio_N))
      ratio = s_N[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp))
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = unclipped if cov_control == "kl_cov" else jnp.maximum(unclipped, clipped)
    if clip_c is not None:
      per_token = jnp.where(adv < 0, jnp.minimum(per_token, -adv * clip_c), per_token)
    r = jax.lax.stop_gradient(ratio)
    low, high = (adv < 0) & (r < 1.0 - clip_low), (adv > 0) & (r > 1.0 + clip_high)
    if clip_c is not None:
      extra["dual_clip_frac"] = frac((adv < 0) & (r > clip_c))
    if cov_control != "none":
      chosen = covariance_tokens(logp, adv, valid, mode=cov_control, ratio=cov_ratio, bounds=cov_bounds,
                                 noise_NxT=cov_noise, exclude_NxT=clipped > unclipped)
      if cov_control == "clip_cov":
        per_token = jnp.where(chosen, 0.0, per_token)
      else:
        per_token = per_token + jnp.where(chosen, kl_cov_coef * jnp.abs(log_ratio), 0.0)
        low, high = no_clip, no_clip
      extra["cov_frac"] = frac(chosen)
  elif loss_type == "cispo":
    per_token = cispo_token_loss(logp, old_logp, adv, clip_low=clip_low, clip_high=clip_high)
    r = jax.lax.stop_gradient(ratio)
    low, high = r < 1.0 - clip_low, r > 1.0 + clip_high
  elif loss_type == "sapo":
    per_token = sapo_token_loss(log_ratio, adv, tau_pos=sapo_tau[0], tau_neg=sapo_tau[1])
    r, low, high = jax.lax.stop_gradient(ratio), no_clip, no_clip
  else:
    seq_loss_N, clipped_NxT = gmpo_sequence_loss(log_ratio, adv, valid, clip_low=clip_low,
                                                 clip_high=clip_high)
    per_token = jnp.broadcast_to(seq_loss_N[:, None], logp.shape)
    r = jax.lax.stop_gradient(ratio)
    low, high = clipped_NxT & (adv < 0), clipped_NxT & (adv > 0)

  if is_weight is not None:
    chex.assert_equal_shape([is_weight, logp])
    w = jax.lax.stop_gradient(jnp.where(valid, _upcast(is_weight), 0.0))
    if loss_type == "gmpo":  # one weight per sequence: the geometric mean, exact for sequence-level weights
      m = valid.astype(w.dtype)
      log_w = jnp.where(valid, jnp.log(jnp.where(valid, w, 1.0)), 0.0)  # log 0 = −inf: weight 0
      w = jnp.exp(jnp.sum(log_w, -1) / jnp.maximum(jnp.sum(m, -1), 1.0))[:, None]
    per_token = per_token * w
  loss = aggregate(per_token, valid, agg, norm_len, num_tokens)

  clip_low_frac, clip_high_frac = frac(low), frac(high)
  ratio_mean, ratio_max, ratio_min = _masked_stats(r, valid)
  k3_old = jnp.expm1(log_ratio) - log_ratio  # (ρ − 1) − log ρ, ≥ 0; expm1 keeps it accurate near ρ = 1
  metrics = {
      "pg_loss": loss,
      "clip_frac_low": clip_low_frac,
      "clip_frac_high": clip_high_frac,
      "clip_frac": clip_low_frac + clip_high_frac,
      "approx_kl_old": _masked_stats(k3_old, valid)[0],
      "ratio_mean": ratio_mean,
      "ratio_max": ratio_max,
      "ratio_min": ratio_min,
      **extra,
  }
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None, advantages: jax.Array,
              mask: jax.Array, *, beta: float = 0.0, kl_kind: str = "k3", agg: str = "seq-mean-token-mean",
              norm_len=None, num_tokens=None, entropy: jax.Array | None = None, entropy_coef: float = 0.0,
              **policy_kwargs):
  """GRPO objective (DeepSeekMath Eq. 3, negated): policy_loss + β · aggregate(kl_penalty(logp, ref_logp))
  − entropy_coef · aggregate(entropy).

  The KL and entropy terms use the same aggregation `agg` / `norm_len` / `num_tokens` as the policy term.
  When `beta` is the Python number 0, the KL term is skipped and `ref_logp` may be None (no reference forward
  pass needed); a given `ref_logp` is then only used for the "kl" metric. A traced or non-zero `beta` requires
  `ref_logp`. The entropy bonus is the c₂·S[π_θ] term of PPO's objective (Schulman et al. 2017, Eq. 9):
  `entropy` [N, T] is the differentiable per-token entropy of π_θ (`token_entropy`); it is needed only for a
  non-zero `entropy_coef` (negative values penalize entropy).

  Args: as `policy_loss` (its keyword arguments pass through `policy_kwargs`), plus ref_logp [N, T] (or None),
    beta, kl_kind (see `kl_penalty`), entropy, entropy_coef.
  Returns: (loss, metrics) with the `policy_loss` metrics plus "loss", "kl" when ref_logp is given (masked
  token-mean of the chosen estimator, whatever `agg` is) and "entropy_bonus" (the aggregated entropy) with
  an entropy coefficient.
  """
  _check_choice("grpo_loss", "kl_kind", kl_kind, KL_KINDS)
  skip_kl = isinstance(beta, (int, float)) and beta == 0
  if ref_logp is None and not skip_kl:
    raise ValueError(f"grpo_loss: beta={beta!r} needs ref_logp, got None (pass beta=0.0 to disable the KL)")
  skip_entropy = isinstance(entropy_coef, (int, float)) and entropy_coef == 0
  if entropy is None and not skip_entropy:
    raise ValueError(f"grpo_loss: entropy_coef={entropy_coef!r} needs the per-token entropy, got None")
  loss, metrics = policy_loss(logp, old_logp, advantages, mask, agg=agg, norm_len=norm_len,
                              num_tokens=num_tokens, **policy_kwargs)
  valid = mask.astype(bool)
  if ref_logp is not None:
    chex.assert_equal_shape([ref_logp, logp])
    # Sanitize masked positions before the exp() inside k3 (zero gradient, no 0·inf).
    kl_NxT = kl_penalty(jnp.where(valid, _upcast(logp), 0.0), jnp.where(valid, _upcast(ref_logp), 0.0),
                        kl_kind)
    metrics["kl"] = jax.lax.stop_gradient(aggregate(kl_NxT, valid, "token-mean"))
    if not skip_kl:
      loss = loss + beta * aggregate(kl_NxT, valid, agg, norm_len, num_tokens)
  if not skip_entropy:
    chex.assert_equal_shape([entropy, logp])
    bonus = aggregate(entropy, valid, agg, norm_len, num_tokens)
    loss = loss - entropy_coef * bonus
    metrics["entropy_bonus"] = jax.lax.stop_gradient(bonus)
  metrics["loss"] = jax.lax.stop_gradient(loss)
  return loss, metrics
