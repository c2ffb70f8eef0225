"""grpo_jax.hostmem: freed compile memory is handed back after every XLA compile."""

import jax
import jax.numpy as jnp

from grpo_jax import hostmem


def test_a_compile_triggers_a_trim(monkeypatch):
  calls = []
  monkeypatch.setattr(hostmem, "release_freed_memory", lambda: calls.append(1) or True)
  hostmem.trim_after_compiles()
  hostmem.trim_after_compiles()  # idempotent: one listener
  x = jnp.ones(7)
  f = jax.jit(lambda x: jnp.sin(x) * 3.25 + 1.5)
  before = len(calls)
  f(x).block_until_ready()  # a fresh program: one compile, one trim
  assert len(calls) == before + 1
  f(x).block_until_ready()  # a cache hit: no compile, no trim
  assert len(calls) == before + 1


def test_release_runs_on_glibc():
  assert hostmem.release_freed_memory() in (True, False)
  assert hostmem.release_freed_memory() is (hostmem._libc() is not None)
