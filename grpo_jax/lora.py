"""LoRA (Hu et al. 2021, arXiv 2106.09685, Eq. 3) on the stacked decoder's projections.

A projection `W` `[layers, *in, *out]` (q `[layers, D, N, H]`, o `[layers, N, H, D]`, gate `[layers, D, F]`,
...) gets two float32 adapters, `A` `[layers, *in, r]` and `B` `[layers, r, *out]`, stacked over the layers
like the base weights, and the adapted weight is `W + (alpha / r) · A B`. `B` starts at zero, so the adapted
model is the base model exactly until the first update.

The design is functional: the adapters are an `nnx.State` of their own (what the optimizer updates and
the checkpoint holds), and `merge(base, adapters, scale)` builds the decoder's parameters inside the jitted
loss, so the model code is the plain decoder's, gradients reach A and B only (the base is a constant of
the loss), and the reference policy is the base tree itself: no second copy of the model. The price of
merging, rather than adding `x A B` beside `x W` inside each layer, is transient memory: the update
program holds the merged weights and their full-size gradient (measured, `benchmarks/lora_memory.py`,
Qwen2.5-0.5B in bfloat16: adapting all 7 projections instead of q alone adds exactly the 646 MiB of the
extra merged weights to the update's temp, 3433 vs 2788 MiB; full fine-tuning needs 4713 MiB temp plus
1885 MiB of AdamW moments), and the full-size weight gradient is computed as in full fine-tuning. The
sampler gets the merged weights once per rollout (`Trainer.policy_params`), so decoding costs what the
base model's does.

Adapter paths mirror the base: the adapters of `layers/attn/q` are `layers/attn/q/lora_a` and `lora_b`.
Shapes: L layers, r rank; `*in` / `*out` the input / output axes of a projection (`n_in` of them in).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

# Config name -> (path of the base weight in the decoder's params, number of input axes).
TARGETS = {
    "q": (("layers", "attn", "q"), 1),  # [L, D, N, H]
    "k": (("layers", "attn", "k"), 1),  # [L, D, K, H]
    "v": (("layers", "attn", "v"), 1),  # [L, D, K, H]
    "o": (("layers", "attn", "o"), 2),  # [L, N, H, D]
    "gate": (("layers", "mlp", "gate"), 1),  # [L, D, F]
    "up": (("layers", "mlp", "up"), 1),  # [L, D, F]
    "down": (("layers", "mlp", "down"), 1),  # [L, F, D]
}
RANK_AXIS = "lora_rank"  # the logical axis of r: not in sharding.LOGICAL_RULES, so replicated
INIT_SALT = 0x10A  # Trainer.init_state draws the adapters from fold_in(state rng, INIT_SALT)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """`rank` r, `alpha` (the update is scaled by alpha / r, as in the paper and PEFT) and the projections
  adapted (keys of `TARGETS`)."""

  rank: int
  alpha: float = 16.0
  targets: tuple[str, ...] = tuple(TARGETS)

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    unknown = [t for t in self.targets if t not in TARGETS]
    if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
      raise ValueError(f"LoRA targets {self.targets!r} must be distinct names from {list(TARGETS)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _flat(tree) -> dict:
  return dict(nnx.to_flat_state(tree))


def targets_of(tree, cfg: LoRAConfig) -> nnx.State:
  """The adapted projections' part of `tree`, any tree with the decoder params' structure (arrays,
  abstract arrays or shardings)."""
  flat = _flat(tree)
  return nnx.from_flat_state([(TARGETS[t][0], flat[TARGETS[t][0]]) for t in cfg.targets])


def init_adapters(base, cfg: LoRAConfig, rng) -> nnx.State:
  """Adapters for the projections `cfg.targets` of the decoder params `base`: A ~ N(0, 1/fan_in) with
  fan_in = prod(*in) (per target its own `fold_in(rng, i)` draw), B = 0, both float32. Each carries the
  logical axes of its base weight (`layers`, `*in` / `*out`) and `lora_rank`, so it shards like it."""
  flat, out = _flat(base), []
  for i, name in enumerate(cfg.targets):
    path, n_in = TARGETS[name]
    w = flat[path]
    shape, axes = w.get_value().shape, w.get_metadata()["axes"]
    lead, ins, outs = shape[:1], shape[1:1 + n_in], shape[1 + n_in:]
    a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, *ins, cfg.rank), jnp.float32)
    out.append((path + ("lora_a",), nnx.Param(a / math.sqrt(math.prod(ins)),
                                              axes=(*axes[:1 + n_in], RANK_AXIS))))
    out.append((path + ("lora_b",), nnx.Param(jnp.zeros((*lead, cfg.rank, *outs), jnp.float32),
                                              axes=(axes[0], RANK_AXIS, *axes[1 + n_in:]))))
  return nnx.from_flat_state(out)


def delta(a_LxIxR, b_LxRxO):
  """`A B` per layer: A `[L, *in, r]`, B `[L, r, *out]` -> `[L, *in, *out]` float32, as one batched 2-D
  matmul at full float32 precision (TPUs default to bfloat16 passes for float32 matmuls)."""
  l, r = a_LxIxR.shape[0], a_LxIxR.shape[-1]
  ins, outs = a_LxIxR.shape[1:-1], b_LxRxO.shape[2:]
  d = jnp.matmul(a_LxIxR.reshape(l, -1, r).astype(jnp.float32),
                 b_LxRxO.reshape(l, r, -1).astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  return d.reshape(l, *ins, *outs)


def merged_targets(base, adapters, scale: float) -> nnx.State:
  """The adapted weights `W + scale · A B` (in W's dtype) of every projection `adapters` holds: the
  `targets_of` part of the merged params."""
  flat_w, flat_a = _flat(base), _flat(adapters)
  out = []
  for path in sorted({p[:-1] for p in flat_a}):
    w = flat_w[path]
    d = delta(flat_a[path + ("lora_a",)].get_value(), flat_a[path + ("lora_b",)].get_value())
    merged = w.get_value().astype(jnp.float32) + scale * d
    out.append((path, w.replace(merged.astype(w.get_value().dtype))))
  return nnx.from_flat_state(out)


def replace(base, part) -> nnx.State:
  """`base` with the leaves of `part` (a subtree at the same paths) swapped in; the rest is shared."""
  flat = _flat(base)
  flat.update(_flat(part))
  return nnx.from_flat_state(list(flat.items()))


def merge(base, adapters, scale: float) -> nnx.State:
  """The decoder's params with the adapters merged in: `base` with `W + scale · A B` at each adapted
  projection. Differentiable in `adapters`; with B = 0 it returns the base values exactly."""
  return replace(base, merged_targets(base, adapters, scale))


def num_params(tree) -> int:
  """The number of scalars in a tree of arrays (or abstract arrays)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
