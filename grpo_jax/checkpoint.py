"""Orbax checkpointing that never loses a run.

A checkpoint holds everything a resumed run needs: the `TrainState` (params, optimizer state, step, rng),
the reference params when they differ from the initial model (iterative GRPO's reference resets), and a
JSON item with the data iterator's position, the last metrics and a fingerprint of the arrays.

Saves are asynchronous. The last `keep` checkpoints are kept plus the best one by an eval metric (its value
is written into the checkpoint, so the best one survives resumes). On restore, a checkpoint that fails to
load, or whose arrays or JSON item do not match the fingerprint written beside them (a truncated or
corrupted file, an edited data position), is reported and the previous good one is used; the unusable
newer ones are then moved to `corrupt/`. If none is usable, nothing is moved and `restore` returns None
with `unusable` listing them (the caller decides whether to start over).

A failed asynchronous write (a full disk, an unwritable directory) surfaces as one `CheckpointWriteError`
naming the step, the cause and the last good checkpoint, which is left untouched; a state with a NaN or
Inf is never written (`NonFiniteState`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

log = logging.getLogger(__name__)


def _leaf_bits(x):
  """A leaf's values as uint32 bit patterns, flattened (floats by bit cast, so -0.0, NaN payloads and
  every bit count; typed PRNG keys by their key data)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  bits = jnp.dtype(x.dtype).itemsize * 8
  if bits == 64:
    x = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32)
    bits = 32
  u = jax.lax.bitcast_convert_type(x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bits])
  return u.astype(jnp.uint32).ravel()


@jax.jit
def _fingerprint(tree):
  """Per leaf: (Σ bits, Σ bits · (index + 1)) mod 2^32 and whether every value is finite. Integer sums are
  exact and associative, so the fingerprint does not depend on how the arrays are sharded (a checkpoint
  written on one mesh verifies on another) and is computed on device, shard by shard."""
  out = []
  for leaf in jax.tree.leaves(tree):
    u = _leaf_bits(leaf)
    w = jnp.arange(1, u.size + 1, dtype=jnp.uint32)
    finite = jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.bool_(True)
    out.append((jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * w, dtype=jnp.uint32), finite))
  return out


def fingerprint(tree) -> tuple[list[list[int]], list[bool]]:
  """`([[Σ bits, Σ bits · index] per leaf], [finite per leaf])`: a cheap, order-sensitive, exact and
  sharding-independent corruption check (`_fingerprint`); every process gets the same values."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return [], []
  got = jax.device_get(_fingerprint(tree))
  return [[int(a), int(b)] for a, b, _ in got], [bool(f) for _, _, f in got]


def _legacy_fingerprint(tree) -> list[float]:
  """The float64 fingerprint of checkpoints written before the integer one (single process only)."""
  out = []
  for leaf in jax.tree.leaves(tree):
    x = np.asarray(jax.device_get(leaf)).astype(np.float64).ravel()
    out.append(float(np.abs(x).sum() + (x * np.linspace(0.5, 1.5, x.size)).sum()) if x.size else 0.0)
  return out


def _meta_digest(meta: dict) -> str:
  """SHA-256 of the JSON item (the data position, metrics and the array fingerprint) as written."""
  return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


class CheckpointCorrupt(RuntimeError):
  pass


class CheckpointWriteError(RuntimeError):
  """An (asynchronous) checkpoint write failed; the message names the step, cause and last good step."""


class NonFiniteState(ValueError):
  """The state to save holds a NaN or Inf: it is never written over a good checkpoint."""


class _QuietOrbaxErrors(logging.Filter):
  """Orbax logs each failing background write of a save with its traceback (dozens for one full disk, more
  from asyncio at interpreter exit). `CheckpointWriteError` reports the failure once, so these records
  become one line each, at most 3 per save. Installed once per process, on the loggers Orbax logs through."""

  def __init__(self):
    super().__init__()
    self.count = 0
    self.failed = False  # after a reported write failure, asyncio's leftovers of it are Orbax's too

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if message.startswith("Requested `tracked_metric`"):
      return False  # a save without an eval metric: expected, the best-checkpoint policy skips it
    if record.levelno < logging.ERROR:
      return True
    if not ("orbax" in record.pathname or "orbax" in message or self.failed and record.name == "asyncio"):
      return True
    record.msg, record.args = message[:300], None
    record.exc_info = record.exc_text = record.stack_info = None
    self.count += 1
    return self.count <= 3


def _mute_closed_loop_reports():
  """When a save fails, Orbax closes its event loop while TensorStore still completes the save's other
  writes; each completion reports "Event loop is closed" through `sys.unraisablehook`, one traceback per
  array (100+ for a real model) before the failure itself is known. Those are muted (installed once per
  process, with the first Checkpointer); anything else goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "grpo_jax_mute", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value)):
      previous(unraisable)
  hook.grpo_jax_mute = True
  sys.unraisablehook = hook


_QUIET = _QuietOrbaxErrors()
for _name in ("absl", "asyncio"):
  logging.getLogger(_name).addFilter(_QUIET)


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
    self.unusable: dict[int, str] = {}  # step -> why, from the last `restore`
    self._pending: int | None = None  # the step of a save that may still be in flight
    self._reported = False  # a write failure was raised: the run is stopping
    policies = [ocp_managers.LatestN(n=keep)]
    if best_metric:
      policies.append(ocp_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    # best_fn makes Orbax write each save's metrics into the checkpoint, where a resumed run's manager reads
    # them back: without it, the best checkpoint's metric existed in memory only and a resume dropped it.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
        best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode,
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    _mute_closed_loop_reports()
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, meta: dict, ref_params=None, metrics: dict | None = None):
    """Starts an asynchronous save; `metrics` (floats) feed the best-checkpoint policy. Raises
    `CheckpointWriteError` if this or an earlier save failed, `NonFiniteState` for a NaN/Inf state."""
    self.check()
    prints, finite = fingerprint(state)
    if not all(finite):
      paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
      bad = [p for p, f in zip(paths, finite) if not f]
      raise NonFiniteState(f"refusing to save the checkpoint of step {step}: non-finite values in "
                           f"{len(bad)} arrays ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    self._check_space(step, state, ref_params)
    meta = {**meta, "fingerprint": prints}
    meta["meta_sha256"] = _meta_digest(meta)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if ref_params is not None:
      items["ref"] = ocp.args.StandardSave(ref_params)
    if self.best_metric and metrics and self.best_metric in metrics:
      metrics = {self.best_metric: float(metrics[self.best_metric])}
    else:
      metrics = None
    _QUIET.count = 0
    try:
      self._mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:  # noqa: BLE001 - the write of `step` (or of a pending one) failed
      raise self._write_error(self._pending if self._pending is not None else step, e) from None
    self._pending = step

  def _check_space(self, step: int, state, ref_params):
    """Refuses a save that cannot fit: the size of the newest checkpoint (else the arrays' bytes) must be
    free, since the old ones are deleted only after the new one is committed. A disk that fills while
    the write runs is caught when the write fails instead."""
    steps = [s for s in self.all_steps() if s != step]
    if steps:
      root = os.path.join(self.directory, str(steps[-1]))
      needed = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    else:
      needed = sum(x.nbytes for x in jax.tree.leaves((state, ref_params)))
    free = shutil.disk_usage(self.directory).free
    if free < 1.1 * needed:
      raise self._write_error(step, OSError(errno.ENOSPC, f"{free / 1e6:.1f} MB free where a checkpoint "
                                                         f"needs about {needed / 1e6:.1f} MB"))

  def check(self):
    """Raises `CheckpointWriteError` if the last asynchronous save has failed (cheap; never waits)."""
    if self._pending is None or self._mngr.is_saving_in_progress():
      return
    try:  # nothing in flight: these return at once, raising a failure of the background commit or finalize
      self._mngr.wait_until_finished()
      self._mngr.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._write_error(self._pending, e) from None
    self._pending = None

  def _write_error(self, step: int, e: BaseException) -> CheckpointWriteError:
    """The error to raise for a failed write; later ones (Orbax re-raising the same failure) are muted."""
    if self._reported:
      return CheckpointWriteError(f"an earlier checkpoint write to {self.directory} failed ({e})")
    self._pending = None
    good = sorted(int(d) for d in os.listdir(self.directory) if d.isdigit() and int(d) != step)
    kept = (f"the last good checkpoint is step {good[-1]} (kept); fix the cause and rerun the same command "
            f"to resume from it" if good else "there is no earlier checkpoint")
    self._reported = _QUIET.failed = True
    return CheckpointWriteError(f"saving the checkpoint of step {step} to {self.directory} failed "
                                f"({type(e).__name__}: {str(e)[:300]}); {kept}")

  def restore(self, abstract_state, abstract_ref=None) -> tuple[int, Any, Any, dict] | None:
    """Restores the newest good checkpoint: `(step, state, ref_params, meta)`, or None if none.

    `abstract_state` (and `abstract_ref`) are trees of `jax.ShapeDtypeStruct` with shardings, so
    arrays land directly in their training layout.
    """
    self._mngr.wait_until_finished()
    result, self.unusable = None, {}
    for step in reversed(self.all_steps()):
      try:
        result = (step, *self._restore_step(step, abstract_state, abstract_ref))
        break
      except Exception as e:  # noqa: BLE001 - any failure means "try the previous checkpoint"
        log.error("checkpoint at step %d in %s is unusable (%s: %s); trying the previous one",
                  step, self.directory, type(e).__name__, str(e)[:300])
        self.unusable[step] = f"{type(e).__name__}: {str(e)[:300]}"
    if result is not None:
      self.quarantine_unusable()  # newer than the good one: the resumed run will save those steps again
    return result

  def quarantine_unusable(self):
    """Moves the checkpoints the last `restore` found unusable to `corrupt/`."""
    for step in sorted(self.unusable):
      self._quarantine(step)
    self.unusable = {}

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
    digest = meta.pop("meta_sha256", None)
    if digest is None:
      log.warning("checkpoint at step %d predates the fingerprint of its data position", step)
    elif digest != _meta_digest(meta):
      raise CheckpointCorrupt(f"the meta item (data position) does not match its fingerprint at step {step}")
    expected = meta.pop("fingerprint", None)
    if expected and not isinstance(expected[0], list):  # a float fingerprint: written before the integer one
      log.warning("checkpoint at step %d has the older float fingerprint (checked on one process only)", step)
      ok = jax.process_count() > 1 or np.allclose(expected, _legacy_fingerprint(restored["state"]),
                                                   rtol=1e-6, atol=1e-6)
    else:
      ok = expected is not None and expected == fingerprint(restored["state"])[0]
    if not ok:
      raise CheckpointCorrupt(f"array fingerprint mismatch at step {step}")
    return restored["state"], restored["ref"] if has_ref else None, meta

  def wait(self):
    """Waits for a pending save; raises `CheckpointWriteError` if it failed."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_error(self._pending if self._pending is not None else -1, e) from None
    self.check()

  def close(self):
    """Waits for a pending save and closes; a write failure is raised once (not again if reported)."""
    error, reported_before = None, self._reported
    try:
      self.wait()
    except CheckpointWriteError as e:
      error = e
    try:
      self._mngr.close()
    except Exception as e:  # noqa: BLE001 - Orbax re-raises a failed write it already reported
      error = error or self._write_error(-1, e)
    if error is not None and not reported_before:
      raise error


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (a matching tree), for restoring."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
