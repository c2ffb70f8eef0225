"""Rollout correction: importance weights between the sampler's behaviour policy μ and the trainer's π_θold.

The sampler and the trainer compute the same policy differently (a bf16 sampler against an f32 trainer, a
KV-cached decode against a full forward, top-k / top-p / min-p filters that sample from a truncated q), so
the tokens are drawn from μ ≠ π_θold and the PPO ratio π_θ/π_θold alone is not an on-policy estimate.
With both log-probs in the batch (`grpo.old_logp = "rescore"`: old_logp is π_θold re-scored by the trainer,
behaviour_logp is μ from the sampler), the policy loss is reweighted per token by

    w = f(ρ_μ),   ρ_μ = π_θold(y) / μ(y)  (per token, or the product over a sequence's tokens),

which makes E_μ[w · ∇ℓ] = E_π[∇ℓ] when w = ρ_μ (standard importance sampling) and bounds its variance:
  "tis": truncated IS, w = min(ρ_μ, C) (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
         Off-Policy RL Training": token-level, C = 2);
  "mis": masked IS, w = ρ_μ · 1[1/C ≤ ρ_μ ≤ C] — samples whose ratio leaves the band get weight 0 instead
         of a truncated one (IcePop, Ling Team 2025, "Every Step Evolves", token-level with a [0.5, 5] band;
         sequence-level MIS of Liu et al. 2025, "When Speed Kills Stability"). Rejected tokens keep their
         place in the loss's normalizer, as in IcePop's objective.
Both are unbiased where the weight is untouched (ρ_μ < C for TIS, inside the band for MIS). Token-level
weights correct each token's conditional only (the prefix is still μ's); sequence-level ones are the exact
likelihood ratio of the whole completion, with a larger variance.

Shapes: N sequences, T completion length; `mask` [N, T] is 1 on completion tokens.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IS_MODES = ("none", "tis", "mis")
IS_LEVELS = ("token", "sequence")


def _log_ratio(old_logp_NxT, behaviour_logp_NxT, valid_NxT):
  """log(π_θold/μ) per token, 0 on masked tokens; float32 or wider (bf16 log-probs are upcast)."""
  dt = jnp.promote_types(old_logp_NxT.dtype, jnp.float32)
  return jnp.where(valid_NxT, old_logp_NxT.astype(dt) - behaviour_logp_NxT.astype(dt), 0.0)


def _masked_mean(x_NxT, valid_NxT):
  return jnp.sum(jnp.where(valid_NxT, x_NxT, 0.0)) / jnp.maximum(jnp.sum(valid_NxT), 1)


def mismatch_metrics(old_logp_NxT: jax.Array, behaviour_logp_NxT: jax.Array, mask_NxT: jax.Array) -> dict:
  """How far the sampler's μ is from the trainer's π_θold on the sampled tokens (scalars, 0 when empty):

    mismatch/log_ratio_mean     mean of log(π_θold/μ) over tokens (≈ −KL(μ‖π_θold) from μ's samples);
    mismatch/log_ratio_abs_max  max |log(π_θold/μ)| over tokens;
    mismatch/kl                 mean of k3 = (ρ − 1) − log ρ, an estimate of KL(μ‖π_θold) ≥ 0;
    mismatch/seq_log_ratio_abs_max  max over sequences of |Σ_t log(π_θold/μ)| (the sequence-level ratio).
  """
  valid = mask_NxT.astype(bool)
  log_r = _log_ratio(old_logp_NxT, behaviour_logp_NxT, valid)
  any_valid = jnp.any(valid)
  return {
      "mismatch/log_ratio_mean": _masked_mean(log_r, valid),
      "mismatch/log_ratio_abs_max": jnp.where(any_valid, jnp.max(jnp.abs(log_r)), 0.0),
      "mismatch/kl": _masked_mean(jnp.expm1(log_r) - log_r, valid),
      "mismatch/seq_log_ratio_abs_max": jnp.max(jnp.abs(jnp.sum(log_r, axis=-1))),
  }


def rollout_is_weights(old_logp_NxT: jax.Array, behaviour_logp_NxT: jax.Array, mask_NxT: jax.Array, *,
                       mode: str, level: str = "token", threshold: float = 2.0,
                       threshold_low: float | None = None):
  """Rollout-correction weights `[N, T]` (constants: no gradient) and their metrics; see the module docstring.

  Args:
    old_logp_NxT: log π_θold of the sampled tokens (the trainer's re-score).
    behaviour_logp_NxT: log μ of the same tokens (the sampler's log-probs).
    mode: "tis" (truncate at C) or "mis" (mask outside [C_low, C]); "none" gives weights 1.
    level: "token" (ρ per token) or "sequence" (ρ = Π_t over the sequence's tokens, one weight per sequence).
    threshold: C > 1. threshold_low: MIS's lower bound C_low in (0, 1]; None means 1/C.
  Returns:
    (weights [N, T], 0 on masked tokens; metrics: rollout_is/weight_mean (over tokens), truncated_frac (TIS:
    ρ > C) and masked_frac (MIS: ρ outside the band), fractions of tokens or, at sequence level, of
    non-empty sequences).
  """
  if mode not in IS_MODES:
    raise ValueError(f"rollout_is_weights: unknown mode={mode!r}; expected one of {IS_MODES}")
  if level not in IS_LEVELS:
    raise ValueError(f"rollout_is_weights: unknown level={level!r}; expected one of {IS_LEVELS}")
  if not threshold > 1:
    raise ValueError(f"rollout_is_weights: threshold must be > 1, got threshold={threshold!r}")
  low = 1.0 / threshold if threshold_low is None else threshold_low
  if not 0 < low <= 1:
    raise ValueError(f"rollout_is_weights: threshold_low must be in (0, 1], got "
                     f"threshold_low={threshold_low!r}")
  valid = mask_NxT.astype(bool)
  log_r = _log_ratio(old_logp_NxT, behaviour_logp_NxT, valid)
  if level == "sequence":
    log_r = jnp.broadcast_to(jnp.sum(log_r, axis=-1, keepdims=True), log_r.shape)
    # Fractions count sequences: each non-empty sequence once, on its first valid token.
    counted = valid & (jnp.cumsum(valid, axis=-1) == 1)
  else:
    counted = valid
  too_high = log_r > math.log(threshold)
  too_low = log_r < math.log(low)
  if mode == "none":
    w = jnp.ones_like(log_r)
  elif mode == "tis":
    w = jnp.exp(jnp.minimum(log_r, math.log(threshold)))  # min(ρ, C) without overflowing exp
  else:
    w = jnp.where(too_high | too_low, 0.0, jnp.exp(jnp.clip(log_r, math.log(low), math.log(threshold))))
  w = jax.lax.stop_gradient(jnp.where(valid, w, 0.0))
  zero = jnp.zeros((), w.dtype)
  metrics = {
      "rollout_is/weight_mean": _masked_mean(w, valid),
      "rollout_is/truncated_frac": _masked_mean(too_high, counted) if mode == "tis" else zero,
      "rollout_is/masked_frac": _masked_mean(too_high | too_low, counted) if mode == "mis" else zero,
  }
  return w, metrics
