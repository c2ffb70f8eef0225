"""A toy tool-use task: multiplication with a calculator the model may call.

An example is ``{"prompt": "37*48=", "answer": "1776", "question": "37*48", "demo": ...}``. In an episode
(`grpo_jax.multiturn`, `CalculatorEnv`) the model may write a call ``<calc>37*48</calc>`` (its turn ends
there); the environment answers ``<result>1776</result>`` and the model goes on. A turn without a call is
the final answer: reward 1.0 when its stripped text equals the answer, else 0.

``demo`` is the warm start's demonstration (`sft.target_key = "demo"`), from a teacher who uses the
calculator in a ``tool_frac`` fraction of the examples (``<calc>37*48</calc><result>1776</result>1776``;
the result is the calculator's, not the model's: during rollouts the model's turn ends at ``</calc>``) and
otherwise answers from a mental estimate, the product rounded to two significant digits (``1800``). A
tiny model cannot multiply two-digit numbers itself, so the reward can only rise by calling the tool more.
"""
from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

import numpy as np

from grpo_jax.tasks.arithmetic import make_arithmetic_split

CALL = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)
MAX_EXPR_CHARS = 64
MAX_DIGITS = 30  # results (and intermediate values) beyond 10^30 are refused
MAX_EXPONENT = 64
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: None}


class CalcError(ValueError):
  """An expression the calculator refuses; the message is what the model is shown."""


def _bounded(x: Fraction) -> Fraction:
  limit = 10 ** MAX_DIGITS
  if abs(x.numerator) >= limit or x.denominator >= limit:
    raise CalcError("result too large")
  return x


def _power(base: Fraction, exp: Fraction) -> Fraction:
  if exp.denominator != 1:
    raise CalcError("exponent must be an integer")
  e = exp.numerator
  if abs(e) > MAX_EXPONENT:
    raise CalcError("exponent too large")
  if base == 0 and e < 0:
    raise CalcError("division by zero")
  # |base|^|e| < 10^MAX_DIGITS is checked on the log scale before anything big is computed.
  if base not in (0, 1, -1):
    n, d = abs(base.numerator), base.denominator
    if abs(e) * max(len(str(n)) - 1, len(str(d)) - 1, 0) > MAX_DIGITS:
      raise CalcError("result too large")
  return _bounded(base ** e)


def _evaluate(node) -> Fraction:
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return _bounded(Fraction(str(node.value)))
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
    x = _evaluate(node.operand)
    return -x if isinstance(node.op, ast.USub) else x
  if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
    a, b = _evaluate(node.left), _evaluate(node.right)
    if isinstance(node.op, ast.Pow):
      return _power(a, b)
    if isinstance(node.op, ast.Div) and b == 0:
      raise CalcError("division by zero")
    return _bounded(_BINOPS[type(node.op)](a, b))
  raise CalcError("only numbers, + - * / ** and parentheses")


def format_number(x: Fraction) -> str:
  """An integer as is; otherwise a decimal rounded to 6 places without trailing zeros ("0.333333")."""
  if x.denominator == 1:
    return str(x.numerator)
  sign, x = ("-" if x < 0 else ""), abs(x)
  scaled = round(x * 10**6)
  whole, frac = divmod(scaled, 10**6)
  text = f"{whole}.{frac:06d}".rstrip("0").rstrip(".")
  return sign + text if text != "0" else "0"


def calculate(expression: str) -> str:
  """The calculator: the exact value of `expression` (integers, decimals, + - * / **, parentheses, unary
  ±; parsed with `ast`, never evaluated as code) as text, or ``error: <reason>`` for anything it refuses:
  more than 64 characters, other syntax, division by zero, a non-integer or > 64 exponent, a value
  beyond 10^30. Bounded time and memory whatever the input."""
  expression = expression.strip()
  try:
    if not expression:
      raise CalcError("empty expression")
    if len(expression) > MAX_EXPR_CHARS:
      raise CalcError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
      tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
      raise CalcError("not an arithmetic expression") from None
    return format_number(_evaluate(tree.body))
  except CalcError as e:
    return f"error: {e}"
  except (ValueError, OverflowError, ZeroDivisionError, RecursionError):  # e.g. 1e999 is a float inf
    return "error: not a finite number"


class CalculatorEnv:
  """The calculator episode: a turn ending in ``<calc>expr</calc>`` gets ``<result>value</result>`` (or
  ``<result>error: ...</result>``) and the episode goes on; any other turn is the final answer, done, with
  reward ``correct_reward`` if it equals the example's answer (stripped text) else 0. Each call costs
  ``call_cost`` (0 by default: the task is to learn that calling pays)."""

  stop_strings = ("</calc>",)

  def __init__(self, *, correct_reward: float = 1.0, call_cost: float = 0.0):
    self.correct_reward, self.call_cost = float(correct_reward), float(call_cost)
    self.answer, self.calls = "", 0

  def reset(self, example: dict) -> str:
    self.answer, self.calls = str(example["answer"]).strip(), 0
    return example["prompt"]

  def step(self, text: str) -> tuple[str, float, bool]:
    if text.rstrip().endswith("</calc>"):
      calls = CALL.findall(text)
      if calls:
        self.calls += 1
        return f"<result>{calculate(calls[-1])}</result>", 0.0 - self.call_cost, False
    return "", self.correct_reward if text.strip() == self.answer else 0.0, True


def _estimate(value: int) -> str:
  """The teacher's mental estimate: `value` rounded to two significant digits (1776 -> 1800)."""
  digits = len(str(abs(value)))
  step = 10 ** max(digits - 2, 0)
  return str(int(round(value / step)) * step)


def make_calculator_split(num_train: int, num_eval: int, *, seed: int, num_digits: int = 2,
                          tool_frac: float = 0.3) -> tuple[list[dict], list[dict]]:
  """(train, eval) multiplication problems of two `num_digits`-digit numbers (eval questions never occur
  in train), each with the warm-start ``demo`` column (see the module docstring)."""
  if not 0.0 <= tool_frac <= 1.0:
    raise ValueError(f"tool_frac must be in [0, 1], got {tool_frac}")
  train, evals = make_arithmetic_split(num_train, num_eval, seed=seed, num_digits=num_digits,
                                       num_operands=2, ops="*")
  rng = np.random.default_rng([seed, 2])
  for split in (train, evals):
    uses_tool = rng.random(len(split)) < tool_frac
    for ex, tool in zip(split, uses_tool):
      ex["demo"] = (f"<calc>{ex['question']}</calc><result>{ex['answer']}</result>{ex['answer']}" if tool
                    else _estimate(int(ex["answer"])))
  return train, evals
