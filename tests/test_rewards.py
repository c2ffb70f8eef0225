"""Reward functions, answer grading and the fault-tolerant RewardRunner, against hand-computed cases."""
import json
import logging
import math
import time

import numpy as np
import pytest

from grpo_jax import math_grading
from grpo_jax.math_grading import extract_answer, math_equal, parse_number
from grpo_jax.rewards import (RewardRunner, countdown_reward, exact_match, format_reward, get_reward_fn,
               math_correctness, safe_arithmetic, soft_overlong_penalty)


# ------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("text, expected", [
  (r"so \boxed{\frac{1}{\sqrt{2}}} done", r"\frac{1}{\sqrt{2}}"),
  (r"first \boxed{1} then \boxed{{2}+{3}}", "{2}+{3}"),
  ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
  ("#### 1,234\n", "1,234"), ("#### $72 dollars", "72"), ("#### x = 3", "x = 3"),
  ("<think>7 or 8</think> <answer> 8 </answer>", "8"),
  ("<answer>1</answer> then <answer>x = 2</answer>", "x = 2"),
  ("3 apples plus 4 apples make 7.", "7"),
  ("the total is 1,234.5 dollars", "1,234.5"),
  ("12-5=7, and she owes -3", "-3"),
  ("so 3/4 of them", "3/4"),
  ("no digits here", None),
])
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


def test_extract_answer_without_last_number_fallback():
  assert extract_answer("about 12 things", last_number=False) is None
  assert extract_answer(r"\boxed{5", last_number=False) is None  # unbalanced braces are not an answer


@pytest.mark.parametrize("s, value", [
  ("1,234", 1234), ("-2.5", -2.5), ("3/4", 0.75), (r"\frac{1}{2}", 0.5), (r"-\frac{3}{4}", -0.75),
  (r"\frac34", 0.75), (r"\frac{12}{3}", 4), ("50%", 50), ("1,2,3", None), ("x", None), (r"\frac123", None),
])
def test_parse_number(s, value):
  parsed = parse_number(s)
  assert (parsed is None) if value is None else float(parsed[0]) == value


@pytest.mark.parametrize("gold, pred, equal", [
  ("1234", "1,234", True), ("5", "$5", True), ("5", r"\$5.00", True), ("50", "50%", True),
  ("0.5", "50%", True), ("0.75", "3/4", True), ("0.5", r"\frac{1}{2}", True), (r"\dfrac{1}{2}", "0.5", True),
  ("72", "72.", True), ("1000000", "1000001", False), ("0.5", "0.6", False), (r"\frac{1}{3}", "0.333333333", True),
  (r"\frac{1}{3}", "0.33", False), ("3", None, False),
])
def test_math_equal_numeric(gold, pred, equal):
  assert math_equal(gold, pred) is equal


@pytest.mark.parametrize("gold, pred, equal", [
  (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True), ("(x+1)^2", "x^2+2x+1", True), ("3", r"\pi", False),
])
def test_math_equal_symbolic_in_worker(gold, pred, equal):
  assert math_equal(gold, pred, timeout_s=20.0) is equal  # generous: the first call starts the worker


@pytest.mark.parametrize("gold, pred", [(r"\frac{1}{2}", "0.5"), ("(x+1)^2", "x^2+2x+1"), (r"\sqrt{8}", r"2\sqrt{2}")])
def test_sympy_fallback_without_math_verify(gold, pred):
  assert math_grading._sympy_equal(gold, pred)
  assert not math_grading._sympy_equal(gold, "7")


@pytest.mark.parametrize("hostile", ["__import__('os').system('true')", "(1).real", "x.__class__"])
def test_sympy_fallback_never_evals_code(hostile):
  with pytest.raises(ValueError, match="unsupported"):
    math_grading._sympy_equal(hostile, "1")


def test_math_correctness_against_gold_column():
  completions = [r"... \boxed{\frac{1}{2}}", "so #### 72", "<answer>7</answer>", "I think 41", "x"]
  answers = ["0.5", "Janet has ... #### 72", "8", "41", ""]
  assert math_correctness(None, completions, answers) == [1.0, 1.0, 0.0, 1.0, None]


@pytest.mark.parametrize("hostile", [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{(10^{10^{10}})!}", r"\boxed{2^{100000}}",
                   "9" * 100_000, r"\boxed{" * 50_000, "<answer>" * 20_000, "1 " * 50_000,
                   r"\boxed{" + "x+" * 40_000 + "1}"])
def test_hostile_answers_finish_fast(hostile):
  start = time.monotonic()
  assert math_correctness(None, [hostile], ["3"]) == [0.0]
  assert time.monotonic() - start < 2.0


def test_symbolic_worker_is_killed_at_the_timeout_and_respawned():
  assert math_grading._WORKER.equal("1", "1", timeout_s=30.0) is True  # warm (startup is not timed)
  start = time.monotonic()
  # Past the expensive-input filter on purpose: 9^(387 million) would take sympy far longer than 0.3 s.
  assert math_grading._WORKER.equal("9^{9^{9}}", "3", timeout_s=0.3) is None
  assert time.monotonic() - start < 2.0
  assert math_grading._WORKER.equal(r"\frac{2}{4}", "0.5", timeout_s=30.0) is True


# -------------------------------------------------------------------------------------------- format
@pytest.mark.parametrize("completion, score", [
  ("<think>a</think><answer>1</answer>", 1.0), ("<think>\nlong\n</think>\n <answer>x\ny</answer>", 1.0),
  ("<think>a</think><answer>1</answer>\n", 1.0), ("<think>a</think><answer>1</answer> trailing", 0.0),
  (" <think>a</think><answer>1</answer>", 0.0), ("<think>a</think>", 0.0), ("<answer>1</answer>", 0.0),
  ("<think>a</think>b</think><answer>1</answer>", 1.0),
])
def test_format_reward(completion, score):
  assert format_reward(None, [completion]) == [score]


def test_format_reward_custom_pattern_and_hostile_length():
  pattern = r"^.*?</think>\s*<answer>.*?</answer>$"  # for prompts that end with "<think>"
  assert format_reward(None, ["a</think><answer>1</answer>"], pattern=pattern) == [1.0]
  hostile = "<think>" + "</think><answer></answer>" * 4000 + "x"  # quadratic for the unguarded regex
  start = time.monotonic()
  assert format_reward(None, [hostile]) == [0.0]
  assert time.monotonic() - start < 0.5


# -------------------------------------------------------------------------------------------- overlong
def test_soft_overlong_penalty_dapo_eq13():
  fn = soft_overlong_penalty(max_len=100, cache_len=20)  # penalty starts after 80 tokens
  lengths = [0, 80, 81, 90, 99, 100, 101, 500]
  expected = [0.0, 0.0, -0.05, -0.5, -0.95, -1.0, -1.0, -1.0]
  np.testing.assert_allclose(fn(None, [""] * 8, completion_lengths=lengths), expected)
  np.testing.assert_allclose(fn(None, ["", ""], completion_ids=[[1] * 90, [1] * 10]), [-0.5, 0.0])
  with pytest.raises(ValueError, match="completion_lengths"):
    fn(None, ["abc"])
  with pytest.raises(ValueError):
    soft_overlong_penalty(max_len=10, cache_len=20)


# ------------------------------------------------------------------------------------------- countdown
@pytest.mark.parametrize("equation, score", [
  ("3 * 5 + 7", 1.0), ("7 + 5 * 3", 1.0), ("(3 + 5) * 7", 0.1), ("3 * 5 + 8", 0.1), ("3 * 7", 0.1),
  ("3 * 5 + 7 + 3 - 3", 0.1), ("-3 * -5 + 7", 1.0), ("__import__('os').system('true')", 0.0),
  ("3 ** 5", 0.0), ("3.0 * 5 + 7", 0.0), ("x * 5 + 7", 0.0), ("3 * 5 + 7 = 22", 0.0), ("7 / (5 - 5) + 3", 0.0),
])
def test_countdown_reward(equation, score):
  out = countdown_reward(None, [f"<think>hm</think><answer>{equation}</answer>"], [[3, 5, 7]], [22],
              format_score=0.1)
  assert out == [score]


def test_countdown_reward_exact_division_and_missing_answer():
  assert countdown_reward(None, ["<answer>(8 / 3) * 3 - 6</answer>"], [[8, 3, 3, 6]], [2]) == [1.0]
  assert countdown_reward(None, ["3 * 5 + 7"], [[3, 5, 7]], [22], format_score=0.1) == [0.0]


def test_safe_arithmetic_rejects_code_and_power():
  assert safe_arithmetic("(1 + 2) / 3") == (1, [1, 2, 3])
  for bad in ["__import__('os')", "2 ** 100000000", "(lambda: 1)()", "[1][0]", "1 if 1 else 2", "(" * 300 + "1"]:
    with pytest.raises(ValueError):
      safe_arithmetic(bad)
  with pytest.raises(ZeroDivisionError):
    safe_arithmetic("1 / (2 - 2)")


def test_exact_match_and_registry():
  assert exact_match(None, [" 46", "45", "46\n"], ["46", "46", " 46"]) == [1.0, 0.0, 1.0]
  fn = get_reward_fn("countdown", format_score=0.1)
  assert fn.__name__ == "countdown"
  assert fn(None, ["<answer>1 + 1</answer>"], [[1, 2]], [3]) == [0.1]
  overlong = get_reward_fn("soft_overlong_penalty", max_len=10, cache_len=5)
  assert overlong(None, [""], completion_lengths=[10]) == [-1.0] and overlong.__name__ == "soft_overlong_penalty"
  with pytest.raises(KeyError, match="known"):
    get_reward_fn("nope")
  with pytest.raises(TypeError, match="patern"):
    get_reward_fn("format", patern="x")  # a typo must not be swallowed by **_


# ---------------------------------------------------------------------------------------------- runner
def good(prompts, completions, **_):
  return [1.0] * len(completions)


def half_applicable(prompts, completions, **_):
  return [None if i % 2 else 2.0 for i in range(len(completions))]


def raises(prompts, completions, **_):
  raise RuntimeError("boom")


def wrong_length(prompts, completions, **_):
  return [1.0]


def nan_at_1(prompts, completions, **_):
  return [0.5, math.nan, 0.5, math.inf]


def sleeps(prompts, completions, **_):
  time.sleep(1.0)
  return [1.0] * len(completions)


def test_runner_fallback_counts_and_logs_each_failure(caplog):
  runner = RewardRunner([good, half_applicable, raises, wrong_length, nan_at_1, sleeps],
             [1.0, 0.5, 2.0, 1.0, 2.0, 1.0], timeout_s=0.2, fallback=-1.0)
  start = time.monotonic()
  with caplog.at_level(logging.WARNING, logger="grpo_jax.rewards"):
    result = runner([""] * 4, ["a", "b", "c", "d"], answer=["1"] * 4)
  assert time.monotonic() - start < 0.9  # the sleeping function was abandoned after 0.2 s
  # Per sample: good 1 + half 0.5*(2 or None->0) + raises 2*(-1) + wrong_length 1*(-1) + nan 2*(0.5 or -1) + sleeps -1
  np.testing.assert_allclose(result.total, [1 + 1 - 2 - 1 + 1 - 1, 1 + 0 - 2 - 1 - 2 - 1,
                       1 + 1 - 2 - 1 + 1 - 1, 1 + 0 - 2 - 1 - 2 - 1])
  assert result.total.dtype == np.float32 and result.valid.all()
  assert result.failures == {"good": 0, "half_applicable": 0, "raises": 4, "wrong_length": 4, "nan_at_1": 2,
                "sleeps": 4}
  np.testing.assert_array_equal(result.per_fn["half_applicable"], [2.0, np.nan, 2.0, np.nan])
  np.testing.assert_array_equal(result.per_fn["nan_at_1"], [0.5, np.nan, 0.5, np.nan])
  assert np.isnan(result.per_fn["raises"]).all()
  for name, reason in [("raises", "boom"), ("wrong_length", "returned 1 rewards for 4"), ("nan_at_1", "non-finite"),
             ("sleeps", "TimeoutError")]:
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], (name, lines)
  metrics = result.metrics()
  assert metrics["reward/half_applicable/mean"] == 2.0 and metrics["reward/half_applicable/std"] == 0.0
  assert metrics["reward/nan_at_1/failures"] == 2.0 and math.isnan(metrics["reward/raises/mean"])
  assert metrics["reward/total/mean"] == pytest.approx(-3.0)
  assert metrics["reward/total/std"] == pytest.approx(2.0)
  json.dumps(metrics)  # plain floats


def test_runner_drop_marks_only_failed_samples_invalid():
  result = RewardRunner([good, nan_at_1], [1.0, 1.0], on_error="drop")([""] * 4, list("abcd"))
  np.testing.assert_array_equal(result.valid, [True, False, True, False])
  np.testing.assert_allclose(result.total, [1.5, 0.0, 1.5, 0.0])
  assert result.metrics()["reward/total/mean"] == 1.5 and result.failures["nan_at_1"] == 2
  result = RewardRunner([good, raises], on_error="drop")([""] * 3, list("abc"))
  assert not result.valid.any() and result.failures["raises"] == 3


def test_runner_with_registry_functions_and_validation():
  runner = RewardRunner([get_reward_fn("math_correctness"), get_reward_fn("format")], [1.0, 0.5])
  result = runner(["q", "q"], ["<think>x</think><answer>72</answer>", "73"], answer=["72", "72"])
  np.testing.assert_allclose(result.total, [1.5, 0.0])
  assert set(result.per_fn) == {"math_correctness", "format"}
  with pytest.raises(ValueError, match="column 'answer'"):
    runner(["q"], ["a"], answer=["1", "2"])
  with pytest.raises(ValueError):
    RewardRunner([good], [1.0, 2.0])
  with pytest.raises(ValueError):
    RewardRunner([good], on_error="ignore")
  assert RewardRunner([good, good]).names == ["good_0", "good_1"]


def test_unstartable_worker_degrades_to_numeric_grading(monkeypatch, caplog):
  worker = math_grading._SymbolicWorker()
  monkeypatch.setattr(math_grading.sys, "executable", "/nonexistent/python")
  with caplog.at_level(logging.WARNING, logger="grpo_jax.math_grading"):
    assert worker.equal("x", "x+0", timeout_s=1.0) is None
    assert worker.equal("x", "x+0", timeout_s=1.0) is None
  assert sum("failed to start" in r.getMessage() for r in caplog.records) == 1
