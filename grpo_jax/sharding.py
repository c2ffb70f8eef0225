"""Device mesh, logical-axis rules and multi-host start-up: sharding is declared here and nowhere else.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded ZeRO-3 style) and `tensor` (Megatron-style tensor parallelism over heads and the
MLP width). Model parameters carry logical axis names (`axes=` metadata, see `grpo_jax.model`); the rules
below map them onto mesh axes. The batch axis of every activation shards over (`data`, `fsdp`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis -> mesh axis (or None: replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "layers": None,  # the stacked-blocks axis that the layer scan iterates over: never sharded
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
}


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A `(data, fsdp, tensor)` mesh; one entry may be -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {shape}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"{len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _mesh_size(mesh: Mesh, axes) -> int:
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> P:
  """PartitionSpec for an array with these logical axes.

  A dimension whose size the mesh axes do not divide stays replicated (e.g. 2 KV heads on a
  4-way tensor axis), and a mesh axis is used at most once per array.
  """
  if axes is None:
    return P()
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  spec, used = [], set()
  for name, size in zip(axes, shape):
    mesh_axes = rules.get(name) if name is not None else None
    if mesh_axes is not None:
      as_tuple = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
      as_tuple = tuple(a for a in as_tuple if mesh.shape[a] > 1 and a not in used)
      if as_tuple and size % _mesh_size(mesh, as_tuple) == 0:
        used.update(as_tuple)
        spec.append(as_tuple[0] if len(as_tuple) == 1 else as_tuple)
        continue
    spec.append(None)
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES):
  """`NamedSharding`s with exactly the tree structure of `state` (an `nnx.State` of parameters)."""

  def one(var):
    value = var.get_value() if hasattr(var, "get_value") else var.value
    axes = var.get_metadata().get("axes") if hasattr(var, "get_metadata") else None
    return NamedSharding(mesh, logical_to_spec(axes, value.shape, mesh, rules))

  leaves = [one(v) if _is_variable(v) else NamedSharding(mesh, P())
            for v in jax.tree.leaves(state, is_leaf=_is_variable)]
  return jax.tree.unflatten(jax.tree.structure(state), leaves)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a `[batch, ...]` array: the leading axis over (`data`, `fsdp`)."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_rows(x, mesh: Mesh | None):
  """Inside a jitted function: x `[batch, ...]` with its leading axis over (`data`, `fsdp`) when they
  divide it (`logical_to_spec`), the rest replicated. A no-op without a mesh."""
  if mesh is None:
    return x
  spec = logical_to_spec(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  """The batch size must be a multiple of this number of (data x fsdp) shards."""
  return _mesh_size(mesh, BATCH_AXES)


def shard_state(state, shardings):
  """Places an existing pytree onto `shardings` (device_put; no gathering on one device)."""
  return jax.device_put(state, shardings)


def init_sharded(make_model, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES):
  """Initializes `make_model()` directly into its sharding (no full copy on any one device).

  Returns `(graphdef, params)` with params an `nnx.State` laid out by `param_shardings`.
  """
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = param_shardings(abstract_state, mesh, rules)

  @jax.jit
  def init():
    return nnx.split(make_model())[1]

  params = jax.jit(init, out_shardings=shardings)()
  return graphdef, params


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False) -> None:
  """Multi-host start-up with plain `jax.distributed`; call before any other JAX call.

  A no-op for a single process. On Cloud TPU pass `auto=True` (everything is discovered); on GPU or
  CPU clusters pass the coordinator `host:port`, the number of processes and this process's id.
  CPU collectives use gloo.
  """
  if not auto and (num_processes or 1) <= 1:
    return
  # Must be set before the backend starts; it only affects CPU collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


# ------------------------------------------------------------------------- data across processes
# One code path from one CPU device to N hosts: every process holds the same global batch *order*
# (drawn from the global seed and step), but builds, samples, decodes and scores only the rows its
# devices hold; global arrays are assembled from those rows, and what every host needs (rewards for the
# group statistics, metrics) is all-gathered explicitly. On one process each helper is the identity.

def process_rows(n: int, mesh: Mesh) -> slice:
  """The rows `[start, stop)` of an `[n, ...]` batch (sharded by `batch_sharding`) held by this process's
  devices. Raises if they are not one contiguous block (a mesh whose batch axes interleave processes)."""
  if jax.process_count() == 1:
    return slice(0, n)
  index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((n,))
  starts = sorted({idx[0].indices(n)[:2] for idx in index_map.values()})
  lo, hi = starts[0][0], starts[-1][1]
  if sum(b - a for a, b in starts) != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {starts}: build the "
                     "mesh with the devices in process order (sharding.make_mesh does)")
  return slice(lo, hi)


def global_rows(local, mesh: Mesh, n: int):
  """This process's rows `[n_local, ...]` (numpy or jax) -> one global `[n, ...]` array sharded by
  `batch_sharding`; every process calls it with its `process_rows` block."""
  local = np.asarray(local)
  sharding = batch_sharding(mesh, local.ndim)
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local, (n, *local.shape[1:]))


def global_replicated(x, mesh: Mesh):
  """A host array that is the same on every process -> a replicated global array (what a jitted
  function needs instead of a numpy argument once arrays span processes)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, replicated(mesh), lambda idx: x[idx])


def local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a row-sharded global array that this process holds, in order, as numpy (the whole array
  on one process)."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  blocks = {}
  for shard in x.addressable_shards:
    start = shard.index[0].start or 0
    blocks.setdefault(start, np.asarray(shard.data))  # replicas along other axes: keep one
  return np.concatenate([blocks[s] for s in sorted(blocks)], axis=0)


def gather_rows(local) -> np.ndarray:
  """Concatenates every process's `[n_local, ...]` host array, in process order (the identity on one
  process)."""
  local = np.asarray(local)
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # noqa: PLC0415 - only multi-process runs need it
  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def sync(name: str) -> None:
  """A barrier across processes (a no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    multihost_utils.sync_global_devices(name)
