"""Orbax checkpointing that never loses a run.

A checkpoint holds everything a resumed run needs: the `TrainState` (params, optimizer state, step, rng),
the reference params when they differ from the initial model (iterative GRPO's reference resets), and a
JSON item with the data iterator's position, the last metrics and a fingerprint of the arrays.

Saves are asynchronous. The last `keep` checkpoints are kept plus the best one by an eval metric. On
restore, a checkpoint that fails to load, or whose arrays do not match the fingerprint written beside
them (a truncated or corrupted file), is reported and the previous good one is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

log = logging.getLogger(__name__)


def fingerprint(tree) -> list[float]:
  """Per-leaf float64 sums of |x| and of x*index-weights: cheap, order-sensitive corruption check."""
  out = []
  for leaf in jax.tree.leaves(tree):
    x = np.asarray(jax.device_get(leaf)).astype(np.float64).ravel()
    out.append(float(np.abs(x).sum() + (x * np.linspace(0.5, 1.5, x.size)).sum()) if x.size else 0.0)
  return out


class CheckpointCorrupt(RuntimeError):
  pass


class Checkpointer:
  """Saves and restores `(state, ref_params, meta)` under `directory/<step>/`."""

  def __init__(self, directory: str, *, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "max", async_save: bool = True):
    if keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    policies = [ocp_managers.LatestN(n=keep)]
    if best_metric:
      policies.append(ocp_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, meta: dict, ref_params=None, metrics: dict | None = None):
    """Starts an asynchronous save; `metrics` (floats) feed the best-checkpoint policy."""
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({**meta, "fingerprint": fingerprint(state)})}
    if ref_params is not None:
      items["ref"] = ocp.args.StandardSave(ref_params)
    if self.best_metric and metrics and self.best_metric in metrics:
      metrics = {self.best_metric: float(metrics[self.best_metric])}
    else:
      metrics = None
    self._mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, abstract_state, abstract_ref=None) -> tuple[int, Any, Any, dict] | None:
    """Restores the newest good checkpoint: `(step, state, ref_params, meta)`, or None if none.

    `abstract_state` (and `abstract_ref`) are trees of `jax.ShapeDtypeStruct` with shardings, so
    arrays land directly in their training layout.
    """
    self._mngr.wait_until_finished()
    result = None
    for step in reversed(self.all_steps()):
      try:
        result = (step, *self._restore_step(step, abstract_state, abstract_ref))
        break
      except Exception as e:  # noqa: BLE001 - any failure means "try the previous checkpoint"
        log.error("checkpoint at step %d in %s is unusable (%s: %s); trying the previous one",
                  step, self.directory, type(e).__name__, str(e)[:300])
        self._quarantine(step)
    return result

  def _quarantine(self, step: int):
    """Moves an unusable checkpoint to `corrupt/<step>` (kept for inspection, never deleted), so the
    resumed run can save that step again."""
    if jax.process_index() == 0:
      dest = os.path.join(self.directory, "corrupt", str(step))
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      if os.path.exists(dest):
        dest = f"{dest}.{len(os.listdir(os.path.dirname(dest)))}"
      os.replace(os.path.join(self.directory, str(step)), dest)
      log.error("moved the unusable checkpoint to %s", dest)
    self._mngr.reload()

  def _restore_step(self, step, abstract_state, abstract_ref):
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    has_ref = abstract_ref is not None and os.path.isdir(
        os.path.join(self.directory, str(step), "ref"))
    if has_ref:
      items["ref"] = ocp.args.StandardRestore(abstract_ref)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    meta = dict(restored["meta"])
    expected = meta.pop("fingerprint", None)
    got = fingerprint(restored["state"])
    if expected is None or not np.allclose(expected, got, rtol=1e-6, atol=1e-6):
      raise CheckpointCorrupt(f"array fingerprint mismatch at step {step}")
    return restored["state"], restored["ref"] if has_ref else None, meta

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (a matching tree), for restoring."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
