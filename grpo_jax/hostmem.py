"""Host memory: give the heap that XLA's compiler frees back to the operating system.

XLA:CPU compiles a program with a few hundred MiB of short-lived allocations. glibc keeps freed heap pages
mapped, so without help the process's resident set keeps a compile's worth of garbage for the rest of the
run, and the program's own buffers (large ones are fresh mmaps) come on top: +270 MiB of peak RSS on the
peer benchmark (docs/benchmarks.md). `trim_after_compiles()` calls glibc's `malloc_trim(0)` after every
XLA compile, through JAX's monitoring hook, so each compile's garbage is returned before anything runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from jax import monitoring

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch


@functools.lru_cache(maxsize=None)
def _libc():
  name = ctypes.util.find_library("c")
  try:
    lib = ctypes.CDLL(name) if name else None
  except OSError:
    return None
  return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def release_freed_memory() -> bool:
  """Returns the heap's free pages to the OS (glibc `malloc_trim(0)`); False where there is no glibc."""
  lib = _libc()
  return bool(lib is not None and lib.malloc_trim(0) >= 0)


@functools.lru_cache(maxsize=None)
def trim_after_compiles() -> None:
  """Registers (once per process) a listener that releases freed memory after each backend compile."""
  if _libc() is None:
    return

  def listener(event: str, duration: float, **kwargs):
    del duration, kwargs
    if event == _BACKEND_COMPILE_EVENT:
      release_freed_memory()

  monitoring.register_event_duration_secs_listener(listener)
