"""Subprocess runs of a tiny default experiment for the soak tests, and step-by-step metrics comparison.

The tiny run (about 30 s on 2 busy cores with a warm XLA cache) has a 5-step warm start, 6 GRPO steps, an
evaluation at steps 0, 3 and 6, checkpoints at steps 2, 4 and 6 (with the KL reference params), and logs
every metric the full experiment logs. `TINY` is the same list `tests/test_loop.py` uses, so one
uninterrupted reference run (the `tiny_run` fixture in tests/conftest.py) serves both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT = os.path.join(ROOT, "experiments", "default.py")
TINY = [
    "--config.model.tiny.hidden_size=32", "--config.model.tiny.intermediate_size=64",
    "--config.model.tiny.num_layers=2", "--config.model.tiny.head_dim=8",
    "--config.task.kwargs.num_train=512", "--config.task.kwargs.num_eval=16",
    "--config.rollout.prompts_per_step=4", "--config.grpo.group_size=4", "--config.sft.steps=5",
    "--config.sft.batch_size=16", "--config.train.num_steps=6", "--config.eval.every=3",
    "--config.eval.num_examples=16", "--config.eval.batch_size=16", "--config.eval.k=2",
    "--config.checkpoint.every=2", "--config.train.progress_bar=False", "--config.grpo.beta=0.04",
    "--config.mesh=(2,2,1)",
]
STEPS = 6
VOLATILE = ("time/", "throughput/")  # wall-clock fields: the only ones allowed to differ


def env(faults=None) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e["GRPO_SOAK_FAULTS"] = json.dumps(faults or [])
  return e


def cmd(workdir: str, *extra: str, faults=None) -> list[str]:
  """The CLI command; with faults, the same CLI behind the fault driver."""
  entry = "tests.soak.driver" if faults else "grpo_jax.main"
  return [sys.executable, "-m", entry, f"--config={DEFAULT}", f"--workdir={workdir}", *TINY, *extra]


def run(workdir: str, *extra: str, faults=None, timeout: float = 900) -> subprocess.CompletedProcess:
  """Runs the CLI (through the fault driver) to its end; stdout and stderr are captured."""
  return subprocess.run(cmd(workdir, *extra, faults=faults), env=env(faults), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def start(workdir: str, *extra: str, faults=None, log_path: str) -> subprocess.Popen:
  """Starts the CLI in the background with stderr (and stdout) going to `log_path`."""
  log = open(log_path, "w")
  return subprocess.Popen(cmd(workdir, *extra, faults=faults), env=env(faults), cwd=ROOT, stdout=log, stderr=log)


def rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def stable(workdir: str) -> list[dict]:
  return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows(workdir)]


def compare(reference_dir: str, workdir: str) -> list[str]:
  """Differences between two runs' metrics.jsonl, row by row (timing fields excluded): [] if identical."""
  want, got = stable(reference_dir), stable(workdir)
  problems = []
  steps = [r["step"] for r in got]
  if steps != [r["step"] for r in want]:
    problems.append(f"steps {steps} != {[r['step'] for r in want]}")
  for a, b in zip(want, got):
    if a != b:
      keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (
          isinstance(a.get(k), float) and a.get(k) != a.get(k) and b.get(k) != b.get(k)))  # NaN == NaN
      if keys:
        problems.append(f"step {a.get('step')}: {[(k, a.get(k), b.get(k)) for k in keys[:5]]}")
  return problems


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 900, poll: float = 0.02):
  """Polls `predicate()` until true; False if `proc` ended first or on timeout."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc is not None and proc.poll() is not None:
      return bool(predicate())
    time.sleep(poll)
  return False


def sigterm_when(proc: subprocess.Popen, predicate, timeout: float = 900) -> float | None:
  """Sends SIGTERM once `predicate()` holds; returns the time it was sent (None if `proc` ended first)."""
  if not wait_for(predicate, proc, timeout) or proc.poll() is not None:
    return None
  proc.send_signal(signal.SIGTERM)
  return time.time()


def tail(path: str, n: int = 3000) -> str:
  with open(path) as f:
    return f.read()[-n:]


@contextlib.contextmanager
def tiny_tmpfs(path: str, size: str = "1m"):
  """A `size` tmpfs mounted at `path` (a full disk on demand); skips the test where mounting needs root."""
  import pytest
  os.makedirs(path, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], check=False)


def tensorboard_restarts(workdir: str) -> list[int]:
  """The steps of the SessionLog.START events in the TensorBoard files, oldest file first: at such an
  event TensorBoard hides the earlier events at or after that step (tensorboardX `purge_step`)."""
  import glob as glob_lib
  import struct

  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(glob_lib.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    i = 0
    while i + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        out.append(event.step)
  return out
