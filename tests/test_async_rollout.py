"""One-step-off-policy rollouts (rollout.off_policy_steps = 1): the worker sees a copy of the pre-update
parameters, at most one rollout is in flight, and the loop draws the same prompts with the same keys as the
synchronous loop, never prefetching across a checkpoint (so a SIGKILLed run resumes identically)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import async_rollout
from soak import harness

LR = "--config.optim.lr=1e-30"  # parameters stay bit-identical: stale and fresh samplers must agree
ASYNC = "--config.rollout.off_policy_steps=1"


def test_the_worker_sees_the_parameters_of_before_the_update():
  params = {"w": jnp.arange(4.0)}
  update = jax.jit(lambda p: {"w": p["w"] + 100.0}, donate_argnums=0)  # donates, like Trainer.update
  pre = async_rollout.OneStepOff()
  started = []
  pre.start(lambda p: (started.append(1), np.asarray(p["w"]).copy())[1], params, data_state={"pos": 7})
  params = update(params)  # the originals are donated while the rollout may still run
  assert pre.in_flight and pre.data_state == {"pos": 7}
  np.testing.assert_array_equal(pre.take(), [0.0, 1.0, 2.0, 3.0])
  assert not pre.in_flight and pre.take() is None and pre.data_state is None
  pre.close()


def test_at_most_one_rollout_in_flight_and_errors_reach_the_loop():
  pre = async_rollout.OneStepOff()
  pre.start(lambda p: 1 / 0, {"w": jnp.zeros(2)}, None)
  with pytest.raises(RuntimeError, match="already in flight"):
    pre.start(lambda p: 0, {"w": jnp.zeros(2)}, None)
  with pytest.raises(ZeroDivisionError):
    pre.take()
  pre.close()


def _stable(workdir):
  return [{k: v for k, v in r.items() if k != "rollout/staleness"} for r in harness.stable(workdir)]


def test_off_policy_loop_matches_the_synchronous_one_and_resumes_after_sigkill(tmp_path):
  sync_dir, async_dir, killed_dir = (str(tmp_path / n) for n in ("sync", "async", "killed"))
  for workdir, extra in ((sync_dir, [LR]), (async_dir, [LR, ASYNC])):
    proc = harness.run(workdir, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
  staleness = [r.get("rollout/staleness") for r in harness.rows(async_dir)[1:]]
  assert staleness == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # checkpoints at 2, 4, 6: no prefetch across them
  assert "rollout/staleness" not in harness.rows(sync_dir)[1]
  assert _stable(async_dir) == _stable(sync_dir)  # same prompts, keys and samples as the synchronous loop

  proc = harness.start(killed_dir, LR, ASYNC, log_path=killed_dir + ".log")
  ckpts = os.path.join(killed_dir, "checkpoints")
  committed = lambda: os.path.isdir(ckpts) and "2" in os.listdir(ckpts)  # noqa: E731
  assert harness.wait_for(committed, proc), harness.tail(killed_dir + ".log")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = harness.run(killed_dir, LR, ASYNC)
  assert proc.returncode == 0 and "resumed from" in proc.stderr, proc.stderr[-3000:]
  assert harness.stable(killed_dir) == harness.stable(async_dir)


def test_off_policy_refused_with_dynamic_sampling_and_bad_values():
  import importlib.util
  from grpo_jax import config as config_lib
  spec = importlib.util.spec_from_file_location("default_cfg", harness.DEFAULT)
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)
  for value, extra, match in ((2, {}, "must be 0"), (1, {"dynamic_sampling": True}, "do not combine")):
    c = default.get_config()
    c.rollout.off_policy_steps = value
    for k, v in extra.items():
      c.grpo[k] = v
    with pytest.raises(config_lib.ConfigError, match=f"rollout.off_policy_steps.*{match}"):
      config_lib.validate(c, 8)
