"""Reward functions (host Python, TRL-style) and the fault-tolerant `RewardRunner`.

A reward function is a plain callable

  f(prompts: list[str], completions: list[str], **columns) -> list[float | None]

where each column (e.g. ``answer=[...]``, ``nums=[...]``) is a list aligned with ``completions``. ``None`` means
"not applicable": the sample is left out of that function's mean and contributes 0 to the weighted total.
Functions should accept ``**kwargs`` so that unrelated dataset columns can be passed to all of them.

Built in (see `get_reward_fn` for the names configs use): `math_correctness`, `format_reward`,
`soft_overlong_penalty` (a factory), `countdown_reward`, `exact_match`. Your own: `register_reward(name, fn)`
(or as a decorator), or name it in the config as ``"module:function"`` / ``"path/to/file.py:function"``. Answer extraction and
the hang-proof math comparison live in `grpo_jax.math_grading`.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import logging
import math
import operator
import os
import re
import sys
import types
import zlib
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

from grpo_jax import reward_threads
from grpo_jax.math_grading import extract_answer, math_equal  # extract_answer is re-exported (evaluation)

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float | None]]


def math_correctness(prompts, completions, answer, *, symbolic_timeout_s: float = 1.0, **_) -> list[float | None]:
  """1.0 if the completion's final answer (see `extract_answer`) equals the gold ``answer`` column, else 0.0;
  None where the gold answer is empty. The gold may itself be raw (``... #### 72`` or ``\\boxed{}``)."""
  out = []
  for completion, gold in zip(completions, answer, strict=True):
    gold = "" if gold is None else extract_answer(str(gold), last_number=False) or str(gold).strip()
    out.append(float(math_equal(gold, extract_answer(completion), timeout_s=symbolic_timeout_s))
          if gold else None)
  return out


# The lookahead does not change the language matched by the DeepSeek-R1 format regex; it makes a hostile
# "</think><answer>" x 4000 completion fail in linear instead of quadratic time (seconds at 100k chars).
DEFAULT_FORMAT_PATTERN = r"^(?=.*</answer>$)<think>.*?</think>\s*<answer>.*?</answer>$"


def format_reward(prompts, completions, *, pattern: str = DEFAULT_FORMAT_PATTERN, **_) -> list[float]:
  """1.0 if the completion matches ``pattern`` (``re.match``, DOTALL), else 0.0. The default requires
  ``<think>...</think>`` followed by ``<answer>...</answer>`` and nothing else."""
  regex = re.compile(pattern, re.DOTALL)
  return [float(regex.match(c) is not None) for c in completions]


def soft_overlong_penalty(max_len: int, cache_len: int) -> RewardFn:
  """DAPO soft overlong punishment (Yu et al. 2025, Eq. 13), with lengths |y| in TOKENS:
  0 if |y| <= max_len - cache_len; ((max_len - cache_len) - |y|) / cache_len up to max_len; -1 beyond.

  The returned function reads the ``completion_lengths`` column (ints), or else counts the
  ``completion_ids`` column (token id lists); it raises if neither is given (character counts would be wrong).
  """
  if not 0 < cache_len <= max_len:
    raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")

  def overlong_penalty(prompts, completions, *, completion_lengths=None, completion_ids=None, **_):
    if completion_lengths is None:
      if completion_ids is None:
        raise ValueError("soft_overlong_penalty needs a completion_lengths or completion_ids column")
      completion_lengths = [len(ids) for ids in completion_ids]
    start = max_len - cache_len
    return [0.0 if n <= start else (start - n) / cache_len if n <= max_len else -1.0
        for n in (int(n) for n in completion_lengths)]
  return overlong_penalty


_COUNTDOWN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def safe_arithmetic(expr: str) -> tuple[Fraction, list[int]]:
  """Exact value of ``expr`` and the integer literals it uses, allowing only integers, + - * /, parentheses
  and unary minus (parsed with `ast`, never eval'd). Raises ValueError on anything else (calls, names, **),
  ZeroDivisionError on division by zero."""
  if len(expr) > 200:  # deep nesting would hit the parser's recursion limit; real equations are short
    raise ValueError("equation too long")
  try:
    tree = ast.parse(expr.strip(), mode="eval")
  except (SyntaxError, RecursionError, MemoryError) as e:
    raise ValueError(f"not an arithmetic expression: {e}") from None
  used: list[int] = []

  def ev(node) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
      used.append(node.value)
      return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _COUNTDOWN_OPS:
      return _COUNTDOWN_OPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
    raise ValueError(f"disallowed syntax: {type(node).__name__}")
  return ev(tree.body), used


def countdown_reward(prompts, completions, nums, target, *, format_score: float = 0.0, **_) -> list[float]:
  """TinyZero Countdown score: 1.0 if the last ``<answer>`` equation uses each of ``nums`` exactly once and
  evaluates (exactly, see `safe_arithmetic`) to ``target``; ``format_score`` (TinyZero uses 0.1) if an
  equation is present but wrong; 0.0 with no equation, disallowed syntax or division by zero."""
  out = []
  for completion, numbers, goal in zip(completions, nums, target, strict=True):
    end = completion.rfind("</answer>")
    begin = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    if begin < 0:
      out.append(0.0)
      continue
    try:
      value, used = safe_arithmetic(completion[begin + len("<answer>"):end])
    except (ValueError, ZeroDivisionError):
      out.append(0.0)
      continue
    ok = sorted(used) == sorted(int(n) for n in numbers) and value == Fraction(goal)
    out.append(1.0 if ok else format_score)
  return out


def exact_match(prompts, completions, answer, **_) -> list[float]:
  """1.0 if the stripped completion equals the stripped answer (the char-level arithmetic task)."""
  return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def env_reward(prompts, completions, env_reward, **_) -> list[float]:
  """The episode reward of a multi-turn environment: the ``env_reward`` column (`grpo_jax.multiturn`)."""
  return [float(r) for r in env_reward]


def reward_model(path: str = "", **options) -> RewardFn:
  """Scores from a local Hugging Face sequence-classification reward model, on device (a factory: the
  options are those of `grpo_jax.reward_model.reward_model_reward`, e.g. ``path``, ``batch_size``)."""
  from grpo_jax import reward_model as reward_model_lib  # local: JAX and the checkpoint only when used
  return reward_model_lib.reward_model_reward(path, **options)


_REWARDS = {"math_correctness": math_correctness, "format": format_reward, "countdown": countdown_reward,
      "exact_match": exact_match, "env_reward": env_reward}
_FACTORIES = {"soft_overlong_penalty": soft_overlong_penalty, "reward_model": reward_model}
_FILE_MODULES: dict[str, types.ModuleType] = {}  # reward files imported by path, by absolute path


def _same_definition(a, b) -> bool:
  """True for one function defined twice (its module imported once by name and once by path)."""
  code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
  return a is b or (code_a is not None and code_b is not None and a.__qualname__ == b.__qualname__
                    and code_a.co_filename == code_b.co_filename)


def register_reward(name, fn: Callable | None = None, *, factory: bool = False, overwrite: bool = False):
  """Makes ``fn`` available to configs as ``rewards.names = (name, ...)``; returns ``fn``.

  Three spellings: ``register_reward("name", fn)``, the decorator ``@register_reward("name")``, and the
  bare decorator ``@register_reward`` (the function's own ``__name__``). ``fn`` is a reward function
  ``f(prompts, completions, **columns) -> list[float | None]`` whose options are keyword-only
  parameters; with ``factory=True`` it is instead called with the options and returns one (as
  ``soft_overlong_penalty``). A name taken by another function is an error unless ``overwrite``.
  """
  if callable(name) and fn is None:  # bare @register_reward
    return register_reward(name.__name__, name, factory=factory, overwrite=overwrite)
  if not isinstance(name, str) or not name or ":" in name or "." in name:
    raise ValueError(f"reward name {name!r} must be a non-empty string without ':' or '.' (those mark "
                     "'module:function' names)")

  def add(f):
    if not callable(f):
      raise TypeError(f"register_reward({name!r}, ...) needs a callable, got {type(f).__name__}")
    old = _REWARDS.get(name, _FACTORIES.get(name))
    if old is not None and not overwrite and not _same_definition(old, f):
      raise ValueError(f"reward {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                       "choose another name or pass overwrite=True")
    _REWARDS.pop(name, None)
    _FACTORIES.pop(name, None)
    (_FACTORIES if factory else _REWARDS)[name] = f
    return f
  return add if fn is None else add(fn)


def _import_file(path: str) -> types.ModuleType:
  if path not in _FILE_MODULES:
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_name = f"_grpo_jax_rewards_{stem}_{zlib.crc32(path.encode()):08x}"  # shadows no module
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
    _FILE_MODULES[path] = module
  return _FILE_MODULES[path]


def _import_reward(spec: str) -> Callable:
  """The function named by ``"package.module:function"`` or ``"path/to/file.py:function"``."""
  target, _, attr = spec.rpartition(":")
  if not target or not attr:
    raise ValueError(f"{spec!r}: expected 'module:function' or 'path/to/file.py:function'")
  path = None
  if target.endswith(".py") or "/" in target or os.sep in target:
    path = os.path.abspath(os.path.expanduser(target))
    if not os.path.isfile(path):
      raise ValueError(f"no file {path} (a relative path starts at the working directory)")
  try:
    module = _import_file(path) if path else importlib.import_module(target)
  except ModuleNotFoundError as e:
    if e.name is None or not (target == e.name or target.startswith(e.name + ".")):
      raise ValueError(f"importing {target!r} failed: {type(e).__name__}: {e}") from e  # its own import
    raise ValueError(f"cannot import {target!r} ({e}); put its directory on PYTHONPATH "
                     f"or name the file: 'path/to/{target.replace('.', '/')}.py:{attr}'") from e
  except Exception as e:  # noqa: BLE001 - a user module failing to import: say which and why, in one line
    raise ValueError(f"importing {target!r} failed: {type(e).__name__}: {e}") from e
  fn = getattr(module, attr, None)
  if fn is None:
    defined = sorted(k for k, v in vars(module).items()
                     if inspect.isfunction(v) and v.__module__ == module.__name__ and not k.startswith("_"))
    raise ValueError(f"{target!r} has no {attr!r}; it defines {defined}")
  if not callable(fn):
    raise TypeError(f"{target}:{attr} is a {type(fn).__name__}, not a function")
  return fn


def reward_names() -> list[str]:
  """The registered names (built-in and `register_reward`ed)."""
  return sorted({**_REWARDS, **_FACTORIES})


def get_reward_fn(name: str, **kwargs) -> RewardFn:
  """The reward function a config names, configured by ``kwargs`` (its keyword-only options, e.g.
  ``format_score`` for "countdown"; ``max_len`` and ``cache_len`` for "soft_overlong_penalty").

  ``name`` is a registered name (built in, or added with `register_reward`), or a function to import:
  ``"package.module:function"`` (importable from ``sys.path``) or ``"path/to/file.py:function"``
  (imported from that file once per process). Unknown options raise TypeError rather than being
  swallowed by ``**_``. The result's ``__name__`` is the registered name or the function's name.
  """
  if name in _FACTORIES:
    fn = _FACTORIES[name](**kwargs)
  else:
    if name in _REWARDS:
      base = _REWARDS[name]
    elif ":" in name:
      base = _import_reward(name)
    else:
      raise KeyError(f"unknown reward {name!r}; known: {reward_names()}, or a function to import as "
                     "'module:function' or 'path/to/file.py:function'")
    try:
      params = inspect.signature(base).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: no options to check
      params = []
    options = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    if unknown := set(kwargs) - options:
      raise TypeError(f"reward {name!r} has no option {sorted(unknown)}; its options (keyword-only "
                      f"parameters): {sorted(options)}")
    fn = functools.partial(base, **kwargs)

  @functools.wraps(fn, assigned=())
  def named(*args, **kw):
    return fn(*args, **kw)
  named.__name__ = named.__qualname__ = name.rpartition(":")[2]
  return named


# ---------------------------------------------------------------------------------------------- the runner
@dataclasses.dataclass
class RewardResult:
  """Rewards for N completions. ``total`` [N] float32 is the weighted sum (0 where ``valid`` is False);
  ``per_fn[name]`` [N] has NaN for None/failed samples; ``failures[name]`` counts failed samples."""

  total: np.ndarray
  per_fn: dict[str, np.ndarray]
  valid: np.ndarray
  failures: dict[str, int]

  def metrics(self) -> dict[str, float]:
    """Flat metrics; a mean/std over no applicable samples is NaN."""
    def stats(x):
      x = x[np.isfinite(x)]
      return (float(x.mean()), float(x.std())) if x.size else (math.nan, math.nan)
    out = {}
    for name, values in self.per_fn.items():
      out[f"reward/{name}/mean"], out[f"reward/{name}/std"] = stats(values)
      out[f"reward/{name}/failures"] = float(self.failures[name])
    out["reward/total/mean"], out["reward/total/std"] = stats(self.total[self.valid])
    return out


def _fn_name(fn) -> str:
  while isinstance(fn, functools.partial):
    fn = fn.func
  return getattr(fn, "__name__", type(fn).__name__)


class RewardRunner:
  """Calls reward functions one after another, each on its own reused worker thread with a ``timeout_s``
  wall-clock limit (see `grpo_jax.reward_threads`: cancellation, at most 2 hung threads per function,
  SystemExit/KeyboardInterrupt contained, printing capped), and combines them: total = sum_k weight_k * r_k,
  with None counting as 0.

  A function that raises (anything, SystemExit included), times out, or returns something other than a
  list/tuple/1-D array of N values fails all N samples; a NaN/inf or non-numeric value fails that sample.
  A failed sample gets ``fallback`` as that function's reward in the total (``on_error="fallback"``) or is
  marked invalid (``on_error="drop"``: ``valid`` is False and
  ``total`` is 0 there; the trainer must mask it out). Every failure is counted in
  ``RewardResult.failures`` and logged as one warning line.

  A function with a ``prepare`` attribute (e.g. ``reward_model``: load the checkpoint, compile) has it
  called once here, outside the per-call timeout.
  """

  def __init__(self, fns: Sequence[RewardFn], weights: Sequence[float] | None = None, *,
         timeout_s: float = 5.0, on_error: str = "fallback", fallback: float = 0.0,
         names: Sequence[str] | None = None):
    weights = [1.0] * len(fns) if weights is None else list(weights)
    if len(weights) != len(fns) or not fns:
      raise ValueError(f"need one weight per reward function, got {len(fns)} fns, {len(weights)} weights")
    if on_error not in ("fallback", "drop"):
      raise ValueError(f"on_error must be 'fallback' or 'drop', got {on_error!r}")
    names = list(names) if names is not None else [_fn_name(f) for f in fns]
    if len(set(names)) != len(names):
      names = [f"{n}_{i}" for i, n in enumerate(names)]  # same fn twice with different configs
    self.fns, self.weights, self.names = list(fns), weights, names
    self.timeout_s, self.on_error, self.fallback = timeout_s, on_error, fallback
    self._pool = reward_threads.WorkerPool()
    for fn in self.fns:
      if callable(getattr(fn, "prepare", None)):
        fn.prepare()

  @property
  def abandoned(self) -> dict[str, int]:
    """Calls abandoned at the timeout so far, per function name."""
    return self._pool.abandoned

  def _run_one(self, fn, name, n, prompts, completions, columns) -> np.ndarray:
    """[N] float64 with NaN for None and +inf marking failed samples (counted by the caller)."""
    try:
      raw = self._pool.call(name, fn, self.timeout_s, (list(prompts), list(completions)), columns)
      if not isinstance(raw, (list, tuple, np.ndarray)) or np.ndim(raw) != 1:
        raise TypeError(f"returned {type(raw).__name__} (shape {np.shape(raw)}), not a list of {n} rewards")
      if len(raw) != n:
        raise ValueError(f"returned {len(raw)} rewards for {n} completions")
    except Exception as e:  # noqa: BLE001 - a reward bug must not kill the run
      logger.warning("reward %s failed on all %d samples: %s: %s", name, n, type(e).__name__, e)
      return np.full(n, np.inf)
    values = np.full(n, np.nan)
    bad = 0
    for i, r in enumerate(raw):
      try:
        values[i] = np.nan if r is None else float(r)
      except (TypeError, ValueError, OverflowError):
        values[i] = np.inf
      if r is not None and not np.isfinite(values[i]):
        values[i], bad = np.inf, bad + 1
    if bad:
      logger.warning("reward %s returned %d/%d non-finite or non-numeric values", name, bad, n)
    return values

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> RewardResult:
    n = len(completions)
    for key, col in columns.items():
      if len(col) != n:
        raise ValueError(f"column {key!r} has {len(col)} entries for {n} completions")
    total = np.zeros(n, np.float64)
    valid = np.ones(n, bool)
    per_fn, failures = {}, {}
    for fn, w, name in zip(self.fns, self.weights, self.names):
      values = self._run_one(fn, name, n, prompts, completions, columns)
      failed = np.isinf(values)
      failures[name] = int(failed.sum())
      total += w * np.where(failed, self.fallback, np.nan_to_num(values, nan=0.0, posinf=0.0))
      if self.on_error == "drop":
        valid &= ~failed
      per_fn[name] = np.where(failed, np.nan, values)
    total = np.where(valid, total, 0.0).astype(np.float32)
    return RewardResult(total=total, per_fn=per_fn, valid=valid, failures=failures)
