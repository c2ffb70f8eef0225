"""Numerical faults in one update: a NaN/Inf loss, gradient or update leaves the state exactly as it was and is
reported (`loop.guarded_update`), and the stop rule names the step and the suspect (`loop.SkipGuard`)."""
import jax
import numpy as np
import pytest
from flax import nnx

from grpo_jax import loop
from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.model import ModelConfig
from grpo_jax.testing import random_model

N, P, T, V = 4, 3, 3, 16
CFG = ModelConfig.tiny(vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=8)


def _batch(advantage=1.0):
  rng = np.random.default_rng(0)
  mask = np.ones((N, T), np.int32)
  return {"prompt_tokens": rng.integers(3, V, (N, P)).astype(np.int32),
          "prompt_mask": np.ones((N, P), np.int32),
          "tokens": rng.integers(3, V, (N, T)).astype(np.int32), "mask": mask,
          "old_logp": np.full((N, T), -3.0, np.float32), "ref_logp": np.full((N, T), -3.0, np.float32),
          "advantages": (advantage * rng.normal(size=N)).astype(np.float32),
          "loss_mask": mask.astype(np.float32)}


def _trainer(lr):
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  graphdef, params = nnx.split(random_model(CFG))  # NumPy-drawn: no per-shape compile of an init
  params = jax.device_put(params, shd.param_shardings(params, mesh))
  tx, sched = train_lib.make_optimizer(lr, warmup_steps=0)
  trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=sched,
                              loss_cfg=train_lib.LossConfig(), adv_cfg=train_lib.AdvantageConfig(),
                              group_size=4)
  return trainer, trainer.init_state(params, jax.random.PRNGKey(0))


def _host(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def trainer_and_state():
  return _trainer(1e-2)


@pytest.mark.parametrize("advantage", [np.nan, np.inf])
def test_nonfinite_loss_leaves_the_state_unchanged(trainer_and_state, advantage, soak_record):
  trainer, state = trainer_and_state
  state = jax.tree.map(lambda x: x.copy(), state)
  before = _host(state)
  state, metrics, skipped = loop.guarded_update(trainer, state, trainer.shard_batch(_batch(advantage)))
  assert skipped and metrics["update_skipped"] == 1.0
  for a, b in zip(before, _host(state)):
    np.testing.assert_array_equal(a, b)  # params, both Adam moments, the step count and the rng
  soak_record("nan", case=f"advantages={advantage}", contained=True)
  # The kept state still trains: the next finite batch is a normal update.
  state, metrics, skipped = loop.guarded_update(trainer, state, trainer.shard_batch(_batch()))
  assert not skipped and metrics["update_skipped"] == 0.0 and int(state.step) == int(before[-2]) + 1
  assert any(not np.array_equal(a, b) for a, b in zip(before, _host(state)))


def test_infinite_update_from_a_huge_learning_rate_is_skipped(soak_record):
  trainer, state = _trainer(1e38)  # finite lr, but Adam's first step is ~lr: the params overflow
  before = _host(state)
  state, metrics, skipped = loop.guarded_update(trainer, state, trainer.shard_batch(_batch()))
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])  # only the update blew up
  assert skipped
  for a, b in zip(before, _host(state)):
    np.testing.assert_array_equal(a, b)
  soak_record("nan", case="lr=1e38 (update overflows)", contained=True)


def _metrics(loss=0.1, grad=1.0, update=0.01, param=10.0):
  return {"loss": loss, "grad_norm": grad, "update_norm": update, "param_norm": param}


@pytest.mark.parametrize("metrics,suspect", [
    (_metrics(loss=np.nan, grad=np.nan, update=np.nan, param=np.nan), "logits"),
    (_metrics(grad=np.inf, update=np.nan, param=np.nan), "gradients"),
    (_metrics(update=np.inf, param=np.inf), "learning rate"),
])
def test_skip_guard_stops_after_k_consecutive_skips_naming_step_and_suspect(metrics, suspect):
  guard = loop.SkipGuard(max_consecutive=3, lr=3e-4, temperature=1.0)
  guard.update(step=1, skipped=True, metrics=metrics)
  guard.update(step=2, skipped=False, metrics=_metrics())  # a good step resets the count
  guard.update(step=3, skipped=True, metrics=metrics)
  guard.update(step=4, skipped=True, metrics=metrics)
  with pytest.raises(loop.TrainingDiverged) as e:
    guard.update(step=5, skipped=True, metrics=metrics)
  msg = str(e.value)
  assert "3 consecutive" in msg and "step 5" in msg and suspect in msg, msg


def test_skip_guard_stops_when_no_sample_has_a_reward():
  guard = loop.SkipGuard(max_consecutive=2, lr=3e-4, temperature=1.0)
  guard.update(step=1, skipped=True, metrics={}, no_valid_samples=True)
  with pytest.raises(loop.TrainingDiverged, match=r"step 2.*no sample.*reward.*rewards.on_error"):
    guard.update(step=2, skipped=True, metrics={}, no_valid_samples=True)
