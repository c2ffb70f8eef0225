"""The Countdown task of TinyZero (Pan et al. 2025): combine the given numbers with + - * / into an equation
equal to the target, each number used exactly once.

Targets are made reachable by construction: a random expression tree over the drawn numbers is built first
and its value becomes the target; that expression is stored as ``solution`` (and ``answer``). Examples carry
``nums`` (list[int]) and ``target`` (int) columns for `grpo_jax.rewards.countdown_reward`.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np

# TinyZero's user turn (the instruct-model variant); `format_prompt` adds the chat template around it.
QUESTION = ("Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
      "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
      "tags. And return the final answer in <answer> </answer> tags, for example "
      "<answer> (1 + 2) / 3 </answer>.")
# TinyZero's base-model prompt. The completion starts inside <think>, so pair it with a format regex that
# does not require a leading "<think>", e.g. r"^.*?</think>\s*<answer>.*?</answer>$".
TINYZERO_BASE_TEMPLATE = (
  "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
  "assistant first thinks about the reasoning process in the mind and then provides the user with the "
  "answer.\nUser: {question}\nAssistant: Let me solve this step by step.\n<think>")


def _random_solution(rng: np.random.Generator, nums: list[int], max_target: int) -> tuple[int, str] | None:
  """Combine all ``nums`` pairwise at random into one expression with an integer value in [1, max_target];
  returns (value, expression text), or None if the random tree cannot land in range.
  Subtraction keeps values positive (so no division by zero) and division stays exact."""
  pool = [(Fraction(x), str(x)) for x in nums]
  while len(pool) > 1:
    i, j = (int(k) for k in rng.permutation(len(pool))[:2])
    (a, ea), (b, eb) = pool[i], pool[j]
    results = {"+": a + b, "*": a * b, "-": a - b, "/": a / b}
    ops = [op for op, v in results.items() if v > 0 and v.denominator == 1
        # the last step picks among in-range results: far fewer rejected draws than filtering after
        and (len(pool) > 2 or v <= max_target)]
    if not ops:
      return None
    op = ops[int(rng.integers(len(ops)))]
    pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(results[op], f"({ea} {op} {eb})")]
  value, expr = pool[0]
  return int(value), expr[1:-1] if expr.startswith("(") else expr


def _key(example: dict) -> tuple:
  return tuple(sorted(example["nums"])), example["target"]


def make_countdown(n: int, *, seed: int | Sequence[int], min_numbers: int = 3, max_numbers: int = 4,
          min_value: int = 1, max_value: int = 99, max_target: int = 100,
          exclude: frozenset | set = frozenset()) -> list[dict]:
  """``n`` Countdown problems with ``len(nums)`` uniform in [min_numbers, max_numbers], each number
  uniform in [min_value, max_value] and a target in [1, max_target] reachable by the stored solution.

  Examples: {"prompt", "answer" (= "solution"), "solution", "nums", "target"}. Problems whose
  (sorted nums, target) key is in ``exclude`` are skipped (used for a disjoint eval split).
  """
  if not 2 <= min_numbers <= max_numbers or not 1 <= min_value <= max_value or max_target < 1:
    raise ValueError(f"bad Countdown knobs: numbers [{min_numbers}, {max_numbers}], values "
             f"[{min_value}, {max_value}], max_target {max_target}")
  rng = np.random.default_rng(seed)
  out: list[dict] = []
  attempts = 0
  while len(out) < n:
    # Draw the size first and retry at that size, so that sizes stay uniform although larger sets
    # overshoot max_target more often.
    count = int(rng.integers(min_numbers, max_numbers + 1))
    drawn = None
    while drawn is None:
      attempts += 1
      if attempts > 1000 * n + 10000:  # knobs under which (almost) no target lands in range
        raise ValueError(f"could not draw {n} Countdown problems with targets in [1, {max_target}]")
      nums = [int(x) for x in rng.integers(min_value, max_value + 1, size=count)]
      drawn = _random_solution(rng, nums, max_target)
    target, solution = drawn
    example = {"prompt": QUESTION.format(nums=nums, target=target), "answer": solution,
          "solution": solution, "nums": nums, "target": target}
    if _key(example) not in exclude:
      out.append(example)
  return out


def make_countdown_split(num_train: int, num_eval: int, *, seed: int, **knobs) -> tuple[list[dict], list[dict]]:
  """(train, eval): ``num_eval`` distinct eval problems whose (sorted nums, target) never occur in train."""
  eval_examples, seen = [], set()
  for example in make_countdown(4 * num_eval, seed=(seed, 1), **knobs):  # a stream apart from train's
    if _key(example) not in seen and len(eval_examples) < num_eval:
      seen.add(_key(example))
      eval_examples.append(example)
  if len(eval_examples) < num_eval:
    raise ValueError(f"could not draw {num_eval} distinct Countdown eval problems; widen the knobs")
  return make_countdown(num_train, seed=seed, exclude=frozenset(seen), **knobs), eval_examples
