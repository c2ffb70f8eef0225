"""DAPO's two batch-level mechanisms: dynamic sampling that refills the batch with informative groups (host
side, `rollout.refill_rollout`), and the token mean over the whole batch when it is split into microbatches
("token-mean-global"); then one end-to-end run of the loop with the issue-17 knobs switched on."""
import json
import os

import jax
import numpy as np
import optax
import pytest

from grpo_jax import config as config_lib
from grpo_jax import loop
from grpo_jax import train as train_lib
from grpo_jax.rollout import Rollout, informative_groups, refill_rollout
from test_train import LOSS, N, T, _batch, _params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G = 2


def fake_rollout(tag, rewards_BxG, valid_N=None):
  """A rollout whose per-sample fields name their origin: row i of draw `tag` holds tag * 100 + i."""
  rewards_BxG = np.asarray(rewards_BxG, np.float32)
  b, g = rewards_BxG.shape
  ids = tag * 100 + np.arange(b * g)
  valid = np.ones(b * g, bool) if valid_N is None else np.asarray(valid_N, bool)
  return Rollout(batch={"tokens": np.stack([ids, ids], 1), "truncated": ids % 2 == 0},
                 rewards_BxG=rewards_BxG, valid_N=valid,
                 prompts=[f"p{i}" for i in ids], completions=[f"c{i}" for i in ids],
                 reward_metrics={"reward/total/mean": float(tag)},
                 metrics={"completion_tokens": 10.0, "completion_len/mean": float(tag)})


def test_informative_groups_ignore_dropped_samples():
  r = np.array([[1, 0], [1, 1], [0, 3], [2, 5]], np.float32)
  valid = np.array([[1, 1], [1, 1], [1, 0], [0, 0]], bool)  # group 2's spread is a dropped sample's
  np.testing.assert_array_equal(informative_groups(r, valid), [True, False, False, False])


def test_refill_replaces_equal_reward_groups_with_new_draws():
  draws = [fake_rollout(0, [[1, 1], [0, 1], [0, 0]]),  # group 1 informative
           fake_rollout(1, [[1, 0], [2, 2], [0, 0]]),  # group 0
           fake_rollout(2, [[0, 1], [1, 0], [5, 6]])]  # groups 0, 1, 2: enough after one of them
  calls = []

  def draw(i):
    calls.append(i)
    return draws[i]

  ro, m = refill_rollout(draw, num_groups=3, group_size=G, max_rounds=5)
  assert calls == [0, 1, 2]  # stopped as soon as 3 informative groups were collected
  np.testing.assert_array_equal(ro.batch["tokens"][:, 0], [2, 3, 100, 101, 200, 201])
  np.testing.assert_array_equal(ro.rewards_BxG, [[0, 1], [1, 0], [0, 1]])
  assert ro.prompts == ["p2", "p3", "p100", "p101", "p200", "p201"]
  np.testing.assert_array_equal(ro.batch["truncated"], [True, False, True, False, True, False])
  assert informative_groups(ro.rewards_BxG, ro.valid_N.reshape(3, G)).all()
  assert m == {"dynamic_sampling/rounds": 3.0, "dynamic_sampling/informative_frac": 5 / 9,
               "dynamic_sampling/discarded_groups": 6.0, "dynamic_sampling/short_groups": 0.0}
  assert ro.reward_metrics == {"reward/total/mean": 0.0}  # the first draw's: the policy's plain sample
  assert ro.metrics["completion_tokens"] == 30.0 and ro.metrics["completion_len/mean"] == 0.0


def test_refill_is_bounded_and_fills_the_rest_with_the_earliest_groups():
  draws = [fake_rollout(0, [[1, 1], [0, 0]]), fake_rollout(1, [[1, 0], [3, 3]])]
  ro, m = refill_rollout(lambda i: draws[i], num_groups=2, group_size=G, max_rounds=2)
  np.testing.assert_array_equal(ro.batch["tokens"][:, 0], [100, 101, 0, 1])  # informative first
  assert m["dynamic_sampling/rounds"] == 2 and m["dynamic_sampling/short_groups"] == 1.0
  assert m["dynamic_sampling/discarded_groups"] == 2.0
  ro, m = refill_rollout(lambda i: draws[i], num_groups=2, group_size=G, max_rounds=1)
  np.testing.assert_array_equal(ro.batch["tokens"][:, 0], [0, 1, 2, 3])  # one round: the batch as drawn
  assert m["dynamic_sampling/short_groups"] == 2.0
  with pytest.raises(ValueError, match="max_rounds"):
    refill_rollout(lambda i: draws[i], num_groups=2, group_size=G, max_rounds=0)


def test_grad_accum_with_global_token_mean_equals_the_full_batch_token_mean():
  """DAPO's token mean over the whole batch: 4 microbatches with "token-mean-global" take the same SGD
  step as the full batch with "token-mean" (averaging per-microbatch token means is a different estimate:
  tests/test_objectives.py)."""
  graphdef, params0 = _params()
  batch = _batch()  # ragged completions: microbatches hold different token counts
  lm = batch["loss_mask"]
  batch["tokens_per_seq"] = np.full(N, lm.sum() / N, np.float32)
  counts = [lm[m::4].sum() for m in range(4)]  # strided_split's microbatches
  assert len(set(counts)) > 1
  lr, u = 1.0, 2.0**-24

  def step(agg, grad_accum):
    cfg = train_lib.LossConfig(**{**LOSS.__dict__, "agg": agg})
    state = train_lib.TrainState(params0, optax.sgd(lr).init(params0), np.int32(0), jax.random.key(0))
    f = jax.jit(lambda s, b: train_lib.train_step(s, b, graphdef=graphdef, tx=optax.sgd(lr),
                                                  schedule=optax.constant_schedule(lr), cfg=cfg,
                                                  grad_accum=grad_accum))
    new, m = f(state, batch)
    return jax.device_get(new.params), float(m["loss"])

  p_full, loss_full = step("token-mean", 1)
  p_glob, loss_glob = step("token-mean-global", 4)
  np.testing.assert_allclose(loss_glob, loss_full, rtol=1e-5)
  # As tests/test_train.py: SGD moves each weight by lr·g, and regrouping a float32 sum of n terms moves g
  # by at most ~n·u·g_max; rtol = 2u for the two roundings of p0 − lr·g.
  n = N * (batch["prompt_tokens"].shape[1] + T)
  for p0, a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(p_full), jax.tree.leaves(p_glob)):
    g_max = float(np.abs(np.asarray(p0) - a).max()) / lr
    assert g_max > 0
    np.testing.assert_allclose(b, a, rtol=2 * u, atol=lr * n * u * g_max)


def _varied_reward_file(path):
  """A reward that differs between completions of one prompt (the tiny model is untrained)."""
  path.write_text("def varied(prompts, completions, **kw):\n"
                  "  return [float(sum(map(ord, c)) % 3 == 0) for c in completions]\n")
  return f"{path}:varied"


def test_loop_runs_with_the_issue_17_knobs(tmp_path):
  """Dynamic sampling with refills, truncated sampler log-probs under top-k, rescored old log-probs with
  token TIS, CISPO with the global token mean over 2 microbatches, chunked log-probs, an entropy bonus and
  REINFORCE++-baseline advantages, through `loop.train`; the metrics of each mechanism are logged."""
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  c.model.tiny.update(hidden_size=32, intermediate_size=64, num_layers=1, head_dim=8)
  c.task.kwargs.update(num_train=64, num_eval=8)
  c.rewards.names, c.rewards.correctness = (_varied_reward_file(tmp_path / "r.py"),), "exact_match"
  c.rollout.update(prompts_per_step=4, top_k=5, logprobs_mode="truncated")
  c.grpo.update(group_size=4, grad_accum=2, old_logp="rescore", rollout_is="tis", loss_type="cispo",
                clip_low=1.0, clip_high=4.0, agg="token-mean-global", logprob_chunk=2, entropy_coef=1e-3,
                estimator="reinforce_pp_baseline", dynamic_sampling=True, dynamic_sampling_max_rounds=3)
  c.sft.steps = 0
  c.train.update(num_steps=2, progress_bar=False, sample_every=0)
  c.eval.update(every=0, num_examples=8, batch_size=8, k=0)
  c.checkpoint.every = 100
  loop.train(c, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][1:]
  assert len(rows) == 2
  for r in rows:
    rounds, short = r["dynamic_sampling/rounds"], r["dynamic_sampling/short_groups"]
    assert 1 <= rounds <= 3 and r["dynamic_sampling/discarded_groups"] == 4 * rounds - 4
    assert r["frac_zero_std_groups"] == short / 4  # the trained batch: only the refill's shortfall
    # Truncated (top-k) sampler log-probs are ≥ the full-vocabulary ones the trainer rescores: π/μ ≤ 1.
    assert r["mismatch/log_ratio_mean"] < -1e-3 and r["rollout_is/weight_mean"] <= 1.0
    assert r["entropy_bonus"] > 0 and np.isfinite(r["loss"]) and r["update_skipped"] == 0
