"""Calling untrusted reward functions: a timeout, cancellation, a bounded thread leak and capped output.

Why threads, not a process pool: reward functions are arbitrary Python callables (closures, partials,
objects holding a tokenizer) that a pool would have to pickle, and forking a process that runs JAX is
unsafe (XLA's threads do not survive a fork). Python cannot kill a thread, so instead:

- each reward function has ONE worker thread, reused call after call: no thread per step;
- a call past its timeout is abandoned: the caller stops waiting and raises `Cancelled` inside it
  (CPython's `PyThreadState_SetAsyncExc`), which stops runaway Python code (a sympy loop, `while True`) at
  its next bytecode. A call blocked in C (a sleep, a lock, a C extension) is not interruptible: its thread
  is left to finish, and a replacement worker is started only while fewer than `MAX_HUNG_THREADS` (2)
  abandoned threads of that function are alive. Past that the function's calls fail at once (counted by
  the caller) until a hung call returns: a function that always hangs costs 2 threads, not one per step;
- `SystemExit`, `KeyboardInterrupt` or any other BaseException raised by the function is an ordinary
  failure (`RewardFunctionExit`): a reward function cannot end the training process;
- what a reward call prints (stdout and stderr together) is capped at `PRINT_LIMIT` characters; the rest
  is dropped and counted, so a function printing megabytes neither floods the logs nor slows the step.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import sys
import threading

logger = logging.getLogger(__name__)

MAX_HUNG_THREADS = 2
PRINT_LIMIT = 10_000


class Cancelled(BaseException):
  """Raised asynchronously inside a reward call that its caller abandoned at the timeout."""


class RewardFunctionExit(RuntimeError):
  """A reward function raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt)."""


class StillRunning(RuntimeError):
  """A reward function's earlier calls still run past their timeout: this call was not started."""


_tls = threading.local()


class _Budget:
  def __init__(self, name: str):
    self.name, self.left, self.dropped = name, PRINT_LIMIT, 0


class _CappedStream:
  """Stands in for sys.stdout / sys.stderr during reward calls: writes from a reward worker thread are
  capped by its call's budget; every other thread writes through unchanged."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, s):
    budget = getattr(_tls, "budget", None)
    if budget is None:
      return self._stream.write(s)
    head = s[:budget.left]
    if head:
      self._stream.write(head)
      budget.left -= len(head)
      if not budget.left:
        self._stream.write(f"\n[reward {budget.name}: output truncated after {PRINT_LIMIT} characters]\n")
    budget.dropped += len(s) - len(head)
    return len(s)

  def __getattr__(self, name):
    return getattr(self._stream, name)


@contextlib.contextmanager
def _capped_output():
  saved = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = _CappedStream(saved[0]), _CappedStream(saved[1])
  try:
    yield
  finally:
    sys.stdout, sys.stderr = saved


class _Job:
  def __init__(self, fn, args, kwargs, name):
    self.fn, self.args, self.kwargs, self.name = fn, args, kwargs, name
    self.done = threading.Event()
    self.value = self.error = None
    self.dropped = 0

  def run(self):
    _tls.budget = budget = _Budget(self.name)
    try:
      self.value = self.fn(*self.args, **self.kwargs)
    except BaseException as e:  # noqa: BLE001 - SystemExit and Cancelled included: reported to the caller
      self.error = e
    finally:
      _tls.budget = None
      self.dropped = budget.dropped
      self.done.set()


class _Worker:
  def __init__(self, name: str):
    self.name = name
    self.jobs: queue.SimpleQueue = queue.SimpleQueue()
    self.abandoned = False
    self.thread = threading.Thread(target=self._loop, name=f"reward-{name}", daemon=True)
    self.thread.start()

  def _loop(self):
    try:
      while not self.abandoned:
        job = self.jobs.get()
        if job is None:
          return
        job.run()
    except BaseException:  # noqa: BLE001 - a late Cancelled between jobs: the worker is abandoned anyway
      return

  def abandon(self):
    self.abandoned = True
    self.thread.name = f"reward-{self.name}-abandoned"
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident), ctypes.py_object(Cancelled))
    self.jobs.put(None)  # wakes the loop if the call finished just now, so that it exits


class WorkerPool:
  """One reusable worker thread per reward function name; see the module docstring."""

  def __init__(self):
    self._workers: dict[str, _Worker] = {}
    self._hung: dict[str, list[_Worker]] = {}
    self.abandoned: dict[str, int] = {}  # calls abandoned at the timeout, per function (a running total)

  def hung_threads(self, name: str) -> int:
    """Abandoned threads of `name` still alive."""
    self._hung[name] = [w for w in self._hung.get(name, []) if w.thread.is_alive()]
    return len(self._hung[name])

  def call(self, name: str, fn, timeout_s: float, args=(), kwargs=None):
    """`fn(*args, **kwargs)` on the worker of `name`; returns its value or raises its Exception,
    `RewardFunctionExit` (for a BaseException), `TimeoutError` (abandoned) or `StillRunning`."""
    worker = self._workers.get(name)
    if worker is None:
      if self.hung_threads(name) >= MAX_HUNG_THREADS:
        raise StillRunning(f"{len(self._hung[name])} earlier calls still run past the {timeout_s}s timeout; "
                           "not called again until one returns")
      worker = self._workers[name] = _Worker(name)
    job = _Job(fn, args, kwargs or {}, name)
    with _capped_output():
      worker.jobs.put(job)
      finished = job.done.wait(timeout_s)
    if job.dropped:
      logger.warning("reward %s printed %d characters more than the %d shown", name, job.dropped, PRINT_LIMIT)
    if not finished:
      worker.abandon()
      del self._workers[name]
      self._hung.setdefault(name, []).append(worker)
      self.abandoned[name] = self.abandoned.get(name, 0) + 1
      raise TimeoutError(f"no result after {timeout_s}s (call abandoned)")
    if isinstance(job.error, Exception):
      raise job.error
    if job.error is not None:
      raise RewardFunctionExit(f"{type(job.error).__name__}{job.error.args!r} raised inside the reward "
                               "function") from None
    return job.value
