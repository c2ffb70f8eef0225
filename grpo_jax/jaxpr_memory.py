"""Bytes a traced JAX function needs, read off its jaxpr: what its backward pass keeps, and the peak of a forward.

Both work on abstract arguments (`jax.ShapeDtypeStruct`s): nothing is allocated, compiled or run. They are
estimates of what XLA will hold, made at the jaxpr level, before XLA fuses or schedules anything:

- `residual_bytes(fn, *args)`: the values autodiff saves between the forward and the backward pass of
  `fn` (`jax.ad_checkpoint` residuals, under whatever `jax.checkpoint` policies `fn` applies), arguments
  excluded. Saved values exist at once, so this is what a backward pass holds beyond its transients.
- `forward_peak(fn, *args)`: the most bytes live at once when the (dead-code-eliminated) jaxpr runs in
  order, each value freed after its last use. Elementwise chains are assumed fused the way XLA fuses them
  (see `_jaxpr_peak`); matmuls, reductions, gathers, concatenations and loop outputs are materialized.

`grpo_jax.plan` checks both against `compile().memory_analysis()` (tests/test_plan.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax._src.ad_checkpoint import saved_residuals  # (jax.ad_checkpoint.print_saved_residuals prints it)
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr
from jax.extend import core as jex_core

# Primitives XLA fuses into their consumer: an output of one of these read (at most twice) only by these or
# by a reduction is never materialized (elementwise chains, broadcasts, layout changes).
FUSIBLE = frozenset(
    "abs add and broadcast_in_dim convert_element_type cos div eq erf exp exp2 expand_dims expm1 ge gt "
    "integer_pow is_finite le log log1p logistic lt max min mul ne neg not or pow reshape rsqrt select_n "
    "sign sin sqrt square squeeze stop_gradient sub tanh xor".split())
# Consumers that fuse their elementwise producers in (XLA's reduce fusion).
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split())
# Call-like primitives whose body runs in place of the call (inlined before the liveness walk).
CALLS = frozenset("pjit jit closed_call checkpoint remat custom_jvp_call custom_vjp_call".split())


def nbytes(x, sharding=None) -> int:
  """Bytes of an array or abstract value `x` (of its shard under `sharding` when given)."""
  shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
  return math.prod(shape) * jnp.dtype(x.dtype).itemsize


def residual_bytes(fn, *args, last_axis: int | None = None) -> tuple[int, int]:
  """`(bytes, bytes of those with a last axis of size last_axis)` of the residuals autodiff keeps for the
  backward pass of `fn(*args)`, the arguments themselves excluded (they exist anyway)."""
  total = tagged = 0
  for aval, source in saved_residuals(fn, *args):
    if source.startswith("from the argument"):
      continue
    b = nbytes(aval)
    total += b
    tagged += b if last_axis is not None and aval.shape and aval.shape[-1] == last_axis else 0
  return total - tagged, tagged


def forward_peak(fn, *args) -> int:
  """`_jaxpr_peak` of `fn(*args)`, dead code removed first (as XLA removes it)."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return _jaxpr_peak(pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0])


def _inline(jaxpr, env: dict) -> list:
  """The equations of `jaxpr` as `(primitive name, invars, outvars, sub-jaxprs)`, calls replaced by their
  bodies; `env` maps the variables of inlined bodies to the outer ones they stand for (it is updated)."""
  ops = []
  for eqn in jaxpr.eqns:
    ins = [env.get(v, v) if isinstance(v, jex_core.Var) else v for v in eqn.invars]
    subs = list(jex_core.jaxprs_in_params(eqn.params))
    if eqn.primitive.name in CALLS and len(subs) == 1 and len(subs[0].invars) == len(ins):
      inner = dict(zip(subs[0].invars, ins))
      ops += _inline(subs[0], inner)
      for outer, v in zip(eqn.outvars, subs[0].outvars):
        env[outer] = inner.get(v, v) if isinstance(v, jex_core.Var) else v
    else:
      ops.append((eqn.primitive.name, ins, eqn.outvars, subs))
  return ops


def _jaxpr_peak(jaxpr) -> int:
  """Most bytes live at once when `jaxpr` runs in order, each value freed after its last use; its inputs
  are not counted (they exist already). Calls are inlined; a loop body (scan, while) adds its own peak while
  its equation runs. An output of a `FUSIBLE` primitive read at most twice, only by `FUSIBLE` primitives or
  reductions, takes no memory (XLA fuses it into its readers), and a materialized elementwise result may
  reuse the buffer of an input that dies there (XLA's in-place reuse). Nothing else is fused or in place."""
  env = {}
  ops = _inline(jaxpr, env)
  last, readers = {}, {}
  for i, (name, ins, _, _) in enumerate(ops):
    for v in ins:
      if isinstance(v, jex_core.Var):
        last[v] = i
        readers.setdefault(v, []).append(name)
  for v in jaxpr.outvars:
    v = env.get(v, v) if isinstance(v, jex_core.Var) else v
    if isinstance(v, jex_core.Var):
      last[v] = len(ops)
      readers.setdefault(v, []).append("output")
  made_by = {}

  def size(v) -> int:
    fused = (made_by.get(v) in FUSIBLE and 1 <= len(readers.get(v, ())) <= 2
             and all(r in FUSIBLE or r in REDUCTIONS for r in readers[v]))
    return 0 if fused else nbytes(v.aval)

  live = peak = 0
  for i, (name, ins, outs, subs) in enumerate(ops):
    outs = [v for v in outs if not isinstance(v, jex_core.DropVar)]
    made_by.update(dict.fromkeys(outs, name))
    dying = [v for v in {v for v in ins if isinstance(v, jex_core.Var)} if last.get(v) == i and v in made_by]
    inner = max((_jaxpr_peak(sub) for sub in subs), default=0)
    new = sum(size(v) for v in outs)
    reused = min(new, max((size(v) for v in dying), default=0)) if name in FUSIBLE else 0
    peak = max(peak, live + inner + new - reused)
    live += sum(size(v) for v in outs if v in last) - sum(size(v) for v in dying)
  return peak
