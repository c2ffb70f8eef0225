"""Storage faults: a full disk or failing writer during an asynchronous save, truncated/garbled checkpoint
files, unexpected files (a pickle is never loaded), a NaN state, the best checkpoint across resumes, and
the data position (`meta`) under the integrity fingerprint. Every fault: a clear error or a fallback to
the previous good checkpoint, nothing good overwritten."""
import contextlib
import errno
import json
import logging
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import checkpoint as ckpt_lib

from . import harness


def _state(seed: float):
  return {"w": jnp.arange(4096, dtype=jnp.float32) * seed, "b": jnp.full((7,), seed, jnp.float32),
          "step": jnp.asarray(int(seed), jnp.int32)}


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(1.0))


def _meta(index: int):
  return {"data": {"epoch": 0, "index": index, "seed": 0, "num_examples": 100}}


def _restored_step(directory, **kw):
  c = ckpt_lib.Checkpointer(directory, **kw)
  out = c.restore(_abstract())
  c.close()
  return out


def test_best_checkpoint_is_kept_across_resumes(tmp_path):
  d = str(tmp_path / "ckpt")
  first = ckpt_lib.Checkpointer(d, keep=1, best_metric="eval/accuracy")
  first.save(2, _state(2), _meta(2), metrics={"eval/accuracy": 0.9})
  first.save(4, _state(4), _meta(4), metrics={"eval/accuracy": 0.1})
  first.close()
  for _ in range(2):  # two resumed runs, each saving past the best one
    resumed = ckpt_lib.Checkpointer(d, keep=1, best_metric="eval/accuracy")
    last = resumed.all_steps()[-1]
    resumed.save(last + 2, _state(last + 2), _meta(last + 2), metrics={"eval/accuracy": 0.2})
    resumed.save(last + 4, _state(last + 4), _meta(last + 4))
    resumed.close()
  steps = ckpt_lib.Checkpointer(d, keep=1, best_metric="eval/accuracy").all_steps()
  assert steps[0] == 2 and steps[-1] == 12, steps


def test_data_position_is_covered_by_the_fingerprint(tmp_path, caplog):
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=3)
  c.save(2, _state(2), _meta(8))
  c.save(4, _state(4), _meta(16))
  c.close()
  meta_file = os.path.join(d, "4", "meta", "metadata")
  meta = json.load(open(meta_file))
  meta["data"]["index"] = 17  # one example off: the resumed run would silently see other batches
  json.dump(meta, open(meta_file, "w"))
  with caplog.at_level(logging.ERROR, logger="grpo_jax.checkpoint"):
    step, state, _, restored_meta = _restored_step(d, keep=3)
  assert step == 2 and restored_meta["data"]["index"] == 8
  assert "step 4" in caplog.text and "fingerprint" in caplog.text
  assert os.path.isdir(os.path.join(d, "corrupt", "4"))


def test_nonfinite_state_is_never_saved(tmp_path):
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=1)
  c.save(2, _state(2), _meta(2))
  bad = dict(_state(4), w=_state(4)["w"].at[3].set(jnp.nan))
  with pytest.raises(ckpt_lib.NonFiniteState, match=r"step 4.*non-finite"):
    c.save(4, bad, _meta(4))
  c.close()
  assert _restored_step(d, keep=1)[0] == 2


# ----------------------------------------------------------------------------------------- write faults
def _fill(path: str):
  """Fills the file system holding `path`; returns the filler's path."""
  filler = os.path.join(path, "filler")
  fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * 65536)
  except OSError as e:
    assert e.errno == errno.ENOSPC
  finally:
    os.close(fd)
  return filler


def _count_tracebacks(records):
  return sum(r.exc_info is not None or "Traceback" in r.getMessage() for r in records)


def _assert_write_failure_is_clean(d, c, caplog, soak_record, fault):
  with caplog.at_level(logging.INFO):
    with pytest.raises(ckpt_lib.CheckpointWriteError) as e:
      c.save(4, _state(4), _meta(4))
      c.wait()  # the write is asynchronous: the failure surfaces here at the latest
  msg = str(e.value)
  assert "step 4" in msg and "last good checkpoint is step 2" in msg and d in msg, msg
  assert _count_tracebacks(caplog.records) == 0, [r.getMessage()[:200] for r in caplog.records]
  with contextlib.suppress(ckpt_lib.CheckpointWriteError):
    c.close()
  soak_record("storage", fault=fault, survived=True)


def test_full_disk_refuses_the_save_before_writing(tmp_path, caplog, soak_record):
  with harness.tiny_tmpfs(str(tmp_path / "tmpfs")) as mnt:
    d = os.path.join(mnt, "ckpt")
    c = ckpt_lib.Checkpointer(d, keep=1)
    c.save(2, _state(2), _meta(2))
    c.wait()
    filler = _fill(mnt)
    with caplog.at_level(logging.INFO):
      with pytest.raises(ckpt_lib.CheckpointWriteError, match=r"step 4.*MB free.*last good checkpoint is "
                                                                r"step 2"):
        c.save(4, _state(4), _meta(4))  # at once: nothing was started, nothing half-written
    assert sorted(os.listdir(d)) == ["2"] and not [r for r in caplog.records if "orbax" in r.pathname
                                                   and r.levelno >= logging.ERROR]
    c.close()
    soak_record("storage", fault="full disk (tmpfs) before a save: refused before writing", survived=True)
    os.remove(filler)
    step, state, _, _ = _restored_step(d, keep=1)
    assert step == 2 and float(state["b"][0]) == 2.0


def test_closed_event_loop_reports_are_muted_and_nothing_else(monkeypatch):
  """TensorStore reports each write that completes after Orbax closed a failed save's event loop through
  sys.unraisablehook: those are muted once a Checkpointer exists; other unraisables still reach the hook."""
  import sys
  import types
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  ckpt_lib._mute_closed_loop_reports()

  def report(exc):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                             err_msg=None, object=None))
  report(RuntimeError("Event loop is closed"))
  report(RuntimeError("something else"))
  report(ValueError("Event loop is closed"))
  assert seen == ["something else", "Event loop is closed"]


def test_failing_writer_during_async_save(tmp_path, caplog, monkeypatch, soak_record):
  """The same fault without root: the JSON item's writer raises ENOSPC."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=1)
  c.save(2, _state(2), _meta(2))
  c.wait()

  async def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", no_space)
  _assert_write_failure_is_clean(d, c, caplog, soak_record, "failing writer (ENOSPC) during async save")
  monkeypatch.undo()
  assert _restored_step(d, keep=1)[0] == 2


def test_unwritable_directory(tmp_path, caplog, soak_record):
  if os.geteuid() == 0:
    pytest.skip("root writes into read-only directories")
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=1)
  c.save(2, _state(2), _meta(2))
  c.wait()
  os.chmod(d, 0o500)
  try:
    _assert_write_failure_is_clean(d, c, caplog, soak_record, "unwritable directory")
  finally:
    os.chmod(d, 0o700)
  assert _restored_step(d, keep=1)[0] == 2


# ------------------------------------------------------------------------------------- damaged contents
def _array_files(step_dir):
  out = []
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    out += [os.path.join(root, f) for f in files if os.path.getsize(os.path.join(root, f)) > 256]
  return sorted(out)


def _truncate(step_dir):
  for f in _array_files(step_dir):
    with open(f, "r+b") as fh:
      fh.truncate(64)


def _garble(step_dir):
  for f in _array_files(step_dir):
    data = bytearray(open(f, "rb").read())
    for i in range(len(data) // 2, len(data), 97):
      data[i] ^= 0x5A
    open(f, "wb").write(bytes(data))


def _delete_manifest(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      if f == "manifest.ocdbt":
        os.remove(os.path.join(root, f))


def _garbage_meta(step_dir):
  open(os.path.join(step_dir, "meta", "metadata"), "w").write('{"data": {"epoch": 0, "ind')


def _empty_dir(step_dir):
  for root, dirs, files in os.walk(step_dir, topdown=False):
    for f in files:
      os.remove(os.path.join(root, f))


DAMAGE = {"truncated array files": _truncate, "garbled array bytes": _garble,
          "missing OCDBT manifest": _delete_manifest, "truncated meta JSON": _garbage_meta,
          "step directory emptied": _empty_dir}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, soak_record, caplog):
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=2)
  c.save(2, _state(2), _meta(2))
  c.save(4, _state(4), _meta(4))
  c.close()
  DAMAGE[damage](os.path.join(d, "4"))
  with caplog.at_level(logging.ERROR, logger="grpo_jax.checkpoint"):
    step, state, _, meta = _restored_step(d, keep=2)
  assert step == 2 and meta["data"]["index"] == 2
  np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2)["w"]))
  assert "step 4" in caplog.text and "unusable" in caplog.text
  assert os.path.isdir(os.path.join(d, "corrupt", "4"))  # kept for inspection, not deleted
  soak_record("storage", fault=damage, survived=True)


class _Bomb:
  """Unpickling this creates a marker file: proof that a pickle was loaded."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_unexpected_files_are_ignored_and_a_pickle_is_never_loaded(tmp_path, soak_record):
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=2)
  c.save(2, _state(2), _meta(2))
  c.close()
  marker = str(tmp_path / "unpickled")
  bomb = pickle.dumps(_Bomb(marker))
  for place in ("", "2", "2/state", "2/meta"):
    for name in ("checkpoint.pkl", "state.pickle", "metadata.pkl"):
      open(os.path.join(d, place, name), "wb").write(bomb)
  os.makedirs(os.path.join(d, "notes"))
  open(os.path.join(d, "README.txt"), "w").write("hand-written notes")
  os.makedirs(os.path.join(d, "7.orbax-checkpoint-tmp-1234"))  # a save killed before its commit
  step, state, _, meta = _restored_step(d, keep=2)
  assert step == 2 and meta["data"]["index"] == 2 and not os.path.exists(marker)
  np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2)["w"]))
  soak_record("storage", fault="unexpected files incl. pickles", survived=True)


def test_no_usable_checkpoint_reports_the_unusable_steps(tmp_path):
  d = str(tmp_path / "ckpt")
  c = ckpt_lib.Checkpointer(d, keep=2)
  c.save(2, _state(2), _meta(2))
  c.save(4, _state(4), _meta(4))
  c.close()
  for s in ("2", "4"):
    _truncate(os.path.join(d, s))
  c = ckpt_lib.Checkpointer(d, keep=2)
  assert c.restore(_abstract()) is None
  assert sorted(c.unusable) == [2, 4] and all(c.unusable.values())
  assert sorted(os.listdir(d)) == ["2", "4"]  # none moved: the cause may be a changed config
  c.quarantine_unusable()
  assert c.all_steps() == [] and sorted(os.listdir(os.path.join(d, "corrupt"))) == ["2", "4"]
  c.close()
