"""The sharded train step: same numbers on every mesh, rollout preparation vs NumPy, accumulation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.model import Decoder, ModelConfig

N, P, T, G, V = 16, 5, 6, 4, 32
CFG = ModelConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=8)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  prompt_mask = np.ones((N, P), np.int32)
  prompt_mask[::3, :2] = 0  # some left padding
  lengths = rng.integers(1, T + 1, size=N)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  return {
      "prompt_tokens": rng.integers(3, V, (N, P)).astype(np.int32) * prompt_mask,
      "prompt_mask": prompt_mask,
      "tokens": rng.integers(3, V, (N, T)).astype(np.int32) * mask,
      "mask": mask,
      "old_logp": (-rng.uniform(2.5, 4.0, (N, T))).astype(np.float32) * mask,
      "ref_logp": (-rng.uniform(2.5, 4.0, (N, T))).astype(np.float32) * mask,
      "advantages": rng.normal(size=N).astype(np.float32),
      "loss_mask": mask.astype(np.float32),
  }


def _params():
  return nnx.split(Decoder(CFG, nnx.Rngs(params=0)))


def _one_step(mesh, loss_cfg, grad_accum=1, steps=1):
  graphdef, params = _params()
  params = jax.device_put(params, shd.param_shardings(params, mesh))
  tx, sched = train_lib.make_optimizer(1e-2, warmup_steps=0)
  trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=sched, loss_cfg=loss_cfg,
                              adv_cfg=train_lib.AdvantageConfig(), group_size=G,
                              grad_accum=grad_accum)
  state = trainer.init_state(params, jax.random.PRNGKey(0))
  for _ in range(steps):
    state, metrics = trainer.step(state, trainer.shard_batch(_batch()))
  return jax.device_get(state.params), jax.device_get(metrics)


LOSS = train_lib.LossConfig(beta=0.04, kl_kind="k3", clip_high=0.28, temperature=0.9)


@pytest.fixture(scope="module")
def single_device():
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  return _one_step(mesh, LOSS, steps=2)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_same_update_on_every_mesh(single_device, shape):
  ref_params, ref_metrics = single_device
  params, metrics = _one_step(shd.make_mesh(shape), LOSS, steps=2)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
  # Adam divides by sqrt(v): where a gradient entry is ~0, summation-order noise changes that entry's
  # step by up to ~lr. 1e-4 is 1% of lr = 1e-2, far below what a wrong sharding would produce.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  assert abs(float(metrics["loss"])) > 0  # a real, non-degenerate loss was compared


def test_update_changes_params_and_reports_metrics(single_device):
  params, metrics = single_device
  init = jax.tree.leaves(_params()[1])
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), init)]
  assert max(moved) > 1e-3
  for key in ("loss", "pg_loss", "kl", "entropy", "clip_frac_low", "clip_frac_high", "grad_norm",
              "learning_rate", "approx_kl_old"):
    assert np.isfinite(metrics[key]), key
  assert metrics["learning_rate"] == pytest.approx(1e-2)


def test_grad_accum_matches_full_batch():
  # Compared through plain SGD, not the default clipped Adam: Adam's first step lr*g/(|g|+eps) and the
  # global-norm clip are blind to the gradient's scale (a sum instead of a mean of the microbatch
  # gradients would pass), and Adam amplifies float32 noise by lr/eps = 1e6 where |g| ~ eps = 1e-8 (a
  # 1.2e-4 relative miss on one entry on some CPUs). With SGD p = p0 - lr*g, so the two runs differ by
  # lr times the difference of their gradients, plus rounding.
  mesh = shd.make_mesh((2, 1, 1), devices=jax.devices()[:2])
  lr, u = 1.0, 2.0**-24  # u: float32 unit roundoff
  tx = optax.sgd(lr)
  graphdef, params0 = _params()

  def run(grad_accum):
    params = jax.device_put(params0, shd.param_shardings(params0, mesh))
    trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=optax.constant_schedule(lr),
                                loss_cfg=LOSS, adv_cfg=train_lib.AdvantageConfig(), group_size=G,
                                grad_accum=grad_accum)
    state, m = trainer.step(trainer.init_state(params, jax.random.PRNGKey(0)),
                            trainer.shard_batch(_batch()))
    return jax.device_get(state.params), jax.device_get(m)

  p1, m1 = run(1)
  p4, m4 = run(4)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)  # norm of the mean gradient
  # Each weight's gradient is a float32 sum over the n = N*(P+T) token positions, and accumulation
  # regroups that sum; reordering a sum of n terms moves it by at most ~n*u*max|term| (Higham's
  # (n-1)u*sum|term|, with the terms at the scale of the leaf's largest gradient entry; measured: at
  # most 20*u*g_max here, against n = 176). rtol = 2u: each run rounds p0 - lr*g once.
  n = N * (P + T)
  for p0, a, b in zip(jax.tree.leaves(jax.device_get(params0)), jax.tree.leaves(p1), jax.tree.leaves(p4)):
    g_max = float(np.abs(np.asarray(p0) - a).max()) / lr
    assert g_max > 0  # every leaf took a real step
    np.testing.assert_allclose(a, b, rtol=2 * u, atol=lr * n * u * g_max)


def test_rescored_logprobs_match_manual_forward():
  graphdef, params = _params()
  b = _batch()
  logp, _ = train_lib.completion_logprobs(graphdef, params, b["prompt_tokens"], b["prompt_mask"],
                                          b["tokens"], b["mask"], 0.7)
  model = nnx.merge(graphdef, params)
  for i in (0, 3, 5):  # row 3 is left-padded: evaluate it unpadded
    keep = b["prompt_mask"][i].astype(bool)
    seq = np.concatenate([b["prompt_tokens"][i][keep], b["tokens"][i]])[None]
    logits = np.asarray(model(jnp.asarray(seq)))[0] / 0.7
    lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    start = int(keep.sum()) - 1
    want = lsm[start + np.arange(T), b["tokens"][i]]
    m = b["mask"][i].astype(bool)
    np.testing.assert_allclose(np.asarray(logp[i])[m], want[m], atol=1e-4)


@pytest.mark.parametrize("parts", [2, 4])
def test_scoring_in_strided_parts_keeps_every_row_in_place(parts):
  """`Trainer.prepare` scores in the update's micro-batches: the same [N, T] log-probs, row for row,
  as one full-batch scoring (rows m, m + parts, ... go together and come back to their places)."""
  graphdef, params = _params()
  b = _batch()
  args = (b["prompt_tokens"], b["prompt_mask"], b["tokens"], b["mask"], 0.7, 0)
  full = train_lib.completion_logprobs(graphdef, params, *args[:5])[0]
  split = jax.jit(lambda p: train_lib.scored_in_parts(graphdef, p, args, parts))(params)
  np.testing.assert_allclose(np.asarray(split), np.asarray(full), atol=1e-5)
  assert not np.allclose(np.asarray(split)[:-1], np.asarray(full)[1:], atol=1e-3)  # rows are distinct


def test_prepare_batch_filters_and_kl_reward():
  graphdef, params = _params()
  b = {k: jnp.asarray(v) for k, v in _batch().items()}
  b["truncated"] = jnp.asarray(np.arange(N) % 5 == 0)
  rewards = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]], np.float32)
  valid = np.ones(N, bool)
  valid[2] = False
  cfg = train_lib.AdvantageConfig(filter_zero_std=True, mask_truncated=True)
  out, m = train_lib.prepare_batch(graphdef, params, None, b, jnp.asarray(rewards), jnp.asarray(valid),
                                   group_size=G, cfg=cfg, rescore_old=False, temperature=1.0)
  keep = np.repeat([True, False, True, False], G) & valid & ~(np.arange(N) % 5 == 0)
  np.testing.assert_array_equal(np.asarray(out["loss_mask"]).any(1), keep & b["mask"].any(1))
  assert float(m["frac_zero_std_groups"]) == 0.5
  r = rewards[0]
  want = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
  np.testing.assert_allclose(np.asarray(out["advantages"][:G]), want, rtol=1e-5)
  # KL in the reward: r_i - beta * sum_t k3(old, ref); the advantages follow from the shaped reward.
  cfg = train_lib.AdvantageConfig(kl_in_reward=True, beta=0.5, estimator="dr_grpo")
  out, _ = train_lib.prepare_batch(graphdef, params, params, b, jnp.asarray(rewards), jnp.ones(N, bool),
                                   group_size=G, cfg=cfg, rescore_old=True, temperature=1.0)
  old, ref = np.asarray(out["old_logp"]), np.asarray(out["ref_logp"])
  np.testing.assert_allclose(old, ref, atol=1e-6)  # policy == reference here: zero KL
  np.testing.assert_allclose(np.asarray(out["advantages"]).reshape(4, G),
                             rewards - rewards.mean(1, keepdims=True), atol=1e-5)


def test_on_policy_first_update_has_unit_ratio():
  """Rescored old log-probs make the first update exactly on-policy: ratio 1, nothing clipped."""
  graphdef, params = _params()
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  tx, sched = train_lib.make_optimizer(1e-3)
  cfg = dataclasses.replace(LOSS, beta=0.0)
  trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=sched, loss_cfg=cfg,
                              adv_cfg=train_lib.AdvantageConfig(), group_size=G, rescore_old=True)
  b = _batch()
  b["truncated"] = np.zeros(N, bool)
  rewards = np.random.default_rng(1).integers(0, 2, (N // G, G)).astype(np.float32)
  state = trainer.init_state(params, jax.random.PRNGKey(0))
  prepared, _ = trainer.prepare(state.params, None, trainer.shard_batch(b), rewards, np.ones(N, bool))
  prepared = {k: v for k, v in prepared.items() if k != "truncated"}
  _, m = trainer.step(state, prepared)
  assert float(m["ratio_max"]) == pytest.approx(1.0, abs=1e-5)
  assert float(m["ratio_min"]) == pytest.approx(1.0, abs=1e-5)
  assert float(m["clip_frac"]) == 0.0
