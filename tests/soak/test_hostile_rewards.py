"""Hostile and broken reward functions, and completions built to hang or escape the graders: all contained
within the timeout, counted as failures, never executed."""
import math
import os
import sys
import threading
import time

import numpy as np
import pytest

from grpo_jax import math_grading
from grpo_jax import rewards as rewards_lib
from grpo_jax.rewards import RewardRunner, countdown_reward, math_correctness


def _good(prompts, completions, **_):
  return [1.0] * len(completions)


def _reward_threads():
  return [t for t in threading.enumerate() if t.name.startswith("reward-") and t.is_alive()]


# --------------------------------------------------------------------------------- broken reward functions
def _sys_exit(prompts, completions, **_):
  sys.exit(3)


def _keyboard_interrupt(prompts, completions, **_):
  raise KeyboardInterrupt


def _generator_exit(prompts, completions, **_):
  raise GeneratorExit


def test_sys_exit_and_keyboard_interrupt_in_a_reward_fn_are_failures_not_exits():
  runner = RewardRunner([_good, _sys_exit, _keyboard_interrupt, _generator_exit], timeout_s=5.0)
  result = runner([""] * 3, ["a", "b", "c"])
  assert result.failures == {"_good": 0, "_sys_exit": 3, "_keyboard_interrupt": 3, "_generator_exit": 3}
  np.testing.assert_allclose(result.total, [1.0, 1.0, 1.0])


def test_a_hung_reward_fn_leaks_at_most_one_thread_over_many_steps():
  release = threading.Event()

  def hangs(prompts, completions, **_):
    release.wait()  # blocked in C: not even an asynchronous exception reaches it
    return [0.0] * len(completions)
  before = len(_reward_threads())
  runner = RewardRunner([_good, hangs], timeout_s=0.2)
  try:
    start = time.monotonic()
    for _ in range(8):  # eight GRPO steps
      result = runner([""] * 2, ["a", "b"])
      assert result.failures["hangs"] == 2 and list(result.total) == [1.0, 1.0]
    assert time.monotonic() - start < 8 * 0.2 + 3.0  # never waits longer than the timeout per call
    # One worker per function, reused; the hung one was replaced once, then the function is skipped.
    assert len(_reward_threads()) - before <= 3, [t.name for t in _reward_threads()]
    assert runner.abandoned["hangs"] >= 1
  finally:
    release.set()
  time.sleep(0.3)
  result = runner([""] * 2, ["a", "b"])  # the hung call returned: the function is used again
  assert result.failures["hangs"] == 0


def test_a_runaway_python_loop_is_cancelled_at_the_timeout():
  def spins(prompts, completions, **_):
    while True:
      pass
  runner = RewardRunner([spins], timeout_s=0.3)
  assert runner([""], ["a"]).failures["spins"] == 1
  deadline = time.monotonic() + 5.0
  while any("spins" in t.name for t in _reward_threads()) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not any("spins" in t.name for t in _reward_threads())  # the thread ended: nothing leaked


BAD_RETURNS = {
    "none": lambda p, c, **_: None, "short": lambda p, c, **_: [1.0],
    "long": lambda p, c, **_: [1.0] * (len(c) + 1), "dict": lambda p, c, **_: {"a": 1.0},
    "str": lambda p, c, **_: "1" * len(c), "int": lambda p, c, **_: 1,
    "generator": lambda p, c, **_: (1.0 for _ in c), "strings": lambda p, c, **_: ["x"] * len(c),
    "nan": lambda p, c, **_: [math.nan] * len(c), "inf": lambda p, c, **_: [math.inf] * len(c),
    "-inf": lambda p, c, **_: [-math.inf] * len(c), "huge_int": lambda p, c, **_: [10**400] * len(c),
    "complex": lambda p, c, **_: [1j] * len(c), "nested": lambda p, c, **_: [[1.0]] * len(c),
    "array_2d": lambda p, c, **_: np.ones((len(c), 2)),
    "object": lambda p, c, **_: [object()] * len(c),
}


@pytest.mark.parametrize("kind", sorted(BAD_RETURNS))
def test_wrong_length_type_or_nonfinite_values_fail_every_sample(kind, soak_record):
  fn = BAD_RETURNS[kind]
  fn.__name__ = kind
  result = RewardRunner([_good, fn], [1.0, 1.0], fallback=-1.0)([""] * 3, ["a", "b", "c"])
  assert result.failures[kind] == 3 and list(result.total) == [0.0, 0.0, 0.0]
  assert np.isfinite(result.total).all()
  soak_record("hostile", input=f"reward returns {kind}", seconds=0.0, contained=True)


def test_a_reward_fn_printing_megabytes_is_capped(capfd, soak_record):
  def chatty(prompts, completions, **_):
    for _ in range(100):
      print("x" * 50_000)
    sys.stderr.write("y" * 5_000_000)
    return [1.0] * len(completions)
  start = time.monotonic()
  result = RewardRunner([chatty], timeout_s=10.0)([""] * 2, ["a", "b"])
  seconds = time.monotonic() - start
  out, err = capfd.readouterr()
  assert result.failures["chatty"] == 0 and list(result.total) == [1.0, 1.0]
  assert len(out) + len(err) < 100_000 and "reward chatty: output truncated" in out + err
  soak_record("hostile", input="reward prints 10 MB", seconds=seconds, contained=True)


# ------------------------------------------------------------------------------------ the symbolic worker
SYMBOLIC_GOLD, SYMBOLIC_PRED = r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}"  # needs the worker


def test_a_hostile_batch_does_not_starve_the_symbolic_worker(monkeypatch):
  """After a batch of answers that each hang sympy, the next legitimate batches are graded. The
  expensive-input filter is disabled to stand for a hostile input it does not know."""
  monkeypatch.setattr(math_grading, "_EXPENSIVE_RE", math_grading.re.compile(r"(?!x)x"))
  runner = RewardRunner([math_correctness], timeout_s=4.0)
  assert runner([""], [SYMBOLIC_PRED], answer=[SYMBOLIC_GOLD]).failures["math_correctness"] == 0  # warm
  hostile = [r"\boxed{(99!)!}"] * 16
  runner([""] * 16, hostile, answer=["3"] * 16)
  for _ in range(3):
    start = time.monotonic()
    result = runner([""] * 4, [SYMBOLIC_PRED] * 4, answer=[SYMBOLIC_GOLD] * 4)
    assert list(result.total) == [1.0] * 4, (result.total, time.monotonic() - start)


@pytest.mark.parametrize("pred", [r"(99!)!", "5!!", r"(10^{10})!", r"9^{9^{9}}", "9^9^9", r"2^{10000}",
                                  "1000!", r"((3!)!)!"])
def test_exponent_and_factorial_bombs_never_reach_the_symbolic_worker(pred, monkeypatch):
  def worker_called(*_):
    raise AssertionError(f"{pred!r} was sent to the symbolic worker")
  monkeypatch.setattr(math_grading._WORKER, "equal", worker_called)
  assert math_grading.math_equal("3", pred) is False


def test_a_grader_cancelled_mid_request_does_not_desync_the_worker(monkeypatch):
  """The runner's Cancelled lands while the grader waits for the worker's reply: the next comparison must
  get its own answer, not the stale reply to the cancelled request."""
  from grpo_jax.reward_threads import Cancelled
  worker = math_grading._SymbolicWorker()
  try:
    assert worker.equal("1", "1", timeout_s=60.0) is True  # started (startup is not part of the test)
    readline = worker._readline

    def cancelled_once(timeout_s):
      monkeypatch.setattr(worker, "_readline", readline)
      raise Cancelled
    monkeypatch.setattr(worker, "_readline", cancelled_once)
    with pytest.raises(Cancelled):
      worker.equal(r"\frac{2}{4}", "0.5", timeout_s=30.0)  # its reply (true) is never read
    assert worker.equal("3", r"\pi", timeout_s=60.0) is False
  finally:
    worker._kill()


HOSTILE_MATH = {
    "nested factorial": r"\boxed{(99!)!}",
    "tower 9^9^9^9": r"\boxed{9^{9^{9^{9}}}}",
    "tower with parens": r"\boxed{((9^9)^9)^{9^9}}",
    "huge exponent": r"\boxed{2^{100000000}}",
    "huge power **": r"\boxed{10**10**10}",
    "factorial of a tower": r"\boxed{(10^{10})!}",
    "deep braces 100k": "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "unclosed braces 50k": "\\boxed{" * 50_000,
    "deep parens": r"\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "1 MB digits": "9" * 1_000_000,
    "1 MB boxed": r"\boxed{" + "x+" * 500_000 + "1}",
    "1 MB of answer tags": "<answer>" * 125_000,
    "many fracs": r"\boxed{" + r"\frac{1}{" * 2000 + "2" + "}" * 2000 + "}",
    "gsm8k hashes 1 MB": "#### " + "1" * 1_000_000,
    "sqrt tower": r"\boxed{\sqrt{" * 3000 + "2" + "}" * 3000 + "}",
    "python code": r"\boxed{__import__('os').system('touch /tmp/grpo_soak_pwned')}",
    "latex macro bomb": r"\boxed{\def\a{\a\a}\a}",
    "unicode junk": "\\boxed{" + "\u202e\u0000\udcff" * 10_000 + "}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_MATH))
def test_hostile_math_completions_are_contained(name, soak_record):
  timeout = 2.0
  runner = RewardRunner([math_correctness], timeout_s=timeout)
  start = time.monotonic()
  result = runner([""], [HOSTILE_MATH[name]], answer=["3"])
  seconds = time.monotonic() - start
  assert list(result.total) == [0.0] and seconds < timeout + 1.0, seconds
  assert not os.path.exists("/tmp/grpo_soak_pwned")
  soak_record("hostile", input=f"math: {name}", seconds=seconds, contained=True)


HOSTILE_COUNTDOWN = {
    "os.system": "__import__('os').system('touch {marker}')",
    "open": "open('{marker}', 'w')",
    "exec": "exec(\"open('{marker}','w')\")",
    "lambda": "(lambda: open('{marker}', 'w'))()",
    "walrus": "(x := open('{marker}', 'w'))",
    "subclasses": "().__class__.__bases__[0].__subclasses__()",
    "fstring": "f\"{{open('{marker}','w')}}\"",
    "power bomb": "9 ** 9 ** 9 ** 9",
    "shift bomb": "1 << 10 ** 10",
    "huge ints": " * ".join(["9" * 60] * 3),
    "deep parens": "(" * 100_000 + "1" + ")" * 100_000,
    "1 MB": "1 + " * 250_000 + "1",
    "division by zero": "10 / (5 - 5) + 3 + 7",
    "comparison chain": "3 < 5 < 7",
    "attribute": "(3).__add__(5)",
    "unicode digits": "\u0663 + \u0665 + \u0667",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_COUNTDOWN))
def test_hostile_countdown_answers_are_never_executed(name, tmp_path, soak_record):
  marker = str(tmp_path / "executed")
  answer = HOSTILE_COUNTDOWN[name].format(marker=marker)
  runner = RewardRunner([countdown_reward], timeout_s=2.0)
  start = time.monotonic()
  result = runner([""], [f"<think>x</think><answer>{answer}</answer>"], nums=[[3, 5, 7]], target=[15])
  seconds = time.monotonic() - start
  assert list(result.total) == [0.0] and seconds < 3.0 and not os.path.exists(marker)
  soak_record("hostile", input=f"countdown: {name}", seconds=seconds, contained=True)


def test_registry_reward_names_and_runner_keep_working_after_hostile_inputs():
  runner = RewardRunner([rewards_lib.get_reward_fn("math_correctness")], timeout_s=5.0)
  result = runner([""] * 2, [r"\boxed{\frac{1}{2}}", "#### 72"], answer=["0.5", "72"])
  assert list(result.total) == [1.0, 1.0]
