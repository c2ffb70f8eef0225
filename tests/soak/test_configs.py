"""Invalid configs fail in `config.validate`, before anything is built, with a ConfigError naming the key and
the allowed values (issue 16's config holes, then a property test over every numeric field)."""
import copy
import math
import os

import hypothesis
import pytest
from hypothesis import strategies as st

from grpo_jax import config as config_lib
from grpo_jax import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = os.path.join(ROOT, "experiments", "default.py")


_BASE = config_lib.load_config(DEFAULT)


def _with(key: str, value):
  c = copy.deepcopy(_BASE)
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  with c.ignore_type():
    node[leaf] = value
  return c


# (key, bad value, a fragment of the allowed values the message must state). The first group is the probe's
# list in issue 16: each of these was accepted silently or failed late with a bare ZeroDivisionError.
HOLES = [
    ("grpo.num_minibatches", 0, ">= 1"), ("grpo.grad_accum", 0, ">= 1"), ("checkpoint.every", 0, ">= 1"),
    ("checkpoint.every", -2, ">= 1"), ("optim.warmup_steps", -1, ">= 0"), ("eval.num_examples", -1, ">= 1"),
    ("eval.every", -1, ">= 0"), ("eval.k", -1, ">= 0"), ("rewards.timeout_s", 0.0, "> 0"),
    ("rewards.timeout_s", -1.0, "> 0"), ("optim.lr", math.inf, "finite"), ("optim.lr", math.nan, "finite"),
    ("rewards.fallback", math.nan, "finite"), ("rewards.fallback", -math.inf, "finite"),
    ("rewards.weights", (math.inf,), "finite"), ("rewards.weights", (math.nan,), "finite"),
    # Found while writing the above: same class of hole.
    ("eval.batch_size", 0, ">= 1"), ("sft.batch_size", 0, ">= 1"), ("rollout.top_k", -1, ">= 0"),
    ("rollout.top_p", 0.0, "(0, 1]"), ("rollout.min_p", 1.0, "[0, 1)"), ("rollout.temperature", math.inf,
                                                                          "finite"),
    ("grpo.beta", math.nan, "finite"), ("optim.b2", 1.0, "[0, 1)"), ("optim.weight_decay", -0.1, ">= 0"),
    ("train.sample_every", -1, ">= 0"), ("train.max_consecutive_skips", 0, ">= 1"),
    ("eval.temperature", -1.0, ">= 0"), ("rewards.timeout_s", math.inf, "finite"),
    ("grpo.num_minibatches", "two", ">= 1"),
]


@pytest.mark.parametrize("key,value,allowed", HOLES, ids=[f"{k}={v!r}" for k, v, _ in HOLES])
def test_config_hole_is_a_config_error_naming_key_and_allowed_values(key, value, allowed):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_with(key, value), 8)
  assert f"config.{key}" in str(e.value) and allowed in str(e.value), str(e.value)


def test_invalid_config_fails_before_anything_is_built_or_written(tmp_path, monkeypatch):
  def built(*_):
    raise AssertionError("build_experiment ran for an invalid config")
  monkeypatch.setattr(loop, "build_experiment", built)
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError, match=r"config\.checkpoint\.every"):
    loop.train(_with("checkpoint.every", 0), str(workdir))
  assert not workdir.exists()


def test_unknown_override_key_names_the_full_path():
  c = config_lib.load_config(DEFAULT)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_override_keys(c, ["prog", "--config.grpo.x=1", "--config.grpo.beta=0.1"])
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("config.grpo.x: unknown key") and "beta" in msg
  with pytest.raises(config_lib.ConfigError, match=r"config\.nope\.deep: unknown key"):
    config_lib.check_override_keys(c, ["--config.nope.deep", "3"])
  config_lib.check_override_keys(c, ["--config.grpo.beta=0.1", "--config.task.kwargs.num_train=5",
                                     "--workdir=/tmp/x", "--config=experiments/default.py"])


# ------------------------------------------------------------------------------------------ property test
# The documented allowed values of each numeric field (experiments/default.py comments), written here
# independently of config.validate: valid(value) -> bool.
FINITE = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
INT = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
FIELDS = {
    "grpo.group_size": lambda v: INT(v) and v >= 2,
    "grpo.num_iterations": lambda v: INT(v) and v >= 1,
    "grpo.beta": lambda v: FINITE(v) and v >= 0,
    "grpo.clip_low": lambda v: FINITE(v) and 0 <= v < 1,
    "grpo.clip_high": lambda v: FINITE(v) and v >= 0,
    "grpo.ref_reset_every": lambda v: INT(v) and v >= 0,
    "rollout.temperature": lambda v: FINITE(v) and v > 0,
    "rollout.top_k": lambda v: INT(v) and v >= 0,
    "rollout.top_p": lambda v: FINITE(v) and 0 < v <= 1,
    "rollout.min_p": lambda v: FINITE(v) and 0 <= v < 1,
    "optim.lr": lambda v: FINITE(v) and v > 0,
    "optim.warmup_steps": lambda v: INT(v) and v >= 0,
    "optim.weight_decay": lambda v: FINITE(v) and v >= 0,
    "optim.b1": lambda v: FINITE(v) and 0 <= v < 1,
    "optim.b2": lambda v: FINITE(v) and 0 <= v < 1,
    "optim.grad_clip": lambda v: FINITE(v) and v > 0,
    "rewards.timeout_s": lambda v: FINITE(v) and v > 0,
    "rewards.fallback": FINITE,
    "train.num_steps": lambda v: INT(v) and v >= 1,
    "train.sample_every": lambda v: INT(v) and v >= 0,
    "train.num_samples_logged": lambda v: INT(v) and v >= 0,
    "train.max_consecutive_skips": lambda v: INT(v) and v >= 1,
    "eval.every": lambda v: INT(v) and v >= 0,
    "eval.num_examples": lambda v: INT(v) and v >= 1,
    "eval.k": lambda v: INT(v) and v >= 0,
    "eval.temperature": lambda v: FINITE(v) and v >= 0,
    "checkpoint.every": lambda v: INT(v) and v >= 1,
    "checkpoint.keep": lambda v: INT(v) and v >= 1,
    "sft.steps": lambda v: INT(v) and v >= 0,
    "sft.lr": lambda v: FINITE(v) and v > 0,
    "sft.noise_frac": lambda v: FINITE(v) and 0 <= v <= 1,
}
VALUES = st.one_of(
    st.sampled_from([0, 1, 2, -1, -7, 10**12, 0.0, 0.5, 1.0, -0.5, 1e-12, 1e300, math.inf, -math.inf,
                     math.nan, True, None, "3", "abc", (1,)]),
    st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True))


CONFIGS_TRIED = []  # one bool per drawn config: invalid?


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
@hypothesis.given(key=st.sampled_from(sorted(FIELDS)), value=VALUES)
def test_every_invalid_numeric_value_is_a_config_error_naming_the_key(key, value):
  c = _with(key, value)
  value = config_lib._get(c, key)  # as stored: ml-collections turns True into 1.0 in a float field
  CONFIGS_TRIED.append(not FIELDS[key](value))
  if FIELDS[key](value):
    config_lib.validate(c, 8)  # an allowed value of one field alone never fails the default config
  else:
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(c, 8)
    assert str(e.value).startswith(f"config.{key}: ") and "allowed" in str(e.value), str(e.value)


def test_config_counts(soak_record):
  """Runs after the property test: how many invalid configs it drew (for docs/reliability.md)."""
  invalid = sum(CONFIGS_TRIED)
  assert invalid > 100
  soak_record("configs", tried=len(CONFIGS_TRIED) + len(HOLES), invalid=invalid + len(HOLES), uncontrolled=0)
