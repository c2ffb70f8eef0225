"""Losses vs NumPy references, float64 finite differences, hand-computed clip cases, and invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import losses
from grpo_jax.losses import (KL_KINDS, aggregate, grpo_loss, kl_penalty, policy_loss, token_entropy,
                             token_logprobs)

# The modes that need no outside token count ("token-mean-global" is tested in tests/test_objectives.py).
AGG_MODES = tuple(m for m in losses.AGG_MODES if m != "token-mean-global")

N, T = 4, 6


# ------------------------------------------------------------------------------------------- references

def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(logp, ref, kind):
  d = np.asarray(ref, np.float64) - np.asarray(logp, np.float64)  # log(π_ref/π)
  if kind == "k1":
    return -d
  if kind == "k2":
    return 0.5 * d**2
  if kind == "k3":
    return np.exp(d) - d - 1
  d = np.clip(d, -20, 20)
  return np.clip(np.exp(d) - d - 1, -10, 10)


def np_aggregate(x, m, mode, norm_len=None):
  x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
  n, t = x.shape
  if mode == "token-mean":
    return (x * m).sum() / max(m.sum(), 1)
  if mode == "seq-mean-token-mean":
    return np.mean([(x[i] * m[i]).sum() / max(m[i].sum(), 1) for i in range(n)])
  if mode == "seq-mean-token-sum":
    return np.mean([(x[i] * m[i]).sum() for i in range(n)])
  return (x * m).sum() / (n * (norm_len or t))


def np_policy_loss(logp, old, adv, m, clip_low, clip_high, clip_c, ratio_level, agg, norm_len=None):
  logp, old, m = (np.asarray(a, np.float64) for a in (logp, old, m))
  adv = np.asarray(adv, np.float64)
  adv = np.broadcast_to(adv[:, None], logp.shape) if adv.ndim == 1 else adv
  n, t = logp.shape
  loss = np.zeros((n, t))
  rho = np.ones((n, t))
  for i in range(n):
    valid = m[i] > 0
    s = np.exp((logp[i] - old[i])[valid].mean()) if valid.any() else 1.0
    for j in range(t):
      if not valid[j]:
        continue
      rho[i, j] = s if ratio_level == "sequence" else np.exp(logp[i, j] - old[i, j])
      a = adv[i, j]
      ell = max(-a * rho[i, j], -a * np.clip(rho[i, j], 1 - clip_low, 1 + clip_high))
      if clip_c is not None and a < 0:
        ell = min(ell, -a * clip_c)
      loss[i, j] = ell
  v = m > 0
  metrics = dict(
      clip_frac_low=np.mean((adv < 0)[v] & (rho < 1 - clip_low)[v]),
      clip_frac_high=np.mean((adv > 0)[v] & (rho > 1 + clip_high)[v]),
      ratio_mean=rho[v].mean(), ratio_max=rho[v].max(), ratio_min=rho[v].min(),
      approx_kl_old=np.mean((np.exp(logp - old) - 1 - (logp - old))[v]))
  if clip_c is not None:
    metrics["dual_clip_frac"] = np.mean((adv < 0)[v] & (rho > clip_c)[v])
  return np_aggregate(loss, m, agg, norm_len), metrics


def random_batch(seed, n=N, t=T, spread=0.3, dtype=np.float32):
  """Log-probs with ratios spread around 1 (some clipped), ±advantages, a ragged mask with one empty row."""
  rng = np.random.default_rng(seed)
  old = -rng.uniform(0.1, 3.0, size=(n, t))
  logp = old + rng.normal(scale=spread, size=(n, t))
  ref = old + rng.normal(scale=spread, size=(n, t))
  adv = rng.normal(size=n)
  lengths = rng.integers(1, t + 1, size=n)
  lengths[-1] = 0  # a fully-masked sequence
  mask = (np.arange(t)[None] < lengths[:, None]).astype(dtype)
  return tuple(a.astype(dtype) for a in (logp, old, ref, adv)) + (mask,)


def central_fd(f, x, h=1e-6):
  """d f / d x by central differences (float64)."""
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
  return g


# ------------------------------------------------------------------------------ token log-probs / entropy

@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_token_logprobs_matches_numpy(temperature, scale):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(3, 5, 11)) * scale).astype(np.float32)
  tokens = rng.integers(0, 11, size=(3, 5))
  got = token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), temperature)
  assert got.dtype == jnp.float32 and got.shape == (3, 5)
  want = np.take_along_axis(np_log_softmax(logits.astype(np.float64) / temperature), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(got)))


def test_token_logprobs_bf16_jit_and_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(2, 3))
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  got = jax.jit(token_logprobs, static_argnames="temperature")(bf16, jnp.asarray(tokens), temperature=0.5)
  assert got.dtype == jnp.float32
  want = np.take_along_axis(np_log_softmax(np.asarray(bf16, np.float64) / 0.5), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Entropy, including a vocabulary entry masked to −inf (must contribute 0, not NaN).
  logits[0, 0, 3] = -np.inf
  lp = np_log_softmax(logits / 1.3)
  want_h = -np.sum(np.exp(lp) * np.where(np.isfinite(lp), lp, 0.0), -1)
  np.testing.assert_allclose(token_entropy(jnp.asarray(logits), 1.3), want_h, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="temperature=0"):
    token_logprobs(bf16, jnp.asarray(tokens), 0)


# ---------------------------------------------------------------------------------------------- KL

@pytest.mark.parametrize("kind", KL_KINDS)
def test_kl_penalty_matches_numpy(kind):
  logp, _, ref, _, _ = random_batch(0, spread=3.0)
  np.testing.assert_allclose(kl_penalty(jnp.asarray(logp), jnp.asarray(ref), kind), np_kl(logp, ref, kind),
                             rtol=1e-5, atol=1e-6)


def test_k3_nonnegative_zero_iff_equal_and_low_var_bounded():
  logp, _, ref, _, _ = random_batch(1, spread=5.0)
  k3 = np.asarray(kl_penalty(jnp.asarray(logp), jnp.asarray(ref), "k3"))
  assert np.all(k3 > 0)  # random log-probs are never equal
  assert np.all(np.asarray(kl_penalty(jnp.asarray(logp), jnp.asarray(logp), "k3")) == 0.0)
  # Bounded where k3 is huge (exp(100) overflows float32); equal to k3 in the normal range.
  lv = kl_penalty(jnp.array([0.0, -100.0, -1.0]), jnp.array([-100.0, 0.0, -1.5]), "low_var_kl")
  np.testing.assert_allclose(lv, [10.0, 10.0, np.exp(-0.5) + 0.5 - 1], rtol=1e-6)
  assert not np.isfinite(float(kl_penalty(jnp.array(-100.0), jnp.array(0.0), "k3")))
  with pytest.raises(ValueError, match="'k4'"):
    kl_penalty(jnp.asarray(logp), jnp.asarray(ref), "k4")


# ----------------------------------------------------------------------------------------- aggregate

@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_matches_numpy_and_fd(mode):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(N, T))
  _, _, _, _, mask = random_batch(2)
  norm_len = 10 if mode == "seq-mean-token-sum-norm" else None
  np.testing.assert_allclose(aggregate(jnp.asarray(x, jnp.float32), jnp.asarray(mask), mode, norm_len),
                             np_aggregate(x, mask, mode, norm_len), rtol=1e-5)
  with jax.enable_x64(True):
    f = jax.jit(lambda x_: aggregate(x_, jnp.asarray(mask), mode, norm_len))
    np.testing.assert_allclose(jax.grad(f)(x), central_fd(f, x), rtol=1e-7, atol=1e-9)


def test_aggregate_seq_mean_counts_every_sequence():
  x = jnp.array([[1.0, 3.0], [5.0, 7.0]])
  m = jnp.array([[1.0, 1.0], [0.0, 0.0]])
  assert float(aggregate(x, m, "seq-mean-token-mean")) == 1.0  # (2 + 0) / 2, not 2 / 1
  assert float(aggregate(x, m, "seq-mean-token-sum")) == 2.0  # (4 + 0) / 2
  assert float(aggregate(x, m, "token-mean")) == 2.0
  assert float(aggregate(x, m, "seq-mean-token-sum-norm")) == 1.0  # 4 / (2 · T=2)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_masked_garbage_and_empty_batch(mode):
  x = jnp.array([[1.0, jnp.inf], [jnp.nan, -1e30]])
  m = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  val, g = jax.value_and_grad(lambda x_: aggregate(x_, m, mode))(x)
  assert np.isfinite(float(val))
  assert np.all(np.asarray(g)[np.asarray(m) == 0] == 0.0)
  val0, g0 = jax.value_and_grad(lambda x_: aggregate(x_, jnp.zeros_like(m), mode))(x)
  assert float(val0) == 0.0 and np.all(np.asarray(g0) == 0.0)
  with pytest.raises(ValueError, match="'mean'"):
    aggregate(x, m, "mean")


# --------------------------------------------------------------------------------------- policy loss

def test_hand_computed_clip_cases():
  # Seq 0: A = +1, ratios [1.5, 0.5, 1.0] (+ a masked token). Seq 1: A = −1, ratios [0.5, 1.5, 4.0].
  # clip_low=0.2, clip_high=0.28 (DAPO), clip_c=3. Per-token loss:
  #   seq 0: max(−1.5, −1.28) = −1.28 (high clip), max(−0.5, −0.8) = −0.5, −1.0
  #   seq 1: max(0.5, 0.8) = 0.8 (low clip), max(1.5, 1.28) = 1.5, min(max(4, 1.28), 3) = 3 (dual clip)
  ratios = np.array([[1.5, 0.5, 1.0, 1.0], [0.5, 1.5, 4.0, 1.0]])
  old = np.log(np.array([[0.3, 0.6, 0.2, 0.5], [0.4, 0.1, 0.05, 0.5]]))
  logp = jnp.asarray(old + np.log(ratios), jnp.float32)
  old = jnp.asarray(old, jnp.float32).at[0, 3].set(-jnp.inf)  # masked garbage
  adv = jnp.array([1.0, -1.0])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0]])
  kw = dict(clip_low=0.2, clip_high=0.28)
  loss, met = policy_loss(logp, old, adv, mask, clip_c=3.0, **kw)
  np.testing.assert_allclose(loss, ((-1.28 - 0.5 - 1.0) / 3 + (0.8 + 1.5 + 3.0) / 3) / 2, rtol=1e-6)
  for k in ("clip_frac_low", "clip_frac_high", "dual_clip_frac"):
    np.testing.assert_allclose(met[k], 1 / 6, rtol=1e-6)
  np.testing.assert_allclose(met["clip_frac"], 2 / 6, rtol=1e-6)
  np.testing.assert_allclose([met["ratio_max"], met["ratio_min"], met["ratio_mean"]], [4.0, 0.5, 1.5], rtol=1e-6)
  # Gradient: −A·ρ on unclipped tokens, 0 on clipped ones, times 1/(N·|y_i|) = 1/6.
  grad = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, clip_c=3.0, **kw)[0])(logp)
  np.testing.assert_allclose(grad, [[0, -0.5 / 6, -1.0 / 6, 0], [0, 1.5 / 6, 0, 0]], rtol=1e-6, atol=1e-7)
  # Without the dual clip the ρ = 4 token costs 4 and has gradient 4/6.
  loss2, met2 = policy_loss(logp, old, adv, mask, **kw)
  np.testing.assert_allclose(loss2, ((-1.28 - 0.5 - 1.0) / 3 + (0.8 + 1.5 + 4.0) / 3) / 2, rtol=1e-6)
  assert "dual_clip_frac" not in met2
  grad2 = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, **kw)[0])(logp)
  np.testing.assert_allclose(grad2[1], [0, 1.5 / 6, 4.0 / 6, 0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("clip_c", [None, 1.5])
def test_policy_loss_matches_numpy(agg, ratio_level, clip_c):
  logp, old, _, adv, mask = random_batch(3)
  kw = dict(clip_low=0.2, clip_high=0.28, clip_c=clip_c, ratio_level=ratio_level, agg=agg)
  loss, met = jax.jit(functools.partial(policy_loss, **kw))(logp, old, adv, mask)
  want, want_met = np_policy_loss(logp, old, adv, mask, 0.2, 0.28, clip_c, ratio_level, agg)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(met["pg_loss"], want, rtol=1e-5, atol=1e-6)
  for k, v in want_met.items():
    np.testing.assert_allclose(met[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  # Token-level [N, T] advantages equal to the broadcast [N] ones give the same loss.
  loss_nt, _ = policy_loss(logp, old, np.repeat(adv[:, None], T, 1), mask, **kw)
  np.testing.assert_allclose(loss_nt, loss, rtol=1e-6)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_policy_loss_gradient_vs_finite_differences(agg):
  logp, old, _, _, mask = random_batch(4, dtype=np.float64)
  adv = np.random.default_rng(4).normal(size=(N, T))  # process-supervision shaped advantages
  with jax.enable_x64(True):
    f = jax.jit(lambda lp: policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=1.5,
                                       agg=agg)[0])
    g = np.asarray(jax.grad(f)(logp))
    np.testing.assert_allclose(g, central_fd(f, logp), rtol=1e-6, atol=1e-9)
  assert np.any(g != 0) and np.all(g[mask == 0] == 0)


def test_gspo_gradient_is_sequence_ratio_times_grad_logp():
  # Per-sequence log-ratio shifts so that sequences 0, 1 are clipped (A > 0, s > 1.04; A < 0, s < 0.97) and
  # 2–5 are not; the last sequence is fully masked.
  n = 7
  logp, old, _, _, mask = random_batch(5, n=n, spread=0.002)
  shift = np.array([0.1, -0.1, 0.0, 0.0, 0.1, -0.1, 0.0], np.float32)
  logp = logp + shift[:, None]
  adv = np.array([1.0, -1.0, 0.7, -0.5, -1.0, 1.0, 2.0], np.float32)
  f = lambda lp: policy_loss(lp, old, adv, mask, clip_low=0.03, clip_high=0.04, ratio_level="sequence")[0]  # noqa
  g = np.asarray(jax.grad(f)(jnp.asarray(logp)))
  s = np.exp(np.sum((logp - old) * mask, 1) / np.maximum(mask.sum(1), 1))
  clipped = ((adv > 0) & (s > 1.04)) | ((adv < 0) & (s < 0.97))
  np.testing.assert_array_equal(clipped, [True, True, False, False, False, False, False])
  want = np.where(clipped, 0.0, -adv * s / (n * np.maximum(mask.sum(1), 1)))[:, None] * mask
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-8)
  assert np.all(g[2:6].sum(1) != 0)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_on_policy_ratio_one_and_loss_is_minus_mean_advantage(agg):
  logp, _, _, adv, mask = random_batch(6)
  adv_nt = np.broadcast_to(adv[:, None], (N, T))
  want = -np_aggregate(adv_nt, mask, agg)
  tok = policy_loss(logp, logp, adv, mask, agg=agg)
  seq = policy_loss(logp, logp, adv, mask, agg=agg, ratio_level="sequence")
  for loss, met in (tok, seq):
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(met["ratio_min"]) == float(met["ratio_max"]) == float(met["ratio_mean"]) == 1.0
    assert float(met["clip_frac"]) == 0.0 and float(met["approx_kl_old"]) == 0.0
  # GSPO at ratio 1: same gradient as token level (both are −A·∇logp / aggregation weights).
  g_tok = jax.grad(lambda lp: policy_loss(lp, logp, adv, mask, agg=agg)[0])(jnp.asarray(logp))
  g_seq = jax.grad(lambda lp: policy_loss(lp, logp, adv, mask, agg=agg, ratio_level="sequence")[0])(
      jnp.asarray(logp))
  np.testing.assert_allclose(g_seq, g_tok, rtol=1e-6, atol=1e-8)
  assert np.any(np.asarray(g_tok) != 0)


def test_policy_loss_bad_arguments():
  logp, old, _, adv, mask = random_batch(7)
  with pytest.raises(ValueError, match="clip_c=1.0"):
    policy_loss(logp, old, adv, mask, clip_c=1.0)
  with pytest.raises(ValueError, match="'seq'"):
    policy_loss(logp, old, adv, mask, ratio_level="seq")
  with pytest.raises(ValueError, match="'sum'"):
    policy_loss(logp, old, adv, mask, agg="sum")
  with pytest.raises(AssertionError):  # chex shape check: advantages must be [N] or [N, T]
    policy_loss(logp, old, adv[:-1], mask)


# ------------------------------------------------------------------------------------------ grpo_loss

@pytest.mark.parametrize("kind", KL_KINDS)
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_grpo_loss_matches_numpy_and_fd(kind, agg):
  logp, old, ref, adv, mask = random_batch(8, dtype=np.float64)
  kw = dict(beta=0.04, kl_kind=kind, clip_low=0.2, clip_high=0.28, agg=agg)
  loss, met = grpo_loss(logp.astype(np.float32), old.astype(np.float32), ref.astype(np.float32),
                        adv.astype(np.float32), mask.astype(np.float32), **kw)
  pg, _ = np_policy_loss(logp, old, adv, mask, 0.2, 0.28, None, "token", agg)
  kl = np_kl(logp, ref, kind)
  np.testing.assert_allclose(loss, pg + 0.04 * np_aggregate(kl, mask, agg), rtol=1e-5)
  np.testing.assert_allclose(met["loss"], loss, rtol=1e-7)
  np.testing.assert_allclose(met["kl"], np_aggregate(kl, mask, "token-mean"), rtol=1e-5)
  with jax.enable_x64(True):
    f = jax.jit(lambda lp: grpo_loss(lp, old, ref, adv, mask, **kw)[0])
    np.testing.assert_allclose(jax.grad(f)(logp), central_fd(f, logp), rtol=1e-6, atol=1e-9)


def test_beta_zero_ignores_ref_logp():
  logp, old, ref, adv, mask = random_batch(9)
  f = lambda r: grpo_loss(logp, old, r, adv, mask, beta=0.0)  # noqa: E731
  loss_none, met_none = f(None)
  loss_nan, met_nan = f(jnp.full((N, T), jnp.nan))
  loss_ref, met_ref = f(ref)
  assert float(loss_none) == float(loss_nan) == float(loss_ref)
  assert "kl" not in met_none and "kl" in met_ref and float(met_ref["kl"]) > 0
  g_none = jax.grad(lambda lp: grpo_loss(lp, old, None, adv, mask)[0])(jnp.asarray(logp))
  g_nan = jax.grad(lambda lp: grpo_loss(lp, old, jnp.full((N, T), jnp.nan), adv, mask)[0])(jnp.asarray(logp))
  np.testing.assert_array_equal(g_none, g_nan)
  with pytest.raises(ValueError, match="beta=0.1"):
    grpo_loss(logp, old, None, adv, mask, beta=0.1)
  with pytest.raises(ValueError, match="'k9'"):
    grpo_loss(logp, old, ref, adv, mask, beta=0.1, kl_kind="k9")


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("kind", ["k3", "low_var_kl"])
def test_masked_garbage_gives_finite_loss_and_zero_grads(agg, ratio_level, kind):
  logp, old, ref, adv, mask = random_batch(10)
  bad = mask == 0
  logp = np.where(bad, 1e9, logp).astype(np.float32)  # exp(logp − old) would overflow to inf here
  old = np.where(bad, -np.inf, old).astype(np.float32)
  ref = np.where(bad, np.nan, ref).astype(np.float32)
  kw = dict(beta=0.1, kl_kind=kind, clip_c=3.0, ratio_level=ratio_level, agg=agg)
  (loss, met), g = jax.value_and_grad(lambda lp: grpo_loss(lp, old, ref, adv, mask, **kw), has_aux=True)(
      jnp.asarray(logp))
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in met.values())
  g = np.asarray(g)
  assert np.all(g[bad] == 0.0) and np.all(np.isfinite(g)) and np.any(g != 0)
  # A fully masked batch: zero loss, zero gradient, finite metrics.
  zeros = np.zeros_like(mask)
  (loss0, met0), g0 = jax.value_and_grad(lambda lp: grpo_loss(lp, old, ref, adv, zeros, **kw), has_aux=True)(
      jnp.asarray(logp))
  assert float(loss0) == 0.0 and np.all(np.asarray(g0) == 0.0)
  assert all(np.isfinite(float(v)) for v in met0.values())
