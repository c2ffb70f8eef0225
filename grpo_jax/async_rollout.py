"""One-step-off-policy rollouts: the next step's rollout runs while the current update runs.

With `rollout.off_policy_steps = 1` the loop, before the update of step t, hands the rollout of step t + 1
to a worker thread with a copy of the pre-update parameters θ_t; the update (device) and the rollout's
sampling, decoding and host reward functions then overlap. Step t + 1 trains on samples of θ_t while its
parameters are θ_{t+1}: a staleness of exactly one update, never more (one rollout in flight at most). The
PPO ratio against the sampler's log-probs, or `grpo.old_logp="rescore"` with `grpo.rollout_is` (TIS / MIS,
`grpo_jax.correction`), accounts for it.

Determinism and resume: the rollout of step t + 1 uses the same key (`fold_in(rollout_key, t + 1)`) and the
same prompts as in the synchronous loop. No rollout is prefetched across a checkpoint: after a step that
saves, the next rollout is drawn with the saved parameters, exactly what a resume from that checkpoint
does, so a killed and resumed run repeats the uninterrupted one. (A SIGTERM stop drops the rollout in
flight and saves the data position from before it.) The cost: one extra copy of the parameters while a
rollout is in flight.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import jax
import jax.numpy as jnp


class OneStepOff:
  """At most one rollout in flight, on one worker thread.

  `start(fn, params, data_state)` copies `params` (the update donates the originals) and runs
  `fn(params_copy)` in the background; `take()` returns its rollout (waiting for it) or None when none is in
  flight; `data_state` is the data iterator's position from before the prefetched prompts were drawn (what
  a checkpoint must record while the rollout is in flight); `drop()` waits for and discards it."""

  def __init__(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
    self._future: concurrent.futures.Future | None = None
    self.data_state: Any = None

  @property
  def in_flight(self) -> bool:
    return self._future is not None

  def start(self, fn: Callable[[Any], Any], params, data_state) -> None:
    if self._future is not None:
      raise RuntimeError("a rollout is already in flight (the staleness bound is one step)")
    snapshot = jax.tree.map(jnp.copy, params)
    self.data_state = data_state
    self._future = self._pool.submit(fn, snapshot)

  def take(self):
    if self._future is None:
      return None
    future, self._future, self.data_state = self._future, None, None
    return future.result()  # re-raises the rollout's error (e.g. a reward function failing) here

  def drop(self) -> None:
    if self._future is not None:
      concurrent.futures.wait([self._future])
      self._future, self.data_state = None, None

  def close(self) -> None:
    self.drop()
    self._pool.shutdown(wait=True)
