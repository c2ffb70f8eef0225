"""Multi-turn / tool-use rollouts: the calculator environment, the batch layout, the loss mask."""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grpo_jax import config as config_lib
from grpo_jax import env as env_lib
from grpo_jax import losses, multiturn, rewards
from grpo_jax import sampler as sampler_lib
from grpo_jax import train as train_lib
from grpo_jax.model import Decoder, ModelConfig
from grpo_jax.rollout import PromptFormat
from grpo_jax.tasks.calculator import CalculatorEnv, calculate, make_calculator_split
from grpo_jax.tokenizer import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = CharTokenizer()
EOS = TOK.eos_id


# ------------------------------------------------------------------------------------- the calculator
@pytest.mark.parametrize("expr, want", [
    ("12*7", "84"), (" 3 + 4*2 ", "11"), ("(1+2)*3", "9"), ("-7/2", "-3.5"), ("1/3", "0.333333"),
    ("2**10", "1024"), ("2**-2", "0.25"), ("1.5*2", "3"), ("10-10", "0"),
    ("1/0", "error: division by zero"), ("5/(3-3)", "error: division by zero"),
    ("0**-1", "error: division by zero"),
    ("9**9**9", "error: exponent too large"), ("2**100000", "error: exponent too large"),
    ("10**31", "error: result too large"), ("99999999999*99999999999*99999999999", "error: result too large"),
    ("4**0.5", "error: exponent must be an integer"), ("1e999", "error: not a finite number"),
    ("abc", "error: only numbers, + - * / ** and parentheses"),
    ("__import__('os').system('x')", "error: only numbers, + - * / ** and parentheses"),
    ("1+", "error: not an arithmetic expression"), ("", "error: empty expression"),
    ("1" * 65, "error: expression longer than 64 characters"),
])
def test_calculator_hand_cases(expr, want):
  assert calculate(expr) == want


def test_calculator_is_bounded_on_hostile_input():
  """Every refusal is fast: no big-integer power, no deep parse, no unbounded string."""
  hostile = ["9" * 10**6, "(" * 10**5, "-" * 63 + "1", "2**64**64", "((((((((((((((((9))))))))))))))))**64",
             "\x00\n<calc>", "1" + "*1" * 31]
  t0 = time.perf_counter()
  out = [calculate(e) for e in hostile]
  assert time.perf_counter() - t0 < 1.0
  assert out[0].startswith("error") and out[1].startswith("error") and out[2] == "-1"
  assert out[3] == out[4] == "error: result too large"  # 64**64 is refused before 2**(64**64)
  assert out[5].startswith("error") and out[6] == "1"


def test_calculator_env_episode():
  env = CalculatorEnv()
  assert env.reset({"prompt": "12*7=", "answer": "84"}) == "12*7="
  assert env.step("<calc>12*7</calc>") == ("<result>84</result>", 0.0, False)
  assert env.step("so <calc>1/0</calc>") == ("<result>error: division by zero</result>", 0.0, False)
  assert env.step("<calc>9**9**9</calc>")[0] == "<result>error: exponent too large</result>"
  assert env.calls == 3
  assert env.step(" 84 ") == ("", 1.0, True)
  env.reset({"prompt": "12*7=", "answer": "84"})
  assert env.step("85") == ("", 0.0, True)
  assert env.step("<calc>12*7") == ("", 0.0, True)  # an unfinished call is a (wrong) final answer
  assert env.step("garbage </calc>") == ("", 0.0, True)  # no opening tag: not a call
  costly = CalculatorEnv(call_cost=0.1)
  costly.reset({"prompt": "1+1=", "answer": "2"})
  assert costly.step("<calc>1+1</calc>")[1] == pytest.approx(-0.1)
  assert isinstance(env, env_lib.Environment)


def test_calculator_split_demonstrations():
  train, evals = make_calculator_split(200, 20, seed=0, tool_frac=0.5)
  assert not {e["question"] for e in evals} & {e["question"] for e in train}
  tool = [e for e in train if e["demo"].startswith("<calc>")]
  assert 60 < len(tool) < 140
  for e in train:
    a, b = map(int, e["question"].split("*"))
    assert e["answer"] == str(a * b)
    if e["demo"].startswith("<calc>"):
      assert e["demo"] == f"<calc>{e['question']}</calc><result>{a * b}</result>{a * b}"
    else:  # the teacher's estimate: two significant digits
      assert e["demo"] == str(int(float(f"{a * b:.2g}")))


# ------------------------------------------------------------------------------------- the layout
def test_stop_cut():
  ids = TOK.encode("<calc>1+2</calc><res")
  assert multiturn.stop_cut(TOK, ids, ("</calc>",)) == len("<calc>1+2</calc>")
  assert multiturn.stop_cut(TOK, ids, ()) == len(ids)
  assert multiturn.stop_cut(TOK, TOK.encode("12"), ("</calc>",)) == 2


TURN = 24


def _scripted_generate(script, calls):
  """A stand-in for the jitted sampler: call k returns the texts `script[k]` (one per row) as tokens, with
  log-probs -(k + 1) - 0.01 * position, and records its inputs."""

  def generate(params, tokens, mask, rng):
    k = len(calls)
    calls.append((np.asarray(tokens), np.asarray(mask), rng))
    n = tokens.shape[0]
    out_t = np.zeros((n, TURN), np.int32)
    out_m = np.zeros((n, TURN), np.int32)
    for i, text in enumerate(script[k]):
      ids = TOK.encode(text.replace("$", "")) + ([EOS] if text.endswith("$") else [])
      out_t[i, :len(ids)], out_m[i, :len(ids)] = ids, 1
    logp = (-(k + 1) - 0.01 * np.arange(TURN))[None].repeat(n, 0).astype(np.float32) * out_m
    lengths = out_m.sum(1)
    return sampler_lib.SampleOutput(tokens=out_t, logprobs=logp, mask=out_m, lengths=lengths,
                                    truncated=lengths == TURN, num_steps=np.int32(TURN))

  return generate


SCRIPT = [  # $ = EOS
    ["<calc>12*7</calc><res", "85$", "<calc>3*3</calc>zz"],
    ["84$", "(finished: ignored)", "<calc>1/0</calc>"],
    ["(finished)", "(finished)", "<calc>9*9</calc>"],
]
EXAMPLES = [{"prompt": "12*7=", "answer": "84"}, {"prompt": "12*7=", "answer": "84"},
            {"prompt": "3*3=", "answer": "9"}]


def _spec(max_turns=3, max_obs=20):
  return env_lib.EnvSpec(factory=CalculatorEnv, max_turns=max_turns, max_obs_tokens=max_obs, turn_tokens=TURN)


def test_multiturn_layout_on_a_scripted_sampler():
  calls = []
  spec = _spec()
  runner = rewards.RewardRunner([rewards.get_reward_fn("env_reward")])
  ro = multiturn.rollout(_scripted_generate(SCRIPT, calls), None, EXAMPLES, TOK, runner, jax.random.PRNGKey(0),
                         group_size=1, prompt_len=6, fmt=PromptFormat(), spec=spec)
  b, enc = ro.batch, TOK.encode
  T = 3 * TURN + 2 * 20
  assert b["tokens"].shape == b["mask"].shape == b["action_mask"].shape == b["old_logp"].shape == (3, T)
  # Row 0: a call (cut at the stop string), the result, the answer with EOS.
  parts0 = [(enc("<calc>12*7</calc>"), 1), (enc("<result>84</result>"), 0), (enc("84") + [EOS], 1)]
  # Row 1: a direct (wrong) answer: done after one turn.
  parts1 = [(enc("85") + [EOS], 1)]
  # Row 2: calls every turn until max_turns (the third turn's observation is not appended).
  parts2 = [(enc("<calc>3*3</calc>"), 1), (enc("<result>9</result>"), 0), (enc("<calc>1/0</calc>"), 1),
            (enc("<result>error: divis"), 0), (enc("<calc>9*9</calc>"), 1)]
  for row, parts in enumerate([parts0, parts1, parts2]):
    ids = [t for p, _ in parts for t in p]
    act = [a for p, a in parts for _ in p]
    k = len(ids)
    np.testing.assert_array_equal(b["tokens"][row, :k], ids)
    np.testing.assert_array_equal(b["tokens"][row, k:], TOK.pad_id)
    np.testing.assert_array_equal(b["mask"][row], [1] * k + [0] * (T - k))
    np.testing.assert_array_equal(b["action_mask"][row, :k], act)
    assert b["action_mask"][row, k:].sum() == 0
    # log-probs: the sampler's at model tokens (turn j: -(j+1) - 0.01 * position in the turn), 0 elsewhere
    want, turn = [], 0
    for p, a in parts:
      want += list(-(turn + 1) - 0.01 * np.arange(len(p))) if a else [0.0] * len(p)
      turn += a
    np.testing.assert_allclose(b["old_logp"][row, :k], want, rtol=1e-6)
  np.testing.assert_array_equal(b["prompt_tokens"], [[0] + enc("12*7="), [0] + enc("12*7="), [0, 0] + enc("3*3=")])
  np.testing.assert_array_equal(b["prompt_mask"], [[0] + [1] * 5, [0] + [1] * 5, [0, 0] + [1] * 4])
  np.testing.assert_array_equal(ro.rewards_BxG[:, 0], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(b["truncated"], [False, False, True])
  assert ro.completions[0] == "<calc>12*7</calc><result>84</result>84"
  assert ro.metrics["multiturn/turns_mean"] == pytest.approx(2.0) and ro.metrics["multiturn/obs_cut"] == 1
  assert ro.metrics["completion_tokens"] == sum(b["action_mask"].sum(1))
  # The sampler saw one static context bucket; turn 2's context of row 0 = prompt + call + result.
  assert len(calls) == 3 and {c[0].shape for c in calls} == {(3, spec.context_len(6))}
  ctx = enc("12*7=") + enc("<calc>12*7</calc>") + enc("<result>84</result>")
  np.testing.assert_array_equal(calls[1][0][0, -len(ctx):], ctx)
  assert calls[1][1][0].sum() == len(ctx) and calls[1][1][0, -1] == 1
  assert not np.array_equal(jax.random.key_data(calls[0][2]), jax.random.key_data(calls[1][2]))


def test_environment_errors_end_the_episode_not_the_run():
  class Broken(CalculatorEnv):
    def step(self, text):
      raise RuntimeError("boom")
  spec = dataclasses.replace(_spec(), factory=Broken)
  runner = rewards.RewardRunner([rewards.get_reward_fn("env_reward")])
  ro = multiturn.rollout(_scripted_generate(SCRIPT, []), None, EXAMPLES, TOK, runner, jax.random.PRNGKey(0),
                         group_size=1, prompt_len=6, fmt=PromptFormat(), spec=spec)
  assert ro.metrics["multiturn/env_errors"] == 3 and ro.metrics["multiturn/turns_mean"] == 1
  np.testing.assert_array_equal(ro.rewards_BxG, 0.0)


# ------------------------------------------------------------------------------------- the loss mask
V = TOK.vocab_size
CFG = ModelConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)


def _layout_batch():
  """The scripted rollout's batch, one group of 3."""
  runner = rewards.RewardRunner([rewards.get_reward_fn("env_reward")])
  # One group of three episodes of "12*7=" (the script's rows: rewards 1, 0, 0).
  ro = multiturn.rollout(_scripted_generate(SCRIPT, []), None, EXAMPLES[:1], TOK, runner,
                         jax.random.PRNGKey(0), group_size=3, prompt_len=6, fmt=PromptFormat(), spec=_spec())
  return {k: jnp.asarray(v) for k, v in ro.batch.items()}, jnp.asarray(ro.rewards_BxG), ro


# Jitted once per graphdef (eager NNX calls compile every op: minutes on 2 CPUs).
@functools.partial(jax.jit, static_argnums=0)
def _prepared(graphdef, params, batch, rewards_BxG):
  out, _ = train_lib.prepare_batch(graphdef, params, params, batch, rewards_BxG, jnp.ones((3,), bool),
                                   group_size=3, cfg=train_lib.AdvantageConfig(), rescore_old=True,
                                   temperature=1.0)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _logp(graphdef, params, b):
  return train_lib.completion_logprobs(graphdef, params, b["prompt_tokens"], b["prompt_mask"], b["tokens"],
                                       b["mask"], 1.0)[0]


@functools.partial(jax.jit, static_argnums=(1, 3))
def _loss(params, graphdef, mb, cfg):
  return train_lib.loss_fn(params, graphdef, mb, cfg)[0]


def test_env_tokens_are_context_without_loss_or_gradient():
  graphdef, params = nnx.split(Decoder(CFG, nnx.Rngs(params=0)))
  batch, rewards_BxG, ro = _layout_batch()
  act = np.asarray(batch["action_mask"])
  env = np.asarray(batch["mask"]) * (1 - act)
  assert env.sum() > 0 and ro.rewards_BxG.std() > 0
  mb = _prepared(graphdef, params, batch, rewards_BxG)
  np.testing.assert_array_equal(mb["loss_mask"], act)  # loss mask 0 on environment tokens
  cfg = train_lib.LossConfig(beta=0.1)  # old_logp re-scored (on-policy everywhere), ref = policy
  loss = lambda p, b: float(_loss(p, graphdef, b, cfg))  # noqa: E731
  base = loss(params, mb)
  # The old / reference log-probs of environment tokens do not enter the loss.
  noise = jnp.asarray(np.random.default_rng(0).normal(size=env.shape) * env, jnp.float32)
  assert loss(params, {**mb, "old_logp": mb["old_logp"] + noise, "ref_logp": mb["ref_logp"] - noise}) == base
  # Gradient invariant: d loss / d logp is exactly 0 at environment tokens (and not at model tokens).
  logp = _logp(graphdef, params, mb)
  old = jax.lax.stop_gradient(logp)  # on-policy: no token is clipped
  g = np.asarray(jax.jit(jax.grad(lambda lp: losses.grpo_loss(lp, old, mb["ref_logp"], mb["advantages"],
                                                      mb["loss_mask"], beta=0.1)[0]))(logp))
  assert np.all(g[env == 1] == 0) and np.count_nonzero(g[act == 1]) > 0.9 * act.sum()
  # Changing the target of the last environment token (nothing after it is scored) leaves the loss alone,
  # while the same change counts once environment tokens are (wrongly) in the loss mask.
  row = 2
  k = int(np.asarray(batch["mask"])[row].sum())
  last_env = np.flatnonzero(env[row])[-1]
  ended_on_obs = {key: v for key, v in batch.items()}
  for key in ("mask", "action_mask"):
    ended_on_obs[key] = batch[key].at[row, last_env + 1:k].set(0)
  mb2 = _prepared(graphdef, params, ended_on_obs, rewards_BxG)
  swapped = {**mb2, "tokens": mb2["tokens"].at[row, last_env].set(TOK.encode("q")[0])}
  assert loss(params, swapped) == pytest.approx(loss(params, mb2), abs=1e-7)
  counted = {**mb2, "loss_mask": mb2["mask"].astype(jnp.float32)}
  counted_swapped = {**counted, "tokens": swapped["tokens"]}
  assert abs(loss(params, counted_swapped) - loss(params, counted)) > 1e-4
  # ... and environment tokens are attended to: changing one changes the next model tokens' log-probs.
  first_env = np.flatnonzero(env[0])[0]
  t2 = batch["tokens"].at[0, first_env].set(TOK.encode("q")[0])
  logp2 = _logp(graphdef, params, {**mb, "tokens": t2})
  later_model = (act[0] == 1) & (np.arange(act.shape[1]) > first_env)
  assert np.abs(np.asarray(logp2 - logp)[0][later_model]).max() > 1e-4


def test_default_path_without_action_mask_is_unchanged():
  """Without `action_mask` the loss mask is `mask`, as before multi-turn rollouts existed."""
  graphdef, params = nnx.split(Decoder(CFG, nnx.Rngs(params=0)))
  batch, rewards_BxG, _ = _layout_batch()
  plain = {k: v for k, v in batch.items() if k != "action_mask"}
  mb = _prepared(graphdef, params, plain, rewards_BxG)
  np.testing.assert_array_equal(mb["loss_mask"], batch["mask"])


class _Echo:
  """Never done: every turn gets the same observation (a multi-turn episode for any model)."""

  stop_strings = ()

  def reset(self, example):
    return example["prompt"]

  def step(self, text):
    return "<ok>", 0.0, False


def test_multiturn_rollout_is_on_policy_for_the_trainer():
  """The trainer's re-score of a real multi-turn episode equals the sampler's log-probs on model tokens:
  the observations sit at the positions, and in the context, that the sampler saw."""
  graphdef, params = nnx.split(Decoder(CFG, nnx.Rngs(params=1)))
  spec = env_lib.EnvSpec(factory=_Echo, max_turns=3, max_obs_tokens=4, turn_tokens=5)
  gen = jax.jit(sampler_lib.make_generate_fn(graphdef, max_new_tokens=5, eos_id=EOS, pad_id=TOK.pad_id))
  examples = [{"prompt": "12*7="}, {"prompt": "3+4="}]
  runner = rewards.RewardRunner([rewards.get_reward_fn("exact_match")])
  ro = multiturn.rollout(gen, params, [dict(e, answer="x") for e in examples], TOK, runner,
                         jax.random.PRNGKey(3), group_size=4, prompt_len=6, fmt=PromptFormat(), spec=spec)
  b = {k: jnp.asarray(v) for k, v in ro.batch.items()}
  assert ro.metrics["multiturn/turns_mean"] > 1 and np.asarray(b["mask"] - b["action_mask"]).sum() > 0
  logp = _logp(graphdef, params, b)
  act = np.asarray(b["action_mask"]) == 1
  np.testing.assert_allclose(np.asarray(logp)[act], np.asarray(b["old_logp"])[act], atol=2e-5)


# ------------------------------------------------------------------------------------- the config
def _config():
  return config_lib.load_config(os.path.join(ROOT, "experiments", "calculator.py"))


@pytest.mark.parametrize("key, value, named", [
    ("env.name", "no_such_env", "env.name"), ("env.max_turns", 0, "env.max_turns"),
    ("env.max_obs_tokens", -1, "env.max_obs_tokens"), ("eval.k", 4, "eval.k"),
    ("env.kwargs", {"no_such_option": 1}, "env.name"), ("env.name", "", "rewards.names"),
])
def test_env_config_errors_name_the_key(key, value, named):
  c = _config()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, 8)
  assert e.value.key == named


def test_calculator_config_validates():
  config_lib.validate(_config(), 8)
  spec = env_lib.from_config(_config())
  assert spec.max_turns == 2 and spec.completion_len == 2 * 48 + 24


def test_calculator_experiment_runs_through_the_loop(tmp_path):
  """`loop.train` with `env.name`: multi-turn rollouts, the loss on model tokens, multi-turn evaluation."""
  import json
  from grpo_jax import loop
  c = _config()
  c.model.tiny = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16)
  c.task.kwargs.num_train = 64
  c.task.kwargs.num_eval = 8
  c.rollout.prompts_per_step = 4
  c.rollout.max_new_tokens = 8
  c.grpo.group_size = 2
  c.sft.steps = 0
  c.train.num_steps = 1
  c.train.progress_bar = False
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.checkpoint.every = 1
  summary = loop.train(c, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [0, 1]
  assert rows[1]["multiturn/turns_mean"] >= 1 and "reward/env_reward/mean" in rows[1]
  assert np.isfinite(rows[1]["loss"]) and rows[1]["update_skipped"] == 0
  assert "eval/turns_mean" in summary["eval_after"] and 0 <= summary["eval_after"]["eval/accuracy"] <= 1
