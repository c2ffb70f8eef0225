"""Faults of a whole run through the CLI: no usable checkpoint, NaN from a tiny temperature, a reward failing on
every sample with on_error=drop, a full disk during an asynchronous save. Each stops with one clear line
(no traceback) and the last good checkpoint kept; each was a silent or noisy failure in issue 16."""
import os
import shutil

import numpy as np
import pytest

from . import harness


def _committed(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit())


def _fingerprint_finite(workdir, step):
  """The arrays the checkpoint of `step` holds are all finite (read back with Orbax, no target)."""
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  leaves = [np.asarray(x, np.float32) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(leaves) and all(np.all(np.isfinite(x)) for x in leaves)


def _one_line_error(proc):
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def _truncate_arrays(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      path = os.path.join(root, f)
      if os.path.getsize(path) > 256:
        with open(path, "r+b") as fh:
          fh.truncate(64)


def _refuses_without_usable_checkpoint(reference_dir, workdir):
  shutil.copytree(reference_dir, workdir)
  steps = _committed(workdir)
  for s in steps:
    _truncate_arrays(os.path.join(workdir, "checkpoints", str(s)))
  metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
  proc = harness.run(workdir)
  assert proc.returncode == 1
  line = _one_line_error(proc)
  assert f"none of the {len(steps)} checkpoints" in line and "--fresh_start" in line, line
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before  # history kept
  assert _committed(workdir) == steps  # nothing moved or deleted
  return steps


def test_no_usable_checkpoint_refuses(tiny_run, tmp_path, soak_record):
  _refuses_without_usable_checkpoint(tiny_run[0], str(tmp_path / "run"))
  soak_record("storage", fault="every checkpoint unusable: refused, history kept", survived=True)


@pytest.mark.slow
def test_no_usable_checkpoint_refuses_unless_fresh_start(tiny_run, tmp_path):
  reference_dir, _ = tiny_run
  workdir = str(tmp_path / "run")
  steps = _refuses_without_usable_checkpoint(reference_dir, workdir)
  proc = harness.run(workdir, "--fresh_start")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))) == sorted(map(str, steps))
  assert harness.compare(reference_dir, workdir) == []  # the fresh start is the same run again


def test_nan_from_a_tiny_temperature_stops_without_saving_nan(tmp_path, soak_record):
  workdir = str(tmp_path / "run")
  proc = harness.run(workdir, "--config.rollout.temperature=1e-9")
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = _one_line_error(proc)
  assert "stopping at step 3: 3 consecutive steps skipped" in line and "logits" in line, line
  rows = harness.rows(workdir)
  assert [r["step"] for r in rows] == [0, 1, 2, 3]
  assert all(r["update_skipped"] == 1.0 and not np.isfinite(r["loss"]) for r in rows[1:])
  assert _committed(workdir) == [2] and _fingerprint_finite(workdir, 2)
  soak_record("nan", case="rollout.temperature=1e-9: 3 NaN steps skipped, then stopped", contained=True,
              steps=3)


def test_reward_failing_every_sample_with_drop_stops(tmp_path, soak_record):
  workdir = str(tmp_path / "run")
  proc = harness.run(workdir, "--config.rewards.on_error=drop", faults=[{"reward": "raise"}])
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = _one_line_error(proc)
  assert "stopping at step 3" in line and "no sample got a reward" in line, line
  rows = harness.rows(workdir)
  assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[0]["eval/accuracy"] == 0.0
  assert all(r["update_skipped"] == 1.0 and r["reward/exact_match/failures"] == 16 for r in rows[1:])
  soak_record("hostile", input="reward raising on every sample, on_error=drop (run stopped at step 3)",
              seconds=0.0, contained=True)


def _full_disk_run(workdir):
  """A run whose disk fills during the asynchronous write of step 4: one line, stopped, step 2 kept."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # The disk fills while the asynchronous write of step 4 runs (past the free-space check before it).
  proc = harness.run(workdir, faults=[{"fill": ckpt_dir, "at": 2, "during_only": True}])
  assert proc.returncode == 1 and "SOAK-FILLED" in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert "saving the checkpoint of step 4" in errors[0] and "last good checkpoint is step 2" in errors[0]
  # At most 3 one-line Orbax errors; a stray asyncio report from a write that completes after Orbax gave up
  # is tolerated: a handful, not the 100+ tracebacks of issue 16 (0 in every run measured).
  tracebacks = proc.stderr.count("Traceback")
  assert tracebacks <= 3 and proc.stderr.count("No space left") <= 4, proc.stderr[-3000:]
  assert _committed(workdir) == [2]
  assert harness.rows(workdir)[-1]["step"] <= 5  # noticed within a step of the failed write, not at step 6
  return tracebacks


def test_full_disk_during_async_save_stops_cleanly(tmp_path, soak_record):
  workdir = str(tmp_path / "run")
  with harness.tiny_tmpfs(os.path.join(workdir, "checkpoints"), size="4m"):
    tracebacks = _full_disk_run(workdir)
  soak_record("storage", fault="full disk (tmpfs) during the async save of a run: one line, step 2 kept",
              survived=True, tracebacks=tracebacks)


@pytest.mark.slow
def test_full_disk_during_async_save_stops_cleanly_and_resumes(tiny_run, tmp_path):
  reference_dir, _ = tiny_run
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  with harness.tiny_tmpfs(ckpt_dir, size="4m"):
    _full_disk_run(workdir)
    os.remove(os.path.join(ckpt_dir, "filler"))
    proc = harness.run(workdir)  # space freed: resumes from step 2
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    assert harness.compare(reference_dir, workdir) == []


@pytest.mark.slow
def test_one_nan_update_is_skipped_and_the_run_goes_on(tmp_path, soak_record):
  workdir = str(tmp_path / "run")
  proc = harness.run(workdir, faults=[{"nan": [2]}])
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = harness.rows(workdir)
  assert [r["update_skipped"] for r in rows[1:]] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
  assert np.isnan(rows[2]["loss"]) and all(np.isfinite(r["loss"]) for r in rows[1:] if r["step"] != 2)
  assert all(_fingerprint_finite(workdir, s) for s in _committed(workdir))
  soak_record("nan", case="one NaN update injected at step 2: skipped, run completed", contained=True,
              steps=1)
