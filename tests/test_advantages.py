"""Advantage estimators vs a NumPy reference, DeepSeekMath hand cases, and invariants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.advantages import group_advantages, process_advantages

EPS = 1e-6


def np_group_advantages(r, estimator, eps=EPS, scale="group"):
  """Straightforward per-group loop."""
  r = np.asarray(r, np.float64)
  B, G = r.shape
  out = np.zeros_like(r)
  batch_std = np.std(r, ddof=1) if r.size > 1 else 0.0
  for b in range(B):
    g = r[b]
    if G == 1:
      continue
    if estimator == "rloo":
      out[b] = [g[i] - np.mean(np.delete(g, i)) for i in range(G)]
    elif estimator == "dr_grpo" or scale == "none":
      out[b] = g - g.mean()
    elif scale == "batch":
      out[b] = (g - g.mean()) / (batch_std + eps)
    else:
      out[b] = (g - g.mean()) / (np.std(g, ddof=1) + eps)
  return out


CASES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "group"), ("dr_grpo", "none"),
         ("rloo", "group"), ("rloo", "none")]


@pytest.mark.parametrize("estimator,scale", CASES)
@pytest.mark.parametrize("G", [2, 5])
def test_matches_numpy_reference(estimator, scale, G):
  r = np.random.default_rng(G).normal(size=(3, G)).astype(np.float32)
  got = group_advantages(jnp.asarray(r), estimator, scale=scale)
  assert got.shape == (3, G) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), np_group_advantages(r, estimator, scale=scale), rtol=1e-5,
                             atol=1e-5)


def test_deepseekmath_hand_case():
  r = jnp.array([[1.0, 0.0, 0.0, 1.0]])
  std = np.sqrt(1.0 / 3.0)  # unbiased: sum of squared deviations 4·0.25 = 1, over G−1 = 3
  a = 0.5 / (std + EPS)
  np.testing.assert_allclose(group_advantages(r, "grpo")[0], [a, -a, -a, a], rtol=1e-6)
  np.testing.assert_allclose(group_advantages(r, "grpo")[0], [0.8660, -0.8660, -0.8660, 0.8660], atol=1e-4)
  np.testing.assert_allclose(group_advantages(r, "dr_grpo")[0], [0.5, -0.5, -0.5, 0.5], rtol=1e-6)
  # rloo: 1 − mean(0, 0, 1) = 2/3 and 0 − mean(1, 0, 1) = −2/3
  np.testing.assert_allclose(group_advantages(r, "rloo")[0], [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)


def test_batch_scale_uses_unbiased_batch_std():
  r = jnp.array([[1.0, 0.0], [3.0, 3.0]])
  batch_std = np.std([1.0, 0.0, 3.0, 3.0], ddof=1)
  np.testing.assert_allclose(group_advantages(r, "grpo", scale="batch"),
                             [[0.5 / (batch_std + EPS), -0.5 / (batch_std + EPS)], [0.0, 0.0]], rtol=1e-6)
  # B = 1: the batch std is the group std.
  r1 = jnp.array([[0.3, 1.0, -2.0, 0.5]])
  np.testing.assert_allclose(group_advantages(r1, scale="batch"), group_advantages(r1), rtol=1e-6)


@pytest.mark.parametrize("estimator,scale", CASES)
def test_sums_to_zero_per_group(estimator, scale):
  r = jax.random.uniform(jax.random.PRNGKey(0), (6, 8))
  adv = group_advantages(r, estimator, scale=scale)
  np.testing.assert_allclose(jnp.sum(adv, axis=1), np.zeros(6), atol=1e-5)


@pytest.mark.parametrize("estimator,scale", CASES)
@pytest.mark.parametrize("eps", [EPS, 0.0])
def test_equal_rewards_give_exact_zero(estimator, scale, eps):
  # 0.1 and 0.7 are not exactly representable: a naive mean is off by an ulp, and ulp/eps is not small.
  r = jnp.array([[0.1] * 7, [0.7] * 7, [3.0] * 7])
  adv = group_advantages(r, estimator, eps=eps, scale=scale)
  assert np.all(np.asarray(adv) == 0.0)


@pytest.mark.parametrize("estimator,scale", CASES)
def test_group_of_one_is_zero(estimator, scale):
  adv = group_advantages(jnp.array([[1.0], [0.0], [5.0]]), estimator, scale=scale)
  assert adv.shape == (3, 1)
  assert np.all(np.asarray(adv) == 0.0)


def test_jit_and_bad_arguments():
  r = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
  jitted = jax.jit(group_advantages, static_argnames=("estimator", "eps", "scale"))
  np.testing.assert_allclose(jitted(r, estimator="rloo"), group_advantages(r, "rloo"), rtol=1e-6)
  with pytest.raises(ValueError, match="'gae'"):
    group_advantages(r, "gae")
  with pytest.raises(ValueError, match="'sequence'"):
    group_advantages(r, scale="sequence")
  with pytest.raises(ValueError, match="'rloo'"):
    group_advantages(r, "rloo", scale="batch")
  with pytest.raises(ValueError, match="shape"):
    group_advantages(r.reshape(-1))


# ---------------------------------------------------------------- process supervision (DeepSeekMath §4.1.3)

def np_process_advantages(r, end, m, T, eps=EPS):
  B, G, K = r.shape
  out = np.zeros((B, G, T))
  for b in range(B):
    vals = [r[b, g, k] for g in range(G) for k in range(K) if m[b, g, k]]
    mean = np.mean(vals)
    std = np.std(vals, ddof=1) if len(vals) > 1 else 0.0
    for g in range(G):
      for k in range(K):
        if not m[b, g, k]:
          continue
        norm = (r[b, g, k] - mean) / (std + eps)
        for t in range(T):
          if end[b, g, k] >= t:
            out[b, g, t] += norm
  return out


def test_process_matches_numpy_reference():
  rng = np.random.default_rng(0)
  B, G, K, T = 3, 4, 5, 9
  r = rng.normal(size=(B, G, K)).astype(np.float32)
  end = rng.integers(0, T + 2, size=(B, G, K)).astype(np.int32)
  m = (rng.uniform(size=(B, G, K)) < 0.7).astype(np.float32)
  m[0, 0, :] = 0  # a completion with no steps: all-zero advantages
  got = process_advantages(jnp.asarray(r), jnp.asarray(end), jnp.asarray(m), T)
  assert got.shape == (B, G, T)
  np.testing.assert_allclose(np.asarray(got), np_process_advantages(r, end, m, T), rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(got[0, 0]) == 0.0)


def test_process_hand_case():
  # Completion 0: steps end at tokens 1 and 3 with rewards 1, 0. Completion 1: one step ending at 2, reward 1,
  # and a padded step whose garbage must not matter. Valid R = [1, 0, 1]: mean 2/3, unbiased std sqrt(1/3).
  r = jnp.array([[[1.0, 0.0], [1.0, 99.0]]])
  end = jnp.array([[[1, 3], [2, 0]]])
  m = jnp.array([[[1, 1], [1, 0]]])
  s = np.sqrt(1 / 3) + EPS
  hi, lo = (1 / 3) / s, (-2 / 3) / s  # ≈ 0.5774, −1.1547
  want = [[hi + lo, hi + lo, lo, lo], [hi, hi, hi, 0.0]]
  np.testing.assert_allclose(process_advantages(r, end, m, T=4)[0], want, rtol=1e-6)


def test_process_single_final_step_is_outcome_grpo():
  rng = np.random.default_rng(1)
  B, G, T = 2, 6, 7
  r = rng.normal(size=(B, G, 1)).astype(np.float32)
  lengths = rng.integers(1, T + 1, size=(B, G, 1))
  got = process_advantages(jnp.asarray(r), jnp.asarray(lengths - 1), jnp.ones((B, G, 1)), T)
  outcome = group_advantages(jnp.asarray(r[..., 0]))
  token_mask = np.arange(T)[None, None, :] < lengths
  np.testing.assert_allclose(got, np.where(token_mask, np.asarray(outcome)[..., None], 0.0), rtol=1e-5,
                             atol=1e-6)


def test_process_equal_rewards_and_validation():
  r = jnp.full((1, 3, 2), 0.1)
  got = process_advantages(r, jnp.ones((1, 3, 2), jnp.int32), jnp.ones((1, 3, 2)), T=3)
  assert np.all(np.asarray(got) == 0.0)
  with pytest.raises(ValueError, match="T=0"):
    process_advantages(r, jnp.ones((1, 3, 2), jnp.int32), jnp.ones((1, 3, 2)), T=0)
  with pytest.raises(ValueError, match="shape"):
    process_advantages(r, jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3, 2)), T=3)
