"""`Trainer.update`: the μ × minibatch updates of one rollout in one jitted program, minibatches kept sharded,
and non-finite updates skipped in the graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from test_train import LOSS, N, _batch, _params


def _trainer(mesh, **kwargs):
  graphdef, params = _params()
  params = jax.device_put(params, shd.param_shardings(params, mesh))
  tx, sched = train_lib.make_optimizer(1e-2)
  trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=sched, loss_cfg=LOSS,
                              adv_cfg=train_lib.AdvantageConfig(), group_size=4, **kwargs)
  return trainer, trainer.init_state(params, jax.random.PRNGKey(0))


def test_strided_split_takes_every_mth_row():
  x = np.arange(12 * 2).reshape(12, 2)
  parts = np.asarray(train_lib.strided_split({"x": x}, 3)["x"])
  assert parts.shape == (3, 4, 2)
  for m in range(3):
    np.testing.assert_array_equal(parts[m], x[m::3])
  with pytest.raises(ValueError, match="not divisible into 5"):
    train_lib.strided_split({"x": x}, 5)


def test_update_equals_the_sequence_of_steps():
  """μ = 2 passes × M = 2 minibatches in one program == four `train_step`s on the strided parts."""
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer, state = _trainer(mesh, num_iterations=2, num_minibatches=2)
  batch = _batch()
  got_state, got = trainer.update(state, trainer.shard_batch(batch))

  ref_trainer, ref_state = _trainer(mesh)
  metrics = []
  for _ in range(2):
    for m in range(2):
      part = {k: v[m::2] for k, v in batch.items()}
      ref_state, mm = ref_trainer.step(ref_state, ref_trainer.shard_batch(part))
      metrics.append(jax.device_get(mm))
  assert int(got_state.step) == int(ref_state.step) == 4
  for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for key in ("loss", "grad_norm", "kl", "entropy", "learning_rate"):
    np.testing.assert_allclose(got[key], np.mean([m[key] for m in metrics]), rtol=1e-5, atol=1e-7)
  assert float(got["update_skipped"]) == 0.0


def test_minibatches_stay_sharded_on_a_data_mesh():
  """On an (8, 1, 1) mesh the parameters are replicated: the only collective the update may need is the
  gradient all-reduce. Slicing contiguous minibatches out of a row-sharded batch would move rows between
  devices (all-to-all / all-gather / collective-permute)."""
  mesh = shd.make_mesh((8, 1, 1))
  trainer, state = _trainer(mesh, num_iterations=2, num_minibatches=2)
  batch = trainer.shard_batch(_batch())
  compiled = trainer._update.lower(state, batch).compile()
  hlo = compiled.as_text()
  assert "all-reduce" in hlo
  for op in ("all-gather", "all-to-all", "collective-permute"):
    assert op not in hlo, op
  batch_in = compiled.input_shardings[0][1]
  assert all(s.spec[0] in ("data", ("data",), ("data", "fsdp")) for s in jax.tree.leaves(batch_in))


def test_a_nonfinite_update_is_skipped():
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer, state = _trainer(mesh)
  before = jax.device_get(state.params)
  batch = _batch()
  batch["advantages"] = batch["advantages"].copy()
  batch["advantages"][3] = np.nan
  state, m = trainer.update(state, trainer.shard_batch(batch))
  assert float(m["update_skipped"]) == 1.0 and not np.isfinite(float(m["loss"]))
  assert int(state.step) == 0  # step counts applied updates: the schedule does not advance
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  # The optimizer moments are untouched too: the next finite update equals a first update.
  state, m = trainer.update(state, trainer.shard_batch(_batch()))
  fresh, fresh_state = _trainer(mesh)
  fresh_state, fm = fresh.update(fresh_state, fresh.shard_batch(_batch()))
  assert float(m["update_skipped"]) == 0.0
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(fresh_state.opt_state)):
    if jnp.ndim(a):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_fsdp_gathers_weights_and_keeps_activations_batch_sharded():
  """On a (1, 8, 1) FSDP mesh, each layer's weights are all-gathered and the activations stay sharded over
  the batch: no all-reduce inside the layer scan of the forward. (Left alone, XLA kept them sharded over D
  like the embedding and all-reduced every norm; with unordered collectives on 8 CPU devices that
  deadlocked a run.)"""
  import re
  mesh = shd.make_mesh((1, 8, 1))
  trainer, state = _trainer(mesh)
  batch = trainer.shard_batch({**_batch(), "truncated": np.zeros(N, bool)})
  rewards, valid = jnp.zeros((N // 4, 4)), jnp.ones(N, bool)
  hlo = trainer._prepare.lower(state.params, state.params, batch, rewards, valid).compile().as_text()
  in_scan = [l for l in hlo.splitlines() if "while/body" in l]
  assert any(re.search(r" all-gather(-start)?\(", l) for l in in_scan)
  assert not any(re.search(r" all-reduce(-start)?\(", l) for l in in_scan)
