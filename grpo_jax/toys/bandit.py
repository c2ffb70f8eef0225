"""T0: a multi-prompt tabular softmax bandit with known per-prompt success probabilities.

Prompt q in 0..Q-1 has a row of logits θ_q over A actions (a "completion" is one token); the first
`num_correct` actions are correct (reward 1), the others wrong (reward 0). The initial success
probabilities p_q = π_q(correct) are spread logit-uniformly over [p_min, p_max], so the batch mixes
very hard, medium and almost solved prompts, and every quantity of interest is exact: p_q, the entropy,
KL(π‖π_ref) and its gradient, and the expectation of any per-sample gradient estimator (a sum over A).

This is where two of the paper claims are checked exactly (tests/test_toys.py):
  * Dr. GRPO's difficulty bias: with the "grpo" estimator the gradient on prompt q's row is the
    "dr_grpo" gradient divided by (σ̂_q + eps), σ̂_q the group's reward std;
  * KL estimators differentiated as a loss (k1: zero gradient, k2: ∇KL(π‖π_ref), k3: ∇KL(π_ref‖π)) and
    k1 used as a reward (score function: ∇KL(π‖π_ref)), against the analytic ∇KL of a softmax.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import losses
from grpo_jax.toys.program import Scores


def softmax_kl(logits_QxA, ref_logits_QxA):
  """Exact KL(π‖π_ref) per row, [Q, A] x [Q, A] -> [Q]."""
  logp, logq = jax.nn.log_softmax(logits_QxA), jax.nn.log_softmax(ref_logits_QxA)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def softmax_kl_grad(logits_QxA, ref_logits_QxA):
  """Analytic ∇_θ KL(π_θ‖π_ref) of a softmax row, π ⊙ (log π − log π_ref − KL).  [Q, A] -> [Q, A]."""
  logp, logq = jax.nn.log_softmax(logits_QxA), jax.nn.log_softmax(ref_logits_QxA)
  p = jnp.exp(logp)
  kl_Q = jnp.sum(p * (logp - logq), axis=-1, keepdims=True)
  return p * (logp - logq - kl_Q)


def expected_kl_estimator_grad(logits_QxA, ref_logits_QxA, kind: str, placement: str):
  """Exact E_{a~π}[per-sample KL gradient] of `losses.kl_penalty(kind)`, [Q, A] -> [Q, A].

  placement="loss": the estimator is differentiated as a loss (the sample a is fixed):
      E[∇ k(log π_θ(a), log π_ref(a))];
  placement="reward": it is a (stop-gradient) reward fed to the policy gradient (score function):
      E[k(a) ∇ log π_θ(a)].
  Both are computed with jax.grad of the π-weighted sum over all A actions (no sampling).
  """
  ref = jax.nn.log_softmax(ref_logits_QxA)
  w = jax.lax.stop_gradient(jax.nn.softmax(logits_QxA))

  def weighted(theta):
    logp = jax.nn.log_softmax(theta)
    if placement == "loss":
      return jnp.sum(w * losses.kl_penalty(logp, ref, kind))
    k = jax.lax.stop_gradient(losses.kl_penalty(logp, ref, kind))
    return jnp.sum(w * k * logp)

  if placement not in ("loss", "reward"):
    raise ValueError(f"placement must be 'loss' or 'reward', got {placement!r}")
  return jax.grad(weighted)(logits_QxA)


def _masked_slope(x_B, y_B, w_B):
  """Least-squares slope of y on x over the rows with w = 1 (0 if fewer than two distinct x)."""
  n = jnp.maximum(jnp.sum(w_B), 1.0)
  xm, ym = jnp.sum(w_B * x_B) / n, jnp.sum(w_B * y_B) / n
  sxx = jnp.sum(w_B * (x_B - xm) ** 2)
  return jnp.where(sxx > 1e-12, jnp.sum(w_B * (x_B - xm) * (y_B - ym)) / jnp.maximum(sxx, 1e-12), 0.0)


@dataclasses.dataclass(frozen=True)
class Bandit:
  """T0. Every field is a static design choice; the initial table is a fixed function of them."""

  num_prompts: int = 32  # Q
  num_actions: int = 8  # A
  num_correct: int = 1  # the first num_correct actions are correct
  p_min: float = 0.02  # initial success probability of the hardest prompt
  p_max: float = 0.9  # ... and of the easiest one
  init_noise: float = 0.0  # std of fixed Gaussian noise added to the initial logits (breaks ties)
  layout_seed: int = 0  # seeds that noise (the "pretrained model"), not the training runs

  vocab_size = property(lambda self: self.num_actions)
  completion_len = 1
  eos_id = None
  has_process = False

  def __post_init__(self):
    if not 0 < self.num_correct < self.num_actions:
      raise ValueError(f"Bandit: need 0 < num_correct < num_actions, got {self.num_correct}, "
                       f"{self.num_actions}")
    if not 0 < self.p_min <= self.p_max < 1:
      raise ValueError(f"Bandit: need 0 < p_min <= p_max < 1, got {self.p_min}, {self.p_max}")

  def init_params(self):
    q = self.num_prompts
    logit_p = np.linspace(np.log(self.p_min / (1 - self.p_min)), np.log(self.p_max / (1 - self.p_max)), q)
    p = 1 / (1 + np.exp(-logit_p))
    n_c, n_w = self.num_correct, self.num_actions - self.num_correct
    c = np.log(p * n_w / ((1 - p) * n_c))  # correct logit with the wrong ones at 0: π(correct) = p
    table = np.zeros((q, self.num_actions))
    table[:, :n_c] = c[:, None]
    noise = np.random.default_rng(self.layout_seed).normal(size=table.shape) * self.init_noise
    return {"logits": jnp.asarray(table + noise, jnp.float32)}

  def draw_prompts(self, key, n: int):
    if n > self.num_prompts:
      raise ValueError(f"Bandit: {n} prompts per step (with oversampling) > num_prompts="
                       f"{self.num_prompts}; prompts of a step are distinct")
    return jax.random.permutation(key, self.num_prompts)[:n]

  def logits(self, params, ctx_N, tokens_NxT):
    return params["logits"][ctx_N][:, None, :]

  def step_logits(self, params, ctx_N, tokens_NxT, t):
    return params["logits"][ctx_N]

  def correct_mask(self):
    return jnp.arange(self.num_actions) < self.num_correct

  def score(self, ctx_N, tokens_NxT, mask_NxT, truncated_N):
    correct_N = (tokens_NxT[:, 0] < self.num_correct).astype(jnp.float32)
    n = correct_N.shape[0]
    empty = jnp.zeros((n, 0))
    return Scores(correct_N, correct_N, empty, empty.astype(jnp.int32), empty)

  def success(self, params):
    """[Q] exact π_q(correct)."""
    return jnp.sum(jax.nn.softmax(params["logits"]) * self.correct_mask(), axis=-1)

  def exact_metrics(self, params, ref_params, params0):
    p_Q = jax.nn.softmax(params["logits"])
    p0_Q = self.success(params0)
    hard_Q = p0_Q <= jnp.median(p0_Q)
    s_Q = self.success(params)
    return {
        "success": jnp.mean(s_Q),
        "success_hard": jnp.sum(s_Q * hard_Q) / jnp.sum(hard_Q),
        "success_easy": jnp.sum(s_Q * ~hard_Q) / jnp.sum(~hard_Q),
        "entropy": jnp.mean(-jnp.sum(jnp.where(p_Q > 0, p_Q * jnp.log(p_Q), 0.0), axis=-1)),
        "kl_init": jnp.mean(softmax_kl(params["logits"], params0["logits"])),
        "kl_ref": jnp.mean(softmax_kl(params["logits"], ref_params["logits"])),
    }

  def diagnostics(self, spec, knobs, params, ref_params, grads, ctx_N, rewards_BxG):
    G = rewards_BxG.shape[1]
    # Difficulty bias: slope of log ‖∇_{θ_q} loss‖ on log σ̂_q over the groups with σ̂_q > 0. Rows are
    # distinct prompts, so each row of the gradient belongs to exactly one group.
    g_BxA = grads["logits"][ctx_N[::G]]
    sigma_B = jnp.std(rewards_BxG, axis=1, ddof=1)
    norm_B = jnp.linalg.norm(g_BxA, axis=-1)
    ok_B = ((sigma_B > 0) & (norm_B > 0)).astype(jnp.float32)
    slope = _masked_slope(jnp.log(jnp.maximum(sigma_B, 1e-12)), jnp.log(jnp.maximum(norm_B, 1e-30)), ok_B)
    out = {"difficulty_slope": slope}
    if spec.use_ref:
      # Exact relative bias of the arm's KL-gradient estimator against ∇KL(π‖π_ref), over all prompts
      # (NaN for arms without a KL term, and while π = π_ref).
      true = softmax_kl_grad(params["logits"], ref_params["logits"])
      est = jnp.where(knobs["kl_in_reward"] > 0,
                      expected_kl_estimator_grad(params["logits"], ref_params["logits"], spec.kl_kind, "reward"),
                      expected_kl_estimator_grad(params["logits"], ref_params["logits"], spec.kl_kind, "loss"))
      scale = jnp.linalg.norm(true)
      bias = jnp.linalg.norm(est - true) / jnp.maximum(scale, 1e-6)
      out["kl_grad_bias"] = jnp.where((scale > 1e-6) & (knobs["beta"] > 0), bias, jnp.nan)
    return out

  def final_metrics(self, params, key):
    return {}
