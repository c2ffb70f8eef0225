"""A deterministic, resumable, endless iterator of prompt batches.

Epoch e visits the examples in the order ``default_rng([seed, e]).permutation(n)`` (or in file order with
``shuffle=False``) and yields ``n // batch_size`` batches: the remainder is dropped (``drop_last``), a
different remainder each epoch when shuffling. Nothing else is ever skipped. The position is a small
JSON-serializable dict, saved with the checkpoint so that a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class PromptIterator:
  """Yields lists of ``batch_size`` examples forever, epoch after epoch.

  Args:
   examples: the dataset (any objects; usually task dicts with "prompt" and "answer").
   batch_size: examples per batch (B prompts; the sampler then draws G completions for each).
   seed: the shuffle seed; each epoch's order depends only on (seed, epoch).
   shuffle: reshuffle every epoch; False keeps the given order.
  """

  def __init__(self, examples: Sequence, batch_size: int, *, seed: int, shuffle: bool = True):
    if not 0 < batch_size <= len(examples):
      raise ValueError(f"batch_size must be in [1, {len(examples)}] (the number of examples), "
               f"got {batch_size}")
    self.examples, self.batch_size, self.shuffle = list(examples), batch_size, shuffle
    self.seed, self.epoch, self.index = int(seed), 0, 0
    self._order_epoch, self._order = None, None

  @property
  def batches_per_epoch(self) -> int:
    return len(self.examples) // self.batch_size

  def _epoch_order(self) -> np.ndarray:
    if self._order_epoch != self.epoch:  # cached: a permutation per batch would cost O(n) each time
      n = len(self.examples)
      self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
              else np.arange(n))
      self._order_epoch = self.epoch
    return self._order

  def __iter__(self) -> PromptIterator:
    return self

  def __next__(self) -> list:
    if self.index + self.batch_size > len(self.examples):  # the dropped remainder: next epoch
      self.epoch, self.index = self.epoch + 1, 0
    idx = self._epoch_order()[self.index:self.index + self.batch_size]
    self.index += self.batch_size
    return [self.examples[i] for i in idx]

  def get_state(self) -> dict:
    """The position: ``{"epoch", "index" (next example offset within the epoch), "seed", "num_examples"}``."""
    return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "num_examples": len(self.examples)}

  def set_state(self, state: dict) -> None:
    """Resume from `get_state`'s dict. The seed is taken from the state; a different number of examples
    is an error, because the saved position would then address other examples."""
    if state.get("num_examples", len(self.examples)) != len(self.examples):
      raise ValueError(f"state was saved for {state['num_examples']} examples, this iterator has "
               f"{len(self.examples)}")
    self.epoch, self.index, self.seed = int(state["epoch"]), int(state["index"]), int(state["seed"])
    self._order_epoch = None
