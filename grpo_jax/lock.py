"""One run per workdir: an exclusive `fcntl.flock` on `WORKDIR/.lock`.

A second run on the same workdir would interleave its metrics and checkpoints with the first (Orbax's
temporary directories vanish under it, `metrics.jsonl` is rewound). The lock is held for the life of the run
by the process that writes (process 0 of a multi-host run). The kernel releases an flock when its process
dies, SIGKILL included, so a killed run never leaves a stale lock: the file stays, the lock does not.
The file holds the holder's pid, host and start time, for the error message only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

LOCK_FILE = ".lock"


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` or `acquire()` / `release()`; `acquire` raises `WorkdirLocked`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirLocked(
          f"{os.path.dirname(self.path)} is in use by another run (pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to finish or stop "
          f"it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"{}")
  except (OSError, ValueError):
    return {}
