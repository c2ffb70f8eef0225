"""Toy tasks on which a whole GRPO run is one jitted program (see `grpo_jax.toys.program`).

  T0 "bandit"      multi-prompt tabular softmax bandit, known per-prompt success probabilities
  T1 "seqbandit"   sequence bandit over a few answer tokens plus EOS; the reward ignores the length
  T2 "scratchpad"  modular addition with a checkable scratchpad (exact process reward)
  T3 "scratchpad"  with tail_len=6: the same task under a completion limit that truncates ~20% of rollouts
"""
from __future__ import annotations

from grpo_jax.toys.bandit import Bandit
from grpo_jax.toys.scratchpad import Scratchpad
from grpo_jax.toys.seqbandit import SeqBandit

TOYS = {"bandit": Bandit, "seqbandit": SeqBandit, "scratchpad": Scratchpad}


def make_toy(name: str, **kwargs):
  """The toy `name` with its dataclass fields from `kwargs` (lists become tuples, so toys stay hashable)."""
  if name not in TOYS:
    raise ValueError(f"unknown toy {name!r}; expected one of {sorted(TOYS)}")
  cls = TOYS[name]
  fields = set(cls.__dataclass_fields__)
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"toy {name!r} has no field(s) {sorted(unknown)}; its fields are {sorted(fields)}")
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
