"""Tasks: datasets as lists of example dicts, plus prompt formatting.

An example has at least ``prompt`` (the user's question text) and ``answer`` (str); other keys (``nums``,
``target``, ``solution``, ...) are columns handed to the reward functions. `get_task` builds a named task's
(train, eval) examples; `format_prompt` turns an example's prompt into model input text.
"""
from __future__ import annotations

import numpy as np

from grpo_jax.tasks.arithmetic import make_arithmetic, make_arithmetic_split
from grpo_jax.tasks.calculator import make_calculator_split
from grpo_jax.tasks.countdown import make_countdown, make_countdown_split
from grpo_jax.tasks.data import PromptIterator
from grpo_jax.tasks.local import load_local_file
from grpo_jax.tasks.math_files import LoadReport, load_gsm8k, load_math, load_math_file

__all__ = ["get_task", "format_prompt", "PromptIterator", "make_arithmetic", "make_arithmetic_split",
      "make_countdown", "make_countdown_split", "load_math_file", "load_gsm8k", "load_math", "LoadReport",
      "load_local_file", "make_calculator_split"]

TASKS = ("arithmetic", "countdown", "gsm8k", "math", "local", "calculator")


def _file_task(load, *, train_path: str, eval_path: str | None = None, num_eval: int = 0,
        seed: int = 0) -> tuple[list[dict], list[dict]]:
  """Train from ``train_path``; eval from ``eval_path``, else ``num_eval`` held-out train rows (by seed).
  ``load(path) -> (examples, report)`` reads one file."""
  train, _ = load(train_path)
  if eval_path is not None:
    return train, load(eval_path)[0]
  if num_eval <= 0:
    return train, []
  if num_eval >= len(train):
    raise ValueError(f"num_eval={num_eval} leaves no training rows out of {len(train)}")
  order = np.random.default_rng(seed).permutation(len(train))
  held_out = [train[i] for i in order[:num_eval]]
  held_prompts = {e["prompt"] for e in held_out}  # a question duplicated in the file goes to eval only
  return [train[i] for i in order[num_eval:] if train[i]["prompt"] not in held_prompts], held_out


def get_task(name: str, **kwargs) -> tuple[list[dict], list[dict]]:
  """(train_examples, eval_examples) for a named task.

  - ``"arithmetic"``: ``num_train=10000, num_eval=256, seed=0`` and the knobs of `make_arithmetic`
   (num_digits, num_operands, ops, template); eval questions never occur in train.
  - ``"countdown"``: ``num_train=4096, num_eval=256, seed=0`` and the knobs of `make_countdown`.
  - ``"calculator"``: ``num_train=10000, num_eval=256, seed=0``, ``num_digits``, ``tool_frac``: products
   to compute with a calculator tool (`tasks.calculator`; a multi-turn task: ``env.name="calculator"``).
  - ``"gsm8k"`` / ``"math"``: ``train_path`` (required), ``eval_path=None``, ``num_eval=0``, ``seed=0``:
   local JSON-lines/Parquet files (see `load_math_file`); without ``eval_path``, ``num_eval`` rows of the
   train file are held out.
  - ``"local"``: your own file, with the same ``train_path`` / ``eval_path`` / ``num_eval`` / ``seed`` and
   ``prompt_field="prompt"``, ``answer_field="answer"``, ``columns=None`` (every other field; or a
   comma-separated string / list of fields) for the reward functions (see `load_local_file`).
  """
  if name in ("arithmetic", "countdown"):
    num_train = kwargs.pop("num_train", 10000 if name == "arithmetic" else 4096)
    num_eval = kwargs.pop("num_eval", 256)
    split = make_arithmetic_split if name == "arithmetic" else make_countdown_split
    return split(num_train, num_eval, seed=kwargs.pop("seed", 0), **kwargs)
  if name == "calculator":
    return make_calculator_split(kwargs.pop("num_train", 10000), kwargs.pop("num_eval", 256),
                                 seed=kwargs.pop("seed", 0), **kwargs)
  if name in ("gsm8k", "math", "local"):
    if "train_path" not in kwargs:
      raise ValueError(f"task {name!r} needs train_path=<local .jsonl/.parquet file>")
    if name == "local":
      fields = {k: kwargs.pop(k) for k in ("prompt_field", "answer_field", "columns") if k in kwargs}
      return _file_task(lambda path: load_local_file(path, **fields), **kwargs)
    return _file_task(lambda path: load_math_file(path, name), **kwargs)
  raise KeyError(f"unknown task {name!r}; known: {list(TASKS)}")


def format_prompt(example_prompt: str, tokenizer, *, system_prompt: str | None = None,
         template: str | None = None, use_chat_template: bool = True) -> str:
  """Model input text for one example prompt.

  ``template`` (with a ``{question}`` field) first wraps the question. With ``use_chat_template`` the result
  becomes the user message (after an optional system message) of ``tokenizer.apply_chat_template(...,
  add_generation_prompt=True)``; otherwise the text is used as is, preceded by ``system_prompt + "\\n"``.
  """
  content = template.format(question=example_prompt) if template is not None else example_prompt
  if not use_chat_template:
    return f"{system_prompt}\n{content}" if system_prompt else content
  messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
    {"role": "user", "content": content}]
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
