"""Concurrent use: a second run on a workdir refuses with a message naming the holder; a SIGKILLed holder
leaves no stale lock."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from grpo_jax import loop
from grpo_jax.lock import WorkdirLock, WorkdirLocked

from . import harness

HOLD = ("import sys, time; from grpo_jax.lock import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)")


def _holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLD, workdir], stdout=subprocess.PIPE, text=True,
                          env=harness.env(), cwd=harness.ROOT)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_lock_names_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path, soak_record):
  holder = _holder(str(tmp_path))
  try:
    with pytest.raises(WorkdirLocked) as e:
      WorkdirLock(str(tmp_path)).acquire()
    assert f"pid {holder.pid}" in str(e.value) and socket.gethostname() in str(e.value)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert os.path.exists(tmp_path / ".lock")  # the file stays; the kernel dropped the lock with its holder
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):
      WorkdirLock(str(tmp_path)).acquire()  # held again, now by us
  soak_record("lock", case="second run refused; SIGKILLed holder left no stale lock", survived=True)


def test_train_refuses_a_locked_workdir_before_touching_it(tmp_path, monkeypatch):
  def built(*_):
    raise AssertionError("the experiment was built in a locked workdir")
  monkeypatch.setattr(loop, "build_experiment", built)
  from grpo_jax import config as config_lib
  config = config_lib.load_config(harness.DEFAULT)
  (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
  holder = _holder(str(tmp_path))
  try:
    with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
      loop.train(config, str(tmp_path))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert not (tmp_path / "config.json").exists()
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'


def test_cli_second_run_refuses_in_one_line(tmp_path):
  holder = _holder(str(tmp_path))
  try:
    proc = harness.run(str(tmp_path), timeout=300)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert proc.returncode != 0
  assert f"in use by another run (pid {holder.pid}" in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
