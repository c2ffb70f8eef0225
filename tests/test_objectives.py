"""The newer objectives against NumPy: CISPO, GMPO, SAPO, Clip-Cov / KL-Cov, the entropy bonus, the global
token mean, and REINFORCE++ advantages."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import advantages as adv_lib
from grpo_jax import config as config_lib
from grpo_jax import losses

N, T = 6, 5


def batch(seed=0, spread=0.4):
  """float64 log-probs with ratios spread around 1, ±advantages, a ragged mask (row 1 empty)."""
  rng = np.random.default_rng(seed)
  old = -rng.uniform(0.2, 3.0, (N, T))
  logp = old + rng.normal(0, spread, (N, T))
  adv = rng.normal(size=N)
  adv[2] = 0.0
  lengths = np.array([5, 0, 3, 1, 4, 5])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
  return logp, old, adv, mask


def loss_and_grad(logp, old, adv, mask, **kw):
  f = lambda lp: losses.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), **kw)[0]  # noqa
  with jax.enable_x64():
    val, g = jax.value_and_grad(f)(jnp.asarray(logp))
    return float(val), np.asarray(g)


def seq_mean_token_mean(x, m):
  return np.mean([(x[i] * m[i]).sum() / max(m[i].sum(), 1) for i in range(len(x))])


def seq_mean_weights(m):
  """d/dx of seq-mean-token-mean: m / (N · max(count_i, 1))."""
  return m / (len(m) * np.maximum(m.sum(1, keepdims=True), 1))


def test_cispo_matches_numpy_and_keeps_clipped_tokens_gradient():
  logp, old, adv, m = batch()
  rho = np.exp(logp - old)
  w = np.clip(rho, 1 - 0.2, 1 + 0.28)
  a = np.broadcast_to(adv[:, None], logp.shape)
  val, g = loss_and_grad(logp, old, adv, m, loss_type="cispo", clip_low=0.2, clip_high=0.28, agg="token-mean")
  np.testing.assert_allclose(val, (-w * a * logp * m).sum() / m.sum(), rtol=1e-12)
  np.testing.assert_allclose(g, -w * a * m / m.sum(), rtol=1e-12, atol=1e-15)  # sg(w): no gradient via w
  # Where PPO's clip is active (A > 0, ρ > 1 + ε) GRPO's gradient is 0 and CISPO's is not.
  active = (m > 0) & (a > 0) & (rho > 1.28)
  assert active.any()
  _, g_grpo = loss_and_grad(logp, old, adv, m, clip_low=0.2, clip_high=0.28, agg="token-mean")
  assert np.all(g_grpo[active] == 0) and np.all(g[active] < 0)
  # clip_low = 1 removes the lower bound (allowed for CISPO only).
  loss_and_grad(logp, old, adv, m, loss_type="cispo", clip_low=1.0)
  with pytest.raises(ValueError, match="clip_low"):
    loss_and_grad(logp, old, adv, m, clip_low=1.0)


def test_sapo_matches_numpy_soft_gate():
  logp, old, adv, m = batch(1)
  rho = np.exp(logp - old)
  a = np.broadcast_to(adv[:, None], logp.shape)
  tau = np.where(a > 0, 1.0, 1.5)
  sig = 1 / (1 + np.exp(-tau * (rho - 1)))
  val, g = loss_and_grad(logp, old, adv, m, loss_type="sapo", sapo_tau=(1.0, 1.5))
  np.testing.assert_allclose(val, seq_mean_token_mean(-sig * 4 / tau * a, m), rtol=1e-12)
  # d/dlogp of −(4/τ)σ(τ(ρ−1))·A = −A · 4σ(1 − σ) · ρ
  np.testing.assert_allclose(g, -a * 4 * sig * (1 - sig) * rho * seq_mean_weights(m), rtol=1e-10, atol=1e-15)


def test_gmpo_matches_numpy_geometric_mean_with_log_space_clip():
  logp, old, adv, m = batch(2, spread=0.6)
  eps_low, eps_high = 0.3, 0.4
  want, grad = 0.0, np.zeros_like(logp)
  for i in range(N):
    v = m[i] > 0
    if not v.any():
      continue
    lr = (logp - old)[i]
    s = np.sign(adv[i])
    clipped = s * np.minimum(s * lr, s * np.clip(lr, -eps_low, eps_high))
    geo = np.exp(clipped[v].mean())
    want += -adv[i] * geo / N
    free = v & (clipped == lr)  # unclipped tokens carry the gradient −A·geo/|o| each
    grad[i, free] = -adv[i] * geo / v.sum() / N
  val, g = loss_and_grad(logp, old, adv, m, loss_type="gmpo", clip_low=eps_low, clip_high=eps_high)
  np.testing.assert_allclose(val, want, rtol=1e-12)
  np.testing.assert_allclose(g, grad, rtol=1e-10, atol=1e-15)
  assert np.any((grad == 0) & (m > 0) & (adv[:, None] != 0))  # the clip was exercised


@pytest.mark.parametrize("loss_type", ["grpo", "cispo", "gmpo", "sapo"])
def test_on_policy_gradient_is_the_policy_gradient(loss_type):
  """At ρ = 1 every objective's gradient is the REINFORCE one, −A·∇logπ (with the sequence-mean weights)."""
  logp, _, adv, m = batch(3)
  _, g = loss_and_grad(logp, logp, adv, m, loss_type=loss_type)
  np.testing.assert_allclose(g, -adv[:, None] * seq_mean_weights(m), rtol=1e-10, atol=1e-15)


def np_cov(logp, adv, m):
  v = m > 0
  a = np.broadcast_to(adv[:, None], logp.shape)
  return (logp - logp[v].mean()) * (a - a[v].mean()), v


def test_kl_cov_penalizes_the_top_covariance_tokens():
  logp, old, adv, m = batch(4)
  cov, v = np_cov(logp, adv, m)
  k = max(int(0.2 * v.sum()), 1)
  top = np.zeros_like(v)
  idx = np.argsort(np.where(v, cov, -np.inf).ravel())[::-1][:k]
  top.ravel()[idx] = True
  a = np.broadcast_to(adv[:, None], logp.shape)
  per_token = -a * np.exp(logp - old) + np.where(top, 2.0 * np.abs(logp - old), 0.0)  # unclipped (Eq. of L_KL-Cov)
  kw = dict(cov_control="kl_cov", cov_ratio=0.2, kl_cov_coef=2.0, agg="token-mean")
  val, _ = loss_and_grad(logp, old, adv, m, **kw)
  np.testing.assert_allclose(val, (per_token * m).sum() / m.sum(), rtol=1e-12)
  with jax.enable_x64():
    chosen = losses.covariance_tokens(jnp.asarray(logp), jnp.asarray(a), jnp.asarray(v), mode="kl_cov",
                                      ratio=0.2)
  np.testing.assert_array_equal(np.asarray(chosen), top)


def test_clip_cov_detaches_random_tokens_in_the_covariance_band():
  logp, old, adv, m = batch(5)
  cov, v = np_cov(logp, adv, m)
  lo, hi = np.quantile(cov[v], [0.3, 0.9])  # a band that holds some tokens of this batch
  noise = np.random.default_rng(0).uniform(size=logp.shape)
  a = np.broadcast_to(adv[:, None], logp.shape)
  rho = np.exp(logp - old)
  unclipped, clipped = -a * rho, -a * np.clip(rho, 0.8, 1.2)
  eligible = v & (cov > lo) & (cov < hi) & ~(clipped > unclipped)
  k = max(int(0.25 * v.sum()), 1)
  assert 1 < k < eligible.sum()
  chosen = np.zeros_like(v)
  chosen.ravel()[np.argsort(np.where(eligible, noise, np.inf).ravel())[:k]] = True
  per_token = np.where(chosen, 0.0, np.maximum(unclipped, clipped))
  kw = dict(cov_control="clip_cov", cov_ratio=0.25, cov_bounds=(lo, hi), cov_noise=jnp.asarray(noise))
  val, g = loss_and_grad(logp, old, adv, m, **kw)
  np.testing.assert_allclose(val, seq_mean_token_mean(per_token, m), rtol=1e-12)
  assert np.all(g[chosen] == 0) and np.all(g[eligible & ~chosen & (a != 0)] != 0)
  with pytest.raises(ValueError, match="noise"):
    loss_and_grad(logp, old, adv, m, cov_control="clip_cov")


def test_token_uniform_noise_is_uniform_and_deterministic():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (64, 64)))
  logp = -jnp.asarray(np.random.default_rng(1).uniform(0, 5, (64, 64)), jnp.float32)
  u = np.asarray(losses.token_uniform_noise(tokens, logp))
  assert u.min() >= 0 and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12**-0.5) < 0.01  # 4096 draws: 3σ ≈ 0.014
  np.testing.assert_array_equal(u, np.asarray(losses.token_uniform_noise(tokens, logp)))
  assert np.mean(u == np.asarray(losses.token_uniform_noise(tokens, logp + 1e-3))) < 0.01


def test_entropy_bonus():
  logp, old, adv, m = batch(6)
  ent = np.random.default_rng(6).uniform(0, 3, logp.shape)
  with jax.enable_x64():
    f = lambda e: losses.grpo_loss(jnp.asarray(logp), jnp.asarray(old), None, jnp.asarray(adv),  # noqa
                                   jnp.asarray(m), entropy=e, entropy_coef=0.1)
    (val, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(ent))
    base = losses.policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(m))[0]
  np.testing.assert_allclose(float(val), float(base) - 0.1 * seq_mean_token_mean(ent, m), rtol=1e-12)
  np.testing.assert_allclose(np.asarray(g), -0.1 * seq_mean_weights(m), rtol=1e-12)
  np.testing.assert_allclose(float(met["entropy_bonus"]), seq_mean_token_mean(ent, m), rtol=1e-12)
  with pytest.raises(ValueError, match="entropy"):
    losses.grpo_loss(jnp.asarray(logp), jnp.asarray(old), None, jnp.asarray(adv), jnp.asarray(m),
                     entropy_coef=0.1)


def test_token_mean_global_over_microbatches_is_the_full_token_mean():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(8, T))
  m = (np.arange(T)[None] < rng.integers(0, T + 1, 8)[:, None]).astype(np.float64)
  full = (x * m).sum() / m.sum()
  per_seq = m.sum() / 8
  with jax.enable_x64():
    agg = lambda xs, ms, mode, **kw: float(losses.aggregate(jnp.asarray(xs), jnp.asarray(ms), mode, **kw))  # noqa
    np.testing.assert_allclose(agg(x, m, "token-mean-global", num_tokens=m.sum()), full, rtol=1e-14)
    parts = [slice(2 * i, 2 * i + 2) for i in range(4)]
    glob = np.mean([agg(x[p], m[p], "token-mean-global", num_tokens=2 * per_seq) for p in parts])
    local = np.mean([agg(x[p], m[p], "token-mean") for p in parts])
  np.testing.assert_allclose(glob, full, rtol=1e-14)
  assert abs(local - full) > 1e-3  # a per-microbatch token mean is a different estimate
  with pytest.raises(ValueError, match="num_tokens"):
    losses.aggregate(jnp.asarray(x), jnp.asarray(m), "token-mean-global")


def np_reinforce_pp(r, baseline, eps=1e-6):
  r = np.asarray(r, np.float64)
  if baseline:
    r = r - r.mean(1, keepdims=True)
  return (r - r.mean()) / (r.std(ddof=1) + eps)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_matches_numpy(estimator):
  r = np.random.default_rng(8).integers(0, 2, (5, 4)).astype(np.float32) + 0.1
  got = np.asarray(adv_lib.group_advantages(r, estimator))
  np.testing.assert_allclose(got, np_reinforce_pp(r, estimator.endswith("baseline")), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.sum(), 0.0, atol=1e-5)  # centred over the batch
  assert np.all(np.asarray(adv_lib.group_advantages(np.full((3, 4), 0.7, np.float32), estimator)) == 0)
  with pytest.raises(ValueError, match="batch"):
    adv_lib.group_advantages(r, estimator, scale="batch")


def test_reinforce_pp_baseline_differs_from_grpo_batch_scale():
  """GRPO's scale='batch' divides by the std of the raw rewards; REINFORCE++-baseline by the std of the
  group-centred ones (the paper's global normalization)."""
  r = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
  centred = r - r.mean(1, keepdims=True)
  np.testing.assert_allclose(adv_lib.group_advantages(r, "reinforce_pp_baseline"),
                             centred / (centred.std(ddof=1) + 1e-6), rtol=1e-5)
  np.testing.assert_allclose(adv_lib.group_advantages(r, "grpo", scale="batch"),
                             centred / (r.std(ddof=1) + 1e-6), rtol=1e-5)


def test_objective_arguments_are_checked():
  logp, old, adv, m = batch()
  with pytest.raises(ValueError, match="loss_type"):
    loss_and_grad(logp, old, adv, m, loss_type="ppo")
  with pytest.raises(ValueError, match="need loss_type='grpo'"):
    loss_and_grad(logp, old, adv, m, loss_type="cispo", ratio_level="sequence")
  with pytest.raises(ValueError, match="cov_control"):
    loss_and_grad(logp, old, adv, m, cov_control="entropy")


def _default_config():
  return config_lib.load_config(os.path.join(os.path.dirname(__file__), "..", "experiments", "default.py"))


@pytest.mark.parametrize("updates,named", [
    (dict(loss_type="ppo"), "grpo.loss_type"),
    (dict(loss_type="cispo", ratio_level="sequence"), "grpo.ratio_level"),
    (dict(loss_type="sapo", cov_control="clip_cov"), "grpo.cov_control"),
    (dict(cov_control="kl"), "grpo.cov_control"),
    (dict(cov_ratio=0.0), "grpo.cov_ratio"),
    (dict(cov_bounds=(5.0, 1.0)), "grpo.cov_bounds"),
    (dict(clip_low=1.0), "grpo.clip_low"),
    (dict(rollout_is="tis"), "grpo.rollout_is"),  # needs old_logp = "rescore"
    (dict(rollout_is="ois", old_logp="rescore"), "grpo.rollout_is"),
    (dict(rollout_is_threshold=1.0), "grpo.rollout_is_threshold"),
    (dict(estimator="reinforce_pp", scale="batch"), "grpo.scale"),
    (dict(agg="token-sum"), "grpo.agg"),
    (dict(dynamic_sampling=True, dynamic_sampling_max_rounds=0), "grpo.dynamic_sampling_max_rounds"),
    (dict(logprob_chunk=-1), "grpo.logprob_chunk"),
])
def test_config_validation_names_the_key(updates, named):
  c = _default_config()
  c.grpo.update(updates)
  with pytest.raises(config_lib.ConfigError, match=named.replace(".", r"\.")):
    config_lib.validate(c, 8)


def test_config_accepts_the_new_knobs_together():
  c = _default_config()
  c.grpo.update(loss_type="cispo", clip_low=1.0, agg="token-mean-global", estimator="reinforce_pp_baseline",
                old_logp="rescore", rollout_is="mis", rollout_is_level="sequence", logprob_chunk=64,
                dynamic_sampling=True)
  c.rollout.logprobs_mode = "truncated"
  config_lib.validate(c, 8)
  c.grpo.update(loss_type="gmpo", clip_low=1.5)  # log-space bounds may exceed 1
  config_lib.validate(c, 8)
