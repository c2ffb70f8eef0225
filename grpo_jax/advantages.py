"""Group-relative advantage estimators (outcome and process supervision).

GRPO replaces PPO's learned value baseline with statistics of a *group* of G completions sampled for the same
prompt (DeepSeekMath, Shao et al. 2024, §4.1). Every estimator here is written for ONE group and `jax.vmap`ped
over the B prompts of a batch, so the per-group math reads exactly like the paper.

Shapes: B prompts, G completions per prompt, K reward steps per completion, T completion length.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
BATCH_NORMALIZED = ("reinforce_pp", "reinforce_pp_baseline")  # normalized over the batch, not a group
SCALES = ("group", "batch", "none")


def _normalize_masked(r_K: jax.Array, m_K: jax.Array, eps: float) -> jax.Array:
  """(r − mean) / (std + eps) over the entries where `m_K` is 1; 0 elsewhere.  [K] -> [K].

  The std is the unbiased one (ddof=1, like `torch.std` in TRL), with the denominator clamped to ≥ 1 so a
  single valid entry gives 0 rather than NaN. The mean is computed as `r_ref + mean(r − r_ref)` with `r_ref` a
  valid entry: when all valid rewards are equal, `r − r_ref` is exactly 0, so the advantage is exactly 0 —
  a plain `mean(r)` can be off by an ulp, and that ulp divided by eps (1e-6) would be a spurious ±0.01.
  """
  m_K = m_K.astype(r_K.dtype)
  count = jnp.sum(m_K)
  r_ref = r_K[jnp.argmax(m_K)]  # first valid entry (index 0 if none is valid: everything is masked anyway)
  shifted_K = jnp.where(m_K > 0, r_K - r_ref, 0.0)
  centered_K = (shifted_K - jnp.sum(shifted_K) / jnp.maximum(count, 1.0)) * m_K
  var = jnp.sum(centered_K**2) / jnp.maximum(count - 1.0, 1.0)
  denom = jnp.sqrt(var) + eps
  # centered_K is exactly 0 whenever the std is 0, so dividing by 1 then keeps eps=0 NaN-free.
  return centered_K / jnp.where(denom > 0, denom, 1.0)


def _centered(r_G: jax.Array) -> jax.Array:
  """r − mean(r) for one group [G] -> [G], exactly 0 when all rewards are equal (see `_normalize_masked`)."""
  shifted_G = r_G - r_G[0]
  return shifted_G - jnp.mean(shifted_G)


def _one_group(r_G: jax.Array, estimator: str, eps: float, scale: str) -> jax.Array:
  """Advantages of one group of G completions, [G] -> [G]."""
  G = r_G.shape[0]
  if G == 1:
    # A lone completion has no group baseline (ddof=1 std and G/(G−1) are undefined): no learning signal.
    return jnp.zeros_like(r_G)
  if estimator == "grpo" and scale == "group":
    # DeepSeekMath §4.1.2 (outcome supervision): Â_i = (r_i − mean(r)) / std(r).
    return _normalize_masked(r_G, jnp.ones_like(r_G), eps)
  if estimator == "rloo":
    # RLOO (Ahmadian et al. 2024): r_i − mean_{j≠i} r_j  =  G/(G−1) · (r_i − mean(r)).
    return G / (G - 1) * _centered(r_G)
  # "dr_grpo" (Dr. GRPO, Liu et al. 2025, §3.2: the std division biases toward easy/hard questions), and
  # "grpo" with scale="none" (the same estimator) or scale="batch" (divided by the batch std by the caller).
  return _centered(r_G)


def group_advantages(rewards_BxG: jax.Array, estimator: str = "grpo", eps: float = 1e-6,
                     scale: str = "group") -> jax.Array:
  """Group-relative outcome advantages.  rewards [B, G] -> advantages [B, G] (float32 or wider).

  Estimators (the first three: each a function of one group, vmapped over the B prompts):
    "grpo":    Â_i = (r_i − mean(r)) / (std(r) + eps), std unbiased (ddof=1)  — DeepSeekMath §4.1.2.
    "dr_grpo": Â_i = r_i − mean(r)                                            — Dr. GRPO (Liu et al. 2025).
    "rloo":    Â_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean(r))            — RLOO (Ahmadian et al. 2024).
    "reinforce_pp", "reinforce_pp_baseline": REINFORCE++ (Hu et al. 2025), batch-normalized; see
               `reinforce_pp_advantages`.

  `scale` selects the std of the "grpo" estimator (TRL's `scale_rewards`):
    "group": std of the group (the paper);
    "batch": (r_i − group mean) / (std of all B·G rewards + eps). The batch std is also unbiased (ddof=1), like
             TRL's `rewards.std()` and like the group std, so "batch" with B = 1 equals "group";
    "none":  no division: identical to "dr_grpo".
  "dr_grpo" and "rloo" never divide by a std; they accept "group" or "none" (both mean: no std), and reject
  "batch" rather than silently ignoring it.
  "reinforce_pp" / "reinforce_pp_baseline" (`reinforce_pp_advantages`) normalize over the whole batch by
  definition; they accept "group" or "none" and ignore it, and reject "batch".

  G = 1 gives zero advantages (no baseline exists); all-equal rewards in a group give exactly zero. The three
  group estimators sum to zero over each group; the REINFORCE++ ones over the batch ("reinforce_pp" does
  not use the group: G = 1 and equal rewards in one group of a varied batch are not 0 there).
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"group_advantages: unknown estimator={estimator!r}; expected one of {ESTIMATORS}")
  if scale not in SCALES:
    raise ValueError(f"group_advantages: unknown scale={scale!r}; expected one of {SCALES}")
  if scale == "batch" and estimator != "grpo":  # REINFORCE++ is batch-normalized already
    raise ValueError(f"group_advantages: scale='batch' only applies to estimator='grpo', got "
                     f"estimator={estimator!r}")
  if not eps >= 0:
    raise ValueError(f"group_advantages: eps must be >= 0, got eps={eps!r}")
  if rewards_BxG.ndim != 2:
    raise ValueError(f"group_advantages: rewards must be [B, G], got shape {rewards_BxG.shape}")

  rewards_BxG = rewards_BxG.astype(jnp.promote_types(rewards_BxG.dtype, jnp.float32))
  if estimator in BATCH_NORMALIZED:
    return reinforce_pp_advantages(rewards_BxG, baseline=estimator == "reinforce_pp_baseline", eps=eps)
  adv_BxG = jax.vmap(lambda r_G: _one_group(r_G, estimator, eps, scale))(rewards_BxG)
  if scale == "batch":
    n = rewards_BxG.size
    dev = rewards_BxG - jnp.mean(rewards_BxG)
    denom = jnp.sqrt(jnp.sum(dev**2) / max(n - 1, 1)) + eps
    adv_BxG = adv_BxG / jnp.where(denom > 0, denom, 1.0)  # adv is 0 when the batch std is 0
  return adv_BxG


def _batch_whiten(x_BxG: jax.Array, eps: float) -> jax.Array:
  """(x − mean) / (std + eps) over all B·G entries, std unbiased (ddof=1); exactly 0 when all are equal."""
  shifted = x_BxG - x_BxG.reshape(-1)[0]  # as `_normalize_masked`: equal entries give an exact 0
  centered = shifted - jnp.mean(shifted)
  denom = jnp.sqrt(jnp.sum(centered**2) / max(x_BxG.size - 1, 1)) + eps
  return centered / jnp.where(denom > 0, denom, 1.0)


def reinforce_pp_advantages(rewards_BxG: jax.Array, *, baseline: bool = False,
                            eps: float = 1e-6) -> jax.Array:
  """REINFORCE++ advantages with global batch normalization (Hu et al. 2025, "REINFORCE++: Stabilizing
  Critic-Free Policy Optimization with Global Normalization", arXiv 2501.03262, §3).  [B, G] -> [B, G].

    baseline=False ("REINFORCE++"):          Â = (r − mean_batch r) / (std_batch r + eps)
    baseline=True  ("REINFORCE++-baseline"): A' = r − mean_group(r),
                                             Â = (A' − mean_batch A') / (std_batch A' + eps)

  The group mean removes each prompt's difficulty; the batch statistics, unlike GRPO's per-group std, do not
  depend on the sample being normalized (the paper's argument against the bias of local normalization).
  Statistics are over the B·G completions (each once): for outcome rewards with the KL in the loss (or
  `kl_in_reward`, the paper's form of the KL), every token of a completion has the same return, and the
  paper's token-level normalization differs only by weighting completions by their length. std is unbiased
  (ddof=1), as everywhere in this module.
  """
  r = rewards_BxG.astype(jnp.promote_types(rewards_BxG.dtype, jnp.float32))
  if baseline:
    r = jax.vmap(_centered)(r) if r.shape[1] > 1 else jnp.zeros_like(r)
  return _batch_whiten(r, eps)


def _one_group_process(r_GxK, end_GxK, m_GxK, T: int, eps: float):
  """Process-supervision advantages of one group, [G, K] steps -> [G, T] tokens."""
  # Normalize over every valid step of every completion in the group (DeepSeekMath §4.1.3).
  norm_GK = _normalize_masked(r_GxK.reshape(-1), m_GxK.reshape(-1), eps).reshape(r_GxK.shape)
  t_T = jnp.arange(T)
  # covers[g, t, k]: step k of completion g ends at or after token t, so its reward counts toward token t.
  covers_GxTxK = end_GxK[:, None, :] >= t_T[None, :, None]
  return jnp.sum(jnp.where(covers_GxTxK, norm_GK[:, None, :], 0.0), axis=-1)


def process_advantages(step_rewards_BxGxK: jax.Array, step_end_BxGxK: jax.Array,
                       step_mask_BxGxK: jax.Array, T: int, eps: float = 1e-6) -> jax.Array:
  """Process-supervision advantages (DeepSeekMath §4.1.3).  -> [B, G, T].

  Completion i of a group has K reward steps; step j ends at token index(j) (in completion coordinates,
  0..T−1) and gets reward r_i^index(j). Rewards are normalized over ALL valid steps of the group,
      r̃_i^index(j) = (r_i^index(j) − mean(R)) / (std(R) + eps),        (std unbiased, ddof=1, as for "grpo")
  and the advantage of token t is the sum of the normalized rewards of the steps that end at or after t,
      Â_{i,t} = Σ_{index(j) ≥ t} r̃_i^index(j).
  With one step per completion ending at its last token this is the "grpo" outcome advantage broadcast over
  the completion's tokens.

  Args:
    step_rewards_BxGxK: [B, G, K] reward of each step.
    step_end_BxGxK: [B, G, K] int, index of the last token of each step. Ends ≥ T cover every token.
    step_mask_BxGxK: [B, G, K] 1 for real steps, 0 for padding (padding contributes nothing anywhere).
    T: static completion length.
  Returns:
    [B, G, T] advantages; tokens after a completion's last step get 0 (mask them in the loss as usual).
  """
  if step_rewards_BxGxK.ndim != 3:
    raise ValueError(f"process_advantages: step rewards must be [B, G, K], got {step_rewards_BxGxK.shape}")
  if step_end_BxGxK.shape != step_rewards_BxGxK.shape or step_mask_BxGxK.shape != step_rewards_BxGxK.shape:
    raise ValueError("process_advantages: step_rewards, step_end and step_mask must share the shape [B, G, K], "
                     f"got {step_rewards_BxGxK.shape}, {step_end_BxGxK.shape}, {step_mask_BxGxK.shape}")
  if not (isinstance(T, int) and T > 0):
    raise ValueError(f"process_advantages: T must be a positive Python int, got T={T!r}")
  if not eps >= 0:
    raise ValueError(f"process_advantages: eps must be >= 0, got eps={eps!r}")
  r = step_rewards_BxGxK.astype(jnp.promote_types(step_rewards_BxGxK.dtype, jnp.float32))
  m = step_mask_BxGxK.astype(r.dtype)
  return jax.vmap(lambda r_, e_, m_: _one_group_process(r_, e_, m_, T, eps))(r, step_end_BxGxK, m)
