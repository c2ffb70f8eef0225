"""Environments for multi-turn and tool-use rollouts: the interface, a registry, the config section.

An environment plays the other side of one episode (one completion) with the policy:

  env = factory()                        # a fresh environment per sequence
  question = env.reset(example)          # the first observation: formatted like a prompt (`PromptFormat`)
  obs, reward, done = env.step(turn)     # after every model turn, with the decoded text of that turn

A model turn ends at EOS, at the first of `env.stop_strings` in its text (e.g. "</calc>": a complete tool
call) or after `rollout.max_new_tokens` tokens. Unless `done`, the observation's tokens are appended to the
context and the model takes the next turn, up to `env.max_turns` turns (`grpo_jax.multiturn`). The
episode's reward is the sum of its step rewards; reward functions see it as the `env_reward` column (the
`env_reward` reward function returns it, so it can be weighted and combined with the rule rewards).

Environments are host Python, like reward functions: `step` gets untrusted model text and must return in
bounded time whatever that text is. An exception in `step` ends the episode with reward 0 and is counted
(`multiturn/env_errors`), it does not stop the run.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Environment(Protocol):
  """One episode's state. `stop_strings`: texts that end a model turn (the turn keeps them)."""

  stop_strings: Sequence[str]

  def reset(self, example: dict) -> str:
    """Starts an episode for a dataset example; returns the first observation (the question text)."""
    ...

  def step(self, text: str) -> tuple[str, float, bool]:
    """Answers one model turn: `(observation text, reward, done)`. The observation is ignored when done."""
    ...


_ENVS: dict[str, Callable[..., Environment]] = {}


def register_env(name: str, factory: Callable[..., Environment], *, overwrite: bool = False):
  """Makes `factory(**env.kwargs) -> Environment` (e.g. a class) available as `env.name = name`."""
  if not isinstance(name, str) or not name or ":" in name:
    raise ValueError(f"environment name {name!r} must be a non-empty string without ':'")
  if name in _ENVS and _ENVS[name] is not factory and not overwrite:
    raise ValueError(f"environment {name!r} is already registered; pass overwrite=True to replace it")
  _ENVS[name] = factory
  return factory


def env_names() -> list[str]:
  _builtin()
  return sorted(_ENVS)


def _builtin():
  if "calculator" not in _ENVS:  # local: tasks/ must not import the training side at import time
    from grpo_jax.tasks.calculator import CalculatorEnv
    _ENVS["calculator"] = CalculatorEnv


def env_factory(name: str, **kwargs) -> Callable[[], Environment]:
  """A zero-argument callable making fresh environments of `name` (registered, or "package.module:attr")
  with options `kwargs`. One environment is built here, so unknown options and a factory that does not
  return an `Environment` fail now, with a message, rather than during the first rollout."""
  _builtin()
  if name in _ENVS:
    make = _ENVS[name]
  elif ":" in name:
    module, _, attr = name.rpartition(":")
    try:
      make = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"cannot import environment {name!r}: {type(e).__name__}: {e}") from e
  else:
    raise KeyError(f"unknown environment {name!r}; known: {env_names()}, or 'package.module:factory'")
  try:
    inspect.signature(make).bind(**kwargs)
  except TypeError as e:
    raise TypeError(f"environment {name!r} does not take the options {sorted(kwargs)}: {e}") from None
  except ValueError:  # no signature to check (a builtin): the call below tells
    pass
  probe = make(**kwargs)
  if not isinstance(probe, Environment):
    raise TypeError(f"environment {name!r}: {make!r} returned a {type(probe).__name__}, which lacks "
                    "reset(example) / step(text) / stop_strings")
  return lambda: make(**kwargs)


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  """What a multi-turn rollout needs: fresh environments and the static token budget.

  A sequence holds at most `max_turns` model turns of `turn_tokens` tokens (`rollout.max_new_tokens`)
  and `max_turns - 1` observations of at most `max_obs_tokens` tokens (longer ones are cut), so the
  completion length is T = max_turns·turn_tokens + (max_turns − 1)·max_obs_tokens and the sampler's
  context bucket is prompt_len + (max_turns − 1)·(turn_tokens + max_obs_tokens): one compile each.
  """

  factory: Callable[[], Environment]
  max_turns: int
  max_obs_tokens: int
  turn_tokens: int

  @property
  def completion_len(self) -> int:
    return self.max_turns * self.turn_tokens + (self.max_turns - 1) * self.max_obs_tokens

  def context_len(self, prompt_len: int) -> int:
    return prompt_len + (self.max_turns - 1) * (self.turn_tokens + self.max_obs_tokens)


def from_config(c) -> EnvSpec | None:
  """The `EnvSpec` of a config's `env` section; None when `env.name` is "" (single-turn rollouts)."""
  if "env" not in c or not c.env.name:
    return None
  import jax  # local: the config side of this module stays light
  if jax.process_count() > 1:
    from grpo_jax.config import ConfigError
    raise ConfigError(f"config.env.name: multi-turn rollouts ({c.env.name!r}) are single-process for now; "
                      "run them on one host or set env.name=''")
  return EnvSpec(factory=env_factory(c.env.name, **dict(c.env.kwargs)), max_turns=int(c.env.max_turns),
                 max_obs_tokens=int(c.env.max_obs_tokens), turn_tokens=int(c.rollout.max_new_tokens))


def validate_config(c, check: Callable[[bool, str, str], None]) -> None:
  """The `env` section (optional: configs without one are single-turn). `check(ok, key, message)` raises
  the config error naming `key`."""
  uses_env_reward = "env_reward" in tuple(c.rewards.names) + (c.rewards.correctness,)
  if "env" not in c or not c.env.name:
    check(not uses_env_reward, "rewards.names",
          "'env_reward' is the reward of a multi-turn environment: set env.name (e.g. 'calculator')")
    return
  e = c.env
  for key in ("max_turns", "max_obs_tokens"):
    v = e[key]
    check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"env.{key}",
          f"{v!r} is not allowed; allowed: an integer >= 1")
  try:
    env_factory(e.name, **dict(e.kwargs))
  except (KeyError, ValueError, TypeError) as err:
    detail = err.args[0] if err.args else err
    check(False, "env.name", f"{e.name!r}: {detail}")
  check(c.eval.k == 0, "eval.k", f"{c.eval.k}: pass@k / maj@k are single-turn; set 0 with env.name "
        f"{e.name!r} (multi-turn evaluation reports greedy accuracy)")
