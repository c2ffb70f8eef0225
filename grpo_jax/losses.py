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
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence")


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


def aggregate(x_NxT: jax.Array, mask_NxT: jax.Array, mode: str, norm_len=None) -> jax.Array:
  """Reduce per-token values [N, T] to a scalar under `mask` [N, T].

    "token-mean":              Σ x·m / Σ m                      (DAPO §3.3 token-level loss)
    "seq-mean-token-mean":     1/N Σ_i (Σ_t x·m / Σ_t m)        (DeepSeekMath GRPO, Eq. 3)
    "seq-mean-token-sum":      1/N Σ_i Σ_t x·m
    "seq-mean-token-sum-norm": Σ x·m / (N · norm_len)           (Dr. GRPO §3.2; norm_len defaults to T)

  The seq-mean modes average over ALL N sequences (as TRL and verl do): a fully-masked sequence contributes 0
  and still counts in the 1/N. That keeps the denominator a static constant, so a data-parallel mean of
  per-shard losses equals the global loss. Counts are clamped to ≥ 1, so fully-masked sequences and a fully
  masked batch give a finite 0 and zero gradients.
  """
  _check_choice("aggregate", "mode", mode, AGG_MODES)
  chex.assert_rank([x_NxT, mask_NxT], 2)
  chex.assert_equal_shape([x_NxT, mask_NxT])
  if norm_len is not None and mode != "seq-mean-token-sum-norm":
    raise ValueError(f"aggregate: norm_len={norm_len!r} only applies to mode='seq-mean-token-sum-norm', "
                     f"got mode={mode!r}")
  if isinstance(norm_len, (int, float)) and not norm_len > 0:
    raise ValueError(f"aggregate: norm_len must be > 0, got norm_len={norm_len!r}")
  N, T = x_NxT.shape
  x_NxT = _upcast(x_NxT)
  valid_NxT = mask_NxT.astype(bool)
  m_NxT = valid_NxT.astype(x_NxT.dtype)
  xm_NxT = jnp.where(valid_NxT, x_NxT, 0.0)  # where, not x·m: masked inf/NaN must not leak
  if mode == "token-mean":
    return jnp.sum(xm_NxT) / jnp.maximum(jnp.sum(m_NxT), 1.0)
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


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float | None = None,
                ratio_level: str = "token", agg: str = "seq-mean-token-mean", norm_len=None):
  """Clipped surrogate policy loss (PPO/GRPO, DeepSeekMath Eq. 3) -> (scalar loss, metrics).

  Args:
    logp, old_logp: [N, T] log-probs of the sampled tokens under π_θ (differentiated) and π_θold.
    advantages: [N] (outcome, broadcast over tokens) or [N, T] (process supervision).
    mask: [N, T] 1 on tokens that count.
  Per token, with ρ = π_θ/π_θold = exp(logp − old_logp) (a log-space difference, never a probability ratio):
      ℓ = max(−A·ρ, −A·clip(ρ, 1 − clip_low, 1 + clip_high))
  clip_low ≠ clip_high is DAPO's clip-higher (Yu et al. 2025, §3.1). With `clip_c` > 1 (dual-clip PPO,
  Ye et al. 2020) tokens with A < 0 use min(ℓ, −A·clip_c), bounding the loss when ρ ≫ 1.
  ratio_level="sequence" is GSPO (Zheng et al. 2025, GSPO-token Eq. 13): s_i = exp(masked-mean_t(logp −
  old_logp)), ρ_{i,t} = sg[s_i]·π_θ/sg[π_θ] — its value is s_i and its gradient s_i·∇logp_t; clipping then
  acts per sequence (GSPO uses much smaller clip ranges, e.g. 3e-4 / 4e-4).
  Then `aggregate(ℓ, mask, agg, norm_len)`.

  Metrics (scalars; fractions and ratio statistics are means over valid tokens, all 0 for an empty mask):
    clip_frac_low  A < 0 and ρ < 1 − clip_low (lower clip active);  clip_frac_high  A > 0 and ρ > 1 + clip_high;
    clip_frac = low + high;  dual_clip_frac (only with clip_c)  A < 0 and ρ > clip_c;
    approx_kl_old  mean of k3 = (ρ_t − 1) − log ρ_t, an estimate of KL(π_θold ‖ π_θ) from π_θold's samples,
                   always from the token ratio ρ_t (also under GSPO);
    ratio_mean / ratio_max / ratio_min  of the ρ used in the loss;  pg_loss  the aggregated loss.
  """
  _check_choice("policy_loss", "ratio_level", ratio_level, RATIO_LEVELS)
  _check_choice("policy_loss", "agg", agg, AGG_MODES)
  if not (0 <= clip_low < 1 and clip_high >= 0):
    raise ValueError(f"policy_loss: need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low!r}, "
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

  if ratio_level == "token":
    ratio = jnp.exp(log_ratio)
  else:
    m = valid.astype(log_ratio.dtype)
    seq_log_ratio_N = jnp.sum(log_ratio * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    s_N = jax.lax.stop_gradient(jnp.exp(seq_log_ratio_N))
    ratio = s_N[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp))

  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  per_token = jnp.maximum(unclipped, clipped)
  if clip_c is not None:
    per_token = jnp.where(adv < 0, jnp.minimum(per_token, -adv * clip_c), per_token)
  loss = aggregate(per_token, valid, agg, norm_len)

  n_valid = jnp.maximum(jnp.sum(valid), 1)

  def frac(cond):
    return jnp.sum(valid & cond) / n_valid

  r = jax.lax.stop_gradient(ratio)
  clip_low_frac = frac((adv < 0) & (r < 1.0 - clip_low))
  clip_high_frac = frac((adv > 0) & (r > 1.0 + clip_high))
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
  }
  if clip_c is not None:
    metrics["dual_clip_frac"] = frac((adv < 0) & (r > clip_c))
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None, advantages: jax.Array,
              mask: jax.Array, *, beta: float = 0.0, kl_kind: str = "k3", clip_low: float = 0.2,
              clip_high: float = 0.2, clip_c: float | None = None, ratio_level: str = "token",
              agg: str = "seq-mean-token-mean", norm_len=None):
  """GRPO objective (DeepSeekMath Eq. 3, negated): policy_loss + β · aggregate(kl_penalty(logp, ref_logp)).

  The KL term uses the same aggregation `agg` / `norm_len` as the policy term. When `beta` is the Python
  number 0, the KL term is skipped and `ref_logp` may be None (no reference forward pass needed); a given
  `ref_logp` is then only used for the "kl" metric. A traced or non-zero `beta` requires `ref_logp`.

  Args: as `policy_loss`, plus ref_logp [N, T] (or None), beta, kl_kind (see `kl_penalty`).
  Returns: (loss, metrics) with the `policy_loss` metrics plus "loss" and, when ref_logp is given, "kl"
  (masked token-mean of the chosen estimator, whatever `agg` is).
  """
  _check_choice("grpo_loss", "kl_kind", kl_kind, KL_KINDS)
  skip_kl = isinstance(beta, (int, float)) and beta == 0
  if ref_logp is None and not skip_kl:
    raise ValueError(f"grpo_loss: beta={beta!r} needs ref_logp, got None (pass beta=0.0 to disable the KL)")
  loss, metrics = policy_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                              clip_c=clip_c, ratio_level=ratio_level, agg=agg, norm_len=norm_len)
  if ref_logp is not None:
    chex.assert_equal_shape([ref_logp, logp])
    valid = mask.astype(bool)
    # Sanitize masked positions before the exp() inside k3 (zero gradient, no 0·inf).
    kl_NxT = kl_penalty(jnp.where(valid, _upcast(logp), 0.0), jnp.where(valid, _upcast(ref_logp), 0.0),
                        kl_kind)
    metrics["kl"] = jax.lax.stop_gradient(aggregate(kl_NxT, valid, "token-mean"))
    if not skip_kl:
      loss = loss + beta * aggregate(kl_NxT, valid, agg, norm_len)
  metrics["loss"] = jax.lax.stop_gradient(loss)
  return loss, metrics
