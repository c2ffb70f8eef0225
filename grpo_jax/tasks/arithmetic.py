"""Synthetic multi-digit arithmetic, the default task: small enough for a char-level model on a CPU.

An example is ``{"prompt": "12+34=", "answer": "46", "question": "12+34"}``. Difficulty knobs: operand digits,
number of operands, operator subset. Generation is deterministic given the seed.
"""
from __future__ import annotations

import numpy as np

DEFAULT_TEMPLATE = "{question}="


def evaluate_integer_expression(operands: list[int], ops: str) -> int:
  """Value of ``operands[0] ops[0] operands[1] ...`` with * binding tighter than + and -, in exact ints."""
  terms, signs = [operands[0]], []
  for op, x in zip(ops, operands[1:], strict=True):
    if op == "*":
      terms[-1] *= x
    else:
      signs.append(op)
      terms.append(x)
  total = terms[0]
  for sign, term in zip(signs, terms[1:], strict=True):
    total = total + term if sign == "+" else total - term
  return total


def _draw(rng: np.random.Generator, num_digits: int, num_operands: int, ops: str) -> tuple[str, int]:
  low = 0 if num_digits == 1 else 10 ** (num_digits - 1)  # exactly num_digits digits, 0 allowed for 1
  operands = [int(x) for x in rng.integers(low, 10**num_digits, size=num_operands)]
  chosen = "".join(rng.choice(list(ops), size=num_operands - 1))
  question = "".join(f"{x}{op}" for x, op in zip(operands, chosen)) + str(operands[-1])
  return question, evaluate_integer_expression(operands, chosen)


def _check_knobs(num_digits: int, num_operands: int, ops: str) -> None:
  if num_digits < 1 or num_operands < 2:
    raise ValueError(f"need num_digits >= 1 and num_operands >= 2, got {num_digits}, {num_operands}")
  if not ops or set(ops) - set("+-*"):
    raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")


def _example(question: str, value: int, template: str) -> dict:
  return {"prompt": template.format(question=question), "answer": str(value), "question": question}


def make_arithmetic(n: int, *, seed: int, num_digits: int = 2, num_operands: int = 2, ops: str = "+",
          template: str = DEFAULT_TEMPLATE, exclude: set[str] | frozenset[str] = frozenset()
          ) -> list[dict]:
  """``n`` random problems (repeats possible) whose ``question`` is not in ``exclude``.

  Args:
   n: number of examples.
   seed: seeds a numpy Generator; equal arguments give equal lists.
   num_digits: digits per operand (1 also allows 0).
   num_operands: operands per problem (>= 2).
   ops: operators to draw from, a subset of "+-*" (* binds tighter; answers may be negative).
   template: prompt format with a ``{question}`` field, e.g. "What is {question}? ".
   exclude: questions never to produce (used to hold out an eval split).
  """
  _check_knobs(num_digits, num_operands, ops)
  rng = np.random.default_rng(seed)
  out: list[dict] = []
  attempts = 0
  while len(out) < n:
    attempts += 1
    if attempts > 100 * n + 1000:  # only when `exclude` covers (almost) the whole problem space
      raise ValueError(f"cannot draw {n} problems outside the {len(exclude)} excluded ones")
    question, value = _draw(rng, num_digits, num_operands, ops)
    if question not in exclude:
      out.append(_example(question, value, template))
  return out


def make_arithmetic_split(num_train: int, num_eval: int, *, seed: int, **knobs) -> tuple[list[dict], list[dict]]:
  """(train, eval) with distinct eval questions that never occur in train. ``knobs`` are those of
  `make_arithmetic` (num_digits, num_operands, ops, template). Raises ValueError if the problem space is
  too small for ``num_eval`` distinct questions plus a train set."""
  _check_knobs(knobs.get("num_digits", 2), knobs.get("num_operands", 2), knobs.get("ops", "+"))
  template = knobs.pop("template", DEFAULT_TEMPLATE)
  rng = np.random.default_rng([seed, 1])  # a different stream from train's, same determinism
  eval_by_question: dict[str, int] = {}
  for _ in range(100 * num_eval + 1000):
    if len(eval_by_question) == num_eval:
      break
    question, value = _draw(rng, knobs.get("num_digits", 2), knobs.get("num_operands", 2),
                knobs.get("ops", "+"))
    eval_by_question.setdefault(question, value)
  if len(eval_by_question) < num_eval:
    raise ValueError(f"the problem space is too small for {num_eval} distinct eval questions")
  eval_examples = [_example(q, v, template) for q, v in eval_by_question.items()]
  train = make_arithmetic(num_train, seed=seed, template=template, exclude=set(eval_by_question), **knobs)
  return train, eval_examples
