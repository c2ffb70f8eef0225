"""Rollout correction: with a deliberately perturbed sampler (another temperature), the importance-weighted
gradient under the sampler's distribution μ equals the exact on-policy gradient of a tabular softmax policy —
every outcome enumerated, no sampling noise — and the truncated / masked variants equal their own NumPy
expectations. Then the wiring: prepare_batch's weights and mismatch metrics, loss_fn's use of them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import correction, losses
from grpo_jax import train as train_lib
from test_train import G, N, _batch, _params

SAMPLER_TEMPERATURE = 1.6  # the perturbation: μ = softmax(θ / 1.6) while the trainer's π = softmax(θ)


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def expected_loss_grad(theta, logp_fn, behaviour_NxT, adv_N, *, mode, level, threshold=2.0):
  """∇_θ E_μ[loss(y)] = Σ_y μ(y) ∇ℓ_y with the real weights and policy loss, one row per outcome y.

  π_θold = π_θ (the update's first step), so the PPO ratio is 1 with gradient ∇log π."""
  mu_N = np.exp(behaviour_NxT.sum(-1))

  def loss(th):
    logp = logp_fn(th)
    old = jax.lax.stop_gradient(logp)
    mask = jnp.ones_like(logp)
    w = None
    if mode != "none":
      w, _ = correction.rollout_is_weights(old, jnp.asarray(behaviour_NxT), mask, mode=mode, level=level,
                                           threshold=threshold)
    total = 0.0
    for y in range(logp.shape[0]):  # E_μ: each outcome once, weighted by its sampling probability
      row = slice(y, y + 1)
      ell, _ = losses.policy_loss(logp[row], old[row], jnp.asarray(adv_N[row]), mask[row],
                                  agg="seq-mean-token-sum", is_weight=None if w is None else w[row])
      total = total + mu_N[y] * ell
    return total

  with jax.enable_x64():
    return jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(jax.tree.map(jnp.asarray, theta)))


def bandit(V=6, seed=0):
  rng = np.random.default_rng(seed)
  theta, adv = rng.normal(0, 1.5, V), rng.normal(size=V)
  pi, mu = softmax(theta), softmax(theta / SAMPLER_TEMPERATURE)
  logp_fn = lambda th: jax.nn.log_softmax(th)[:, None]  # noqa: E731  (row y: token y, T = 1)
  eye = np.eye(V)

  def np_grad(weight):  # −Σ_y μ(y)·w(y)·A(y)·∇log π(y), ∇_θ log π(y) = e_y − π
    return -sum(mu[y] * weight[y] * adv[y] * (eye[y] - pi) for y in range(V))

  return theta, adv, pi, mu, logp_fn, np_grad


def test_token_is_recovers_the_exact_on_policy_gradient():
  theta, adv, pi, mu, logp_fn, np_grad = bandit()
  exact = np_grad(pi / mu)  # = −∇ Σ_y π(y) A(y), the on-policy gradient
  np.testing.assert_allclose(exact, -sum(pi[y] * adv[y] * (np.eye(6)[y] - pi) for y in range(6)), atol=1e-14)
  behaviour = np.log(mu)[:, None]
  for mode in ("tis", "mis"):  # a threshold no ratio reaches: both are plain importance sampling
    got = expected_loss_grad(theta, logp_fn, behaviour, adv, mode=mode, level="token", threshold=1e6)
    np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-12)
  uncorrected = expected_loss_grad(theta, logp_fn, behaviour, adv, mode="none", level="token")
  np.testing.assert_allclose(uncorrected, np_grad(np.ones(6)), atol=1e-12)
  assert np.abs(uncorrected - exact).max() > 0.1 * np.abs(exact).max()  # the mismatch matters here


def test_truncated_and_masked_weights_match_their_numpy_expectations():
  theta, adv, pi, mu, logp_fn, np_grad = bandit(seed=1)
  rho = pi / mu
  C = 1.1
  assert (rho > C).any() and (rho < 1 / C).any() and ((rho >= 1 / C) & (rho <= C)).any()
  behaviour = np.log(mu)[:, None]
  tis = expected_loss_grad(theta, logp_fn, behaviour, adv, mode="tis", level="token", threshold=C)
  np.testing.assert_allclose(tis, np_grad(np.minimum(rho, C)), rtol=1e-10, atol=1e-12)
  mis = expected_loss_grad(theta, logp_fn, behaviour, adv, mode="mis", level="token", threshold=C)
  np.testing.assert_allclose(mis, np_grad(np.where((rho >= 1 / C) & (rho <= C), rho, 0.0)), rtol=1e-10,
                             atol=1e-12)


def test_sequence_is_recovers_the_exact_gradient_of_a_two_token_policy():
  """π(y1, y2) = softmax(θ1)[y1] · softmax(θ2[y1])[y2]; μ the same at temperature 1.6. The sequence-level
  weight Π_t π_t/μ_t is the likelihood ratio of the completion: exact. Token-level weights are not (the
  second token's prefix is still drawn from μ)."""
  V = 4
  rng = np.random.default_rng(2)
  theta = {"t1": rng.normal(0, 1.5, V), "t2": rng.normal(0, 1.5, (V, V))}
  ys = np.array([(a, b) for a in range(V) for b in range(V)])
  adv = rng.normal(size=len(ys))

  def logp_fn(th):
    lp1 = jax.nn.log_softmax(th["t1"])[ys[:, 0]]
    lp2 = jax.nn.log_softmax(th["t2"], axis=-1)[ys[:, 0], ys[:, 1]]
    return jnp.stack([lp1, lp2], axis=1)

  p1, p2 = softmax(theta["t1"]), softmax(theta["t2"])
  m1, m2 = softmax(theta["t1"] / SAMPLER_TEMPERATURE), softmax(theta["t2"] / SAMPLER_TEMPERATURE)
  behaviour = np.stack([np.log(m1[ys[:, 0]]), np.log(m2[ys[:, 0], ys[:, 1]])], axis=1)
  # Exact: −∇ Σ_y π(y)A(y) = −Σ_y π(y)A(y)∇log π(y).
  want = {"t1": np.zeros(V), "t2": np.zeros((V, V))}
  for (a, b), A in zip(ys, adv):
    p = p1[a] * p2[a, b]
    want["t1"] -= p * A * (np.eye(V)[a] - p1)
    want["t2"][a] -= p * A * (np.eye(V)[b] - p2[a])
  got = expected_loss_grad(theta, logp_fn, behaviour, adv, mode="tis", level="sequence", threshold=1e6)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12)
  token = expected_loss_grad(theta, logp_fn, behaviour, adv, mode="tis", level="token", threshold=1e6)
  assert np.abs(token["t2"] - want["t2"]).max() > 1e-3  # per-token weights are only an approximation


def test_weights_metrics_and_argument_checks():
  old = jnp.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
  beh = jnp.array([[-1.0, -0.5, -2.5], [-1.2, -1.0, 9.0]])  # row 1's last token is masked garbage
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  log_r = np.array([[0.0, -1.5, 2.0], [0.2, 0.0, 0.0]])
  w, m = correction.rollout_is_weights(old, beh, mask, mode="tis", threshold=2.0)
  np.testing.assert_allclose(w, np.where(np.asarray(mask) > 0, np.minimum(np.exp(log_r), 2.0), 0), rtol=1e-6)
  assert float(m["rollout_is/truncated_frac"]) == pytest.approx(1 / 5)
  w, m = correction.rollout_is_weights(old, beh, mask, mode="mis", threshold=2.0)
  np.testing.assert_allclose(w, np.where((np.abs(log_r) <= np.log(2)) & (np.asarray(mask) > 0),
                                         np.exp(log_r), 0), rtol=1e-6)
  assert float(m["rollout_is/masked_frac"]) == pytest.approx(2 / 5)
  w, m = correction.rollout_is_weights(old, beh, mask, mode="tis", level="sequence", threshold=2.0)
  np.testing.assert_allclose(w, np.asarray(mask) * np.minimum(np.exp(log_r.sum(1, keepdims=True)), 2.0),
                             rtol=1e-6)
  assert float(m["rollout_is/truncated_frac"]) == pytest.approx(0.0)  # e^0.5 and e^0.2 are both < 2
  mm = correction.mismatch_metrics(old, beh, mask)
  valid = np.asarray(mask) > 0
  assert float(mm["mismatch/log_ratio_mean"]) == pytest.approx(log_r[valid].mean(), rel=1e-6)
  assert float(mm["mismatch/log_ratio_abs_max"]) == pytest.approx(2.0)
  assert float(mm["mismatch/kl"]) == pytest.approx(np.mean((np.exp(log_r) - 1 - log_r)[valid]), rel=1e-5)
  for kw, match in ((dict(mode="ois"), "mode"), (dict(mode="tis", level="batch"), "level"),
                    (dict(mode="tis", threshold=1.0), "threshold")):
    with pytest.raises(ValueError, match=match):
      correction.rollout_is_weights(old, beh, mask, **kw)


def test_prepare_batch_and_loss_fn_use_the_sampler_logprobs():
  """The batch's old_logp comes from a 'perturbed sampler' (the model's log-probs shifted); with
  rescore_old the trainer's π_θold replaces it, the sampler's become behaviour_logp, and the weights are
  those of π_θold/μ. loss_fn multiplies each token's loss by them."""
  graphdef, params = _params()
  b = {k: jnp.asarray(v) for k, v in _batch().items()}
  b["truncated"] = jnp.zeros(N, bool)
  sampler_logp = -np.random.default_rng(0).uniform(2.5, 4.5, b["mask"].shape).astype(np.float32)
  b["old_logp"] = jnp.asarray(sampler_logp) * b["mask"]
  rewards = jnp.asarray(np.random.default_rng(1).integers(0, 2, (N // G, G)).astype(np.float32))
  cfg = train_lib.AdvantageConfig(rollout_is="tis", rollout_is_threshold=1.5)
  prepare = jax.jit(lambda p, bb: train_lib.prepare_batch(graphdef, p, None, bb, rewards, jnp.ones(N, bool),
                                                          group_size=G, cfg=cfg, rescore_old=True,
                                                          temperature=1.0))
  out, met = prepare(params, b)
  mask = np.asarray(b["mask"]) > 0
  np.testing.assert_array_equal(out["behaviour_logp"], b["old_logp"])
  log_r = np.asarray(out["old_logp"]) - sampler_logp  # the rescore (tests/test_train.py checks it) over μ
  assert np.all(np.abs(log_r[mask]) > 1e-3)  # old_logp was replaced
  assert 0 < np.mean(log_r[mask] > np.log(1.5)) < 1  # some weights truncated, some not
  want_w = np.where(mask, np.minimum(np.exp(log_r), 1.5), 0.0)
  np.testing.assert_allclose(out["is_weight"], want_w, rtol=1e-5, atol=1e-7)
  assert float(met["mismatch/log_ratio_mean"]) == pytest.approx(log_r[mask].mean(), rel=1e-5)
  assert float(met["rollout_is/truncated_frac"]) == pytest.approx(np.mean(log_r[mask] > np.log(1.5)))
  with pytest.raises(ValueError, match="rescore_old"):
    train_lib.prepare_batch(graphdef, params, None, b, rewards, jnp.ones(N, bool), group_size=G, cfg=cfg,
                            rescore_old=False, temperature=1.0)
  # On policy (old_logp = π_θ), the GRPO token loss is −A·w: the weighted loss is Σ −A·w / count.
  loss = jax.jit(lambda p, mb: train_lib.loss_fn(p, graphdef, mb, train_lib.LossConfig(agg="token-mean"))[0])
  loss_w = loss(params, out)
  loss_1 = loss(params, {**out, "is_weight": jnp.ones_like(out["is_weight"])})
  adv = np.asarray(out["advantages"])[:, None]
  lm = np.asarray(out["loss_mask"])
  assert float(loss_w) == pytest.approx((-adv * want_w * lm).sum() / lm.sum(), rel=1e-4, abs=1e-6)
  assert float(loss_1) == pytest.approx((-adv * lm).sum() / lm.sum(), rel=1e-4, abs=1e-6)
