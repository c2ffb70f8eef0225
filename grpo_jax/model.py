"""A decoder-only transformer covering the Llama, Qwen2 and Qwen3 families (Flax NNX).

One `ModelConfig` describes all three: RMSNorm, rotary embeddings (with Llama-3 frequency scaling),
grouped-query attention with any head_dim, a SwiGLU MLP, Qwen2's q/k/v biases, Qwen3's per-head q/k
RMSNorm, and tied or untied embeddings. Parameter layouts keep the head axis explicit
(q kernel `[D, N, H]`) so that each parameter carries logical axis names (`axes=` metadata) that
`grpo_jax.sharding` maps onto the mesh.

The blocks are ONE stacked module: every per-layer parameter has a leading `layers` axis (`[layers, D, N,
H]` for q), created with `nnx.vmap`, and the forward pass applies them with `jax.lax.scan` — the training
forward, teacher-forced scoring, the prefill and each decode step alike — so the compiled programs and
their compile time do not grow with depth. Rematerialization (`remat`) is a `jax.checkpoint` policy
applied inside the scan body.

Shapes: B batch, L tokens in this call, S cache slots, D hidden, N query heads, K key/value heads,
G = N / K query heads per KV head, H head_dim, F MLP width, V vocab.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax import sharding as sharding_lib

# ModelConfig.remat -> what the backward pass may keep from the forward of each block (`jax.checkpoint`
# policies); everything else is recomputed. "none": no rematerialization (keep everything).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each block's input
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute elementwise ops
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # ... but not attention's
}
REMAT_CHOICES = ("none", *REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Llama / Qwen2 / Qwen3 decoder (mirrors the Hugging Face config fields)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  # Llama-3 scaling as (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
  rope_scaling: tuple[float, float, float, int] | None = None
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2
  qk_norm: bool = False  # Qwen3
  dtype: str = "bfloat16"  # activations / matmul inputs
  param_dtype: str = "bfloat16"
  # Rematerialization policy of each block in the backward pass (a key of REMAT_POLICIES, or "none");
  # True / False are accepted as "full" / "none".
  remat: str = "none"
  # Uncached forwards (training, scoring) apply the stacked blocks with a `lax.scan`: one block in the
  # compiled program whatever the depth. False unrolls them in Python instead (bigger programs,
  # longer compiles; see docs/benchmarks.md for when that runs faster).
  scan_layers: bool = True
  # The same choice for cached forwards (prefill, decode steps). Unrolled decoding keeps one cache
  # buffer per layer and slices the weights once per generate call instead of once per step: ~25%
  # faster decoding on a CPU, a generate program that grows with depth.
  scan_decode: bool = True

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("dtype", "param_dtype"):
      jnp.dtype(getattr(self, name))  # raises a TypeError naming an unknown dtype
    if isinstance(self.remat, bool):
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    if self.remat not in REMAT_CHOICES:
      raise ValueError(f"remat={self.remat!r} is not one of {REMAT_CHOICES}")

  @classmethod
  def tiny(cls, vocab_size: int = 64, **overrides) -> "ModelConfig":
    """A few-hundred-k-parameter config for tests, notebooks and the CPU default experiment."""
    kw = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_layers=4,
              num_heads=4, num_kv_heads=2, head_dim=32, tie_embeddings=True,
              dtype="float32", param_dtype="float32")
    kw.update(overrides)
    return cls(**kw)


@flax.struct.dataclass
class KVCache:
  """Static-size, head-major key/value cache (attention reads it without a transpose). Slot s of row b
  holds a real token iff mask[b, s].

  With `scan_decode` (the default) k and v are one `[layers, B, K, S, H]` array each, carried through the
  layer scan and updated in place at the layer's index; with `scan_decode=False` they are tuples of
  per-layer `[B, K, S, H]` buffers, which the unrolled layers read and write without any slicing."""

  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  mask: jax.Array  # [B, S] bool
  index: jax.Array  # int32 scalar: the next slot to write

  @classmethod
  def init(cls, config: ModelConfig, batch: int, size: int) -> "KVCache":
    shape = (batch, config.num_kv_heads, size, config.head_dim)
    if config.scan_decode:
      zeros = lambda: jnp.zeros((config.num_layers, *shape), config.dtype)  # noqa: E731
    else:
      zeros = lambda: tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))  # noqa
    return cls(k=zeros(), v=zeros(), mask=jnp.zeros((batch, size), bool),
               index=jnp.zeros((), jnp.int32))


def _param(rngs: nnx.Rngs, shape, axes, dtype, scale: float | None = None) -> nnx.Param:
  """A normal(0, 1/sqrt(fan_in)) parameter with logical axis names as metadata."""
  fan_in = shape[0] if scale is None else None
  std = scale if scale is not None else 1.0 / math.sqrt(fan_in)
  value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, axes=axes)


def _ones(shape, axes, dtype) -> nnx.Param:
  return nnx.Param(jnp.ones(shape, dtype), axes=axes)


def _zeros(shape, axes, dtype) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, dtype), axes=axes)


def rms_norm(x, weight, eps: float):
  """RMSNorm in float32 (as Hugging Face computes it), cast back before the weight: `[..., D]`."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight * y.astype(x.dtype)


def rope_frequencies(config: ModelConfig) -> jax.Array:
  """Inverse frequencies `[H/2]`, with Llama-3 scaling (long wavelengths divided by `factor`)."""
  h = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  if config.rope_scaling is None:
    return inv_freq
  factor, low, high, original = config.rope_scaling
  wavelen = 2 * math.pi / inv_freq
  low_wavelen, high_wavelen = original / low, original / high
  smooth = (original / wavelen - low) / (high - low)
  mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_mid, mid, scaled)


def rope_tables(positions_BxL, inv_freq):
  """`(cos, sin)` `[B, L, 1, H]` float32 for `apply_rope`; computed once per forward, shared by layers."""
  angles = positions_BxL[..., None].astype(jnp.float32) * inv_freq  # [B, L, H/2]
  angles = jnp.concatenate([angles, angles], -1)[:, :, None, :]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BxLxNxH, rope):
  """Rotary embedding in the Hugging Face "rotate half" convention; `rope` from `rope_tables`."""
  cos, sin = rope
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxLxNxH.dtype)


def attention(q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, mask_BxLxS):
  """Grouped-query softmax attention over head-major keys and values; scores and softmax in float32.
  Returns `[B, L, N, H]`.

  The G query heads of a KV head are folded into the query axis (`[B, K, G·L, H]`), so both products
  are plain batched matmuls over (B, K) — on XLA:CPU this layout needs fewer transposes, forward and
  backward, than contracting a 5-D einsum."""
  b, l, n, h = q_BxLxNxH.shape
  kv, s = k_BxKxSxH.shape[1], k_BxKxSxH.shape[2]
  g = n // kv
  q = q_BxLxNxH.reshape(b, l, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * l, h)
  scores = jnp.einsum("bkqh,bksh->bkqs", q, k_BxKxSxH,
                      preferred_element_type=jnp.float32) / math.sqrt(h)
  scores = scores.reshape(b, kv, g, l, s)
  # A finite fill keeps fully-masked rows (left padding) free of NaN.
  scores = jnp.where(mask_BxLxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxKxSxH.dtype).reshape(b, kv, g * l, s)
  out = jnp.einsum("bkqs,bksh->bkqh", probs, v_BxKxSxH)
  return out.reshape(b, kv, g, l, h).transpose(0, 3, 1, 2, 4).reshape(b, l, n, h)


def dense(x_BxLxI, w, n_in: int = 1):
  """`x @ w` over the last `n_in` axes of x and the first `n_in` of w, as ONE 2-D matmul
  `[B·L, I] @ [I, O]` (reshapes of contiguous arrays are free). Returns `[B, L, *w.shape[n_in:]]`.

  Why 2-D: the gradient of a 3-D `einsum("bld,df->blf")` contracts two axes (b, l) for dW, which
  XLA:CPU implements by writing the `[B, L, F]` cotangent out transposed (a strided copy as large as the
  activations); the 2-D product's gradients are plain matmuls (measured: -30% MLP forward + backward)."""
  lead, inner, outer = x_BxLxI.shape[:-n_in], w.shape[:n_in], w.shape[n_in:]
  y = x_BxLxI.reshape(-1, math.prod(inner)) @ w.reshape(math.prod(inner), math.prod(outer))
  return y.reshape(*lead, *outer)


class Attention(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c, pd = config, config.param_dtype
    self.config = config
    self.q = _param(rngs, (c.hidden_size, c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), pd)
    self.k = _param(rngs, (c.hidden_size, c.num_kv_heads, c.head_dim),
                    ("embed", "kv_heads", "head_dim"), pd)
    self.v = _param(rngs, (c.hidden_size, c.num_kv_heads, c.head_dim),
                    ("embed", "kv_heads", "head_dim"), pd)
    self.o = _param(rngs, (c.num_heads, c.head_dim, c.hidden_size), ("heads", "head_dim", "embed"),
                    pd, scale=1.0 / math.sqrt(c.num_heads * c.head_dim))
    if c.qkv_bias:
      self.q_bias = _zeros((c.num_heads, c.head_dim), ("heads", "head_dim"), pd)
      self.k_bias = _zeros((c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), pd)
      self.v_bias = _zeros((c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), pd)
    if c.qk_norm:
      self.q_norm = _ones((c.head_dim,), ("head_dim",), pd)
      self.k_norm = _ones((c.head_dim,), ("head_dim",), pd)

  def __call__(self, x_BxLxD, rope, mask_BxLxS, kv_cache=None):
    """Returns `([B, L, D], kv)`. With `kv_cache=(k, v, index, layer)` the new keys and values are
    written in place at slots `[index, index + L)` — of this layer's own `[B, K, S, H]` buffers when
    `layer` is None, else of slice `layer` of stacked `[layers, B, K, S, H]` ones — attention runs over
    all S slots, and kv is the updated `(k, v)`; without a cache kv is None."""
    c, dt = self.config, self.config.dtype
    x = x_BxLxD.astype(dt)
    q = dense(x, self.q[...].astype(dt))  # [B, L, N, H]
    k = dense(x, self.k[...].astype(dt))  # [B, L, K, H]
    v = dense(x, self.v[...].astype(dt))
    if c.qkv_bias:
      q, k, v = (q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt),
                 v + self.v_bias[...].astype(dt))
    if c.qk_norm:
      q = rms_norm(q, self.q_norm[...].astype(dt), c.rms_norm_eps)
      k = rms_norm(k, self.k_norm[...].astype(dt), c.rms_norm_eps)
    q = apply_rope(q, rope)
    k = apply_rope(k, rope).transpose(0, 2, 1, 3)  # [B, K, L, H]: only the new tokens move
    v = v.transpose(0, 2, 1, 3)
    kv = None
    if kv_cache is not None:
      k_cache, v_cache, index, layer = kv_cache
      if layer is None:
        k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, 0, index, 0))
        v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
        kv = (k, v)
      else:
        start = (layer, 0, 0, index, 0)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k[None].astype(k_cache.dtype), start)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v[None].astype(v_cache.dtype), start)
        k = jax.lax.dynamic_index_in_dim(k_cache, layer, keepdims=False)
        v = jax.lax.dynamic_index_in_dim(v_cache, layer, keepdims=False)
        kv = (k_cache, v_cache)
    out = attention(q, k.astype(dt), v.astype(dt), mask_BxLxS)
    return dense(out, self.o[...].astype(dt), n_in=2), kv


class MLP(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c, pd = config, config.param_dtype
    self.config = config
    self.gate = _param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)
    self.up = _param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)
    self.down = _param(rngs, (c.intermediate_size, c.hidden_size), ("mlp", "embed"), pd)

  def __call__(self, x_BxLxD):
    dt = self.config.dtype
    b, l, d = x_BxLxD.shape
    y = swiglu(x_BxLxD.astype(dt).reshape(b * l, d), self.gate[...].astype(dt),
               self.up[...].astype(dt), self.down[...].astype(dt))
    return y.reshape(b, l, d)


@jax.custom_vjp
def swiglu(x_TxD, gate_DxF, up_DxF, down_FxD):
  """The SwiGLU MLP `(silu(x Wg) * (x Wu)) Wd` on `[T, D]` rows (2-D matmuls, see `dense`).

  Its backward keeps only the two `[T, F]` matmul outputs and recomputes silu and their product, which
  autodiff would store: two fewer `[T, F]` arrays per layer held for the backward pass."""
  return (jax.nn.silu(x_TxD @ gate_DxF) * (x_TxD @ up_DxF)) @ down_FxD


def _swiglu_fwd(x, wg, wu, wd):
  g, u = x @ wg, x @ wu
  return (jax.nn.silu(g) * u) @ wd, (x, wg, wu, wd, g, u)


def _swiglu_bwd(res, dy_TxD):
  x, wg, wu, wd, g, u = res
  sig = jax.nn.sigmoid(g)
  silu = g * sig
  dh = dy_TxD @ wd.T
  du = dh * silu
  dg = dh * u * (sig * (1 + g * (1 - sig)))  # d silu(g) / dg = sigma(g) (1 + g (1 - sigma(g)))
  dx = dg @ wg.T + du @ wu.T
  return dx, x.T @ dg, x.T @ du, (silu * u).T @ dy_TxD


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class Block(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    pd = config.param_dtype
    self.config = config
    self.attn_norm = _ones((config.hidden_size,), ("embed",), pd)
    self.attn = Attention(config, rngs)
    self.mlp_norm = _ones((config.hidden_size,), ("embed",), pd)
    self.mlp = MLP(config, rngs)

  def __call__(self, x, rope, mask, kv_cache=None):
    eps = self.config.rms_norm_eps
    h, kv = self.attn(rms_norm(x, self.attn_norm[...], eps), rope, mask, kv_cache)
    x = x + h.astype(x.dtype)
    x = x + self.mlp(rms_norm(x, self.mlp_norm[...], eps)).astype(x.dtype)
    return x, kv


def stacked_blocks(config: ModelConfig, rngs: nnx.Rngs) -> Block:
  """`num_layers` independently initialized blocks as one `Block` whose parameters have a leading
  `layers` axis (also prepended to their logical `axes`)."""

  @nnx.split_rngs(splits=config.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=config.num_layers)
  def make(rngs):
    return Block(config, rngs)

  blocks = make(rngs)
  for _, var in nnx.iter_graph(blocks):
    if isinstance(var, nnx.Param):
      var.set_metadata(axes=("layers", *var.get_metadata()["axes"]))
  return blocks


class Decoder(nnx.Module):
  """The policy / reference model: tokens `[B, L]` -> logits `[B, L, V]` (float32)."""

  # A static attribute (kept in the graphdef) set by `bind_mesh`: the forward pass then constrains its
  # activations to be sharded over the mesh's batch axes.
  activation_mesh: jax.sharding.Mesh | None = None

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    pd = config.param_dtype
    self.config = config
    # std 1/sqrt(D): with tied embeddings the initial logits then have unit scale.
    self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd,
                        scale=1.0 / math.sqrt(config.hidden_size))
    self.layers = stacked_blocks(config, rngs)
    self.final_norm = _ones((config.hidden_size,), ("embed",), pd)
    if not config.tie_embeddings:
      self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), pd)

  def __call__(self, tokens_BxL, positions_BxL=None, mask_BxL=None, cache: KVCache | None = None,
               *, return_hidden: bool = False, layers: list[Block] | None = None):
    """Causal forward pass.

    Args:
      tokens_BxL: int token ids.
      positions_BxL: rotary positions; default 0..L-1. Left-padded rows pass `cumsum(mask) - 1`.
      mask_BxL: 1 on real tokens, 0 on padding (padding is never attended to); default all ones.
      cache: a `KVCache`; the L tokens are written at slots [cache.index, cache.index + L) and attend
        to every earlier valid slot.
      return_hidden: return the final normed hidden states `[B, L, D]` instead of logits (lets the
        loss compute log-probs in chunks without a full `[B, L, V]` array).
      layers: with a cache and `scan_decode=False`, `self.unstacked()` computed once outside a decode
        loop, so that the per-layer weights are not sliced out of the stacked arrays at every step.

    Returns:
      logits `[B, L, V]` float32 (or hidden states) without a cache; `(logits, new_cache)` with one.
    """
    c = self.config
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if mask_BxL is None:
      mask_BxL = jnp.ones((b, l), bool)
    mask_BxL = mask_BxL.astype(bool)
    if cache is None:
      causal = jnp.tril(jnp.ones((l, l), bool))
      attn_mask = causal[None] & mask_BxL[:, None, :]
    else:
      kv_mask = jax.lax.dynamic_update_slice(cache.mask, mask_BxL, (0, cache.index))
      q_slot = cache.index + jnp.arange(l)
      k_slot = jnp.arange(cache.mask.shape[1])
      attn_mask = (k_slot[None, :] <= q_slot[:, None])[None] & kv_mask[:, None, :]
    rope = rope_tables(positions_BxL, rope_frequencies(c))
    x = jnp.take(self.embed[...], tokens_BxL, axis=0).astype(c.dtype)
    # Rows over the batch axes: left alone, XLA may keep the activations sharded like the FSDP-sharded
    # embedding (over D), trading one all-gather of weights per layer for collectives on every norm.
    x = sharding_lib.constrain_rows(x, self.activation_mesh)
    if cache is None:
      x = self._uncached_blocks(x, rope, attn_mask)
    elif c.scan_decode:
      x, k, v = self._scanned_cached_blocks(x, rope, attn_mask, cache)
    else:
      x, k, v = self._unrolled_cached_blocks(x, rope, attn_mask, cache, layers or self.unstacked())
    x = rms_norm(x, self.final_norm[...], c.rms_norm_eps)
    out = x if return_hidden else self.logits(x)
    if cache is None:
      return out
    return out, KVCache(k=k, v=v, mask=kv_mask, index=cache.index + l)

  def _uncached_blocks(self, x_BxLxD, rope, attn_mask):
    """The uncached forward (training, scoring): a `lax.scan` over the stacked blocks, each layer's
    parameters its scanned input, so the program holds one block whatever the depth (or, with
    `scan_layers=False`, the blocks unrolled)."""
    c = self.config
    apply = lambda block, x: block(x, rope, attn_mask)[0]  # noqa: E731
    if c.remat != "none":
      apply = jax.checkpoint(apply, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    if not c.scan_layers:
      for block in self.unstacked():
        x_BxLxD = apply(block, x_BxLxD)
      return x_BxLxD
    graphdef, stacked = nnx.split(self.layers)
    body = lambda x, params: (apply(nnx.merge(graphdef, params), x), None)  # noqa: E731
    return jax.lax.scan(body, x_BxLxD, stacked)[0]

  def unstacked(self) -> list[Block]:
    """The blocks as `num_layers` separate modules, their weights sliced out of the stacked arrays."""
    graphdef, stacked = nnx.split(self.layers)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
            for i in range(self.config.num_layers)]

  def _scanned_cached_blocks(self, x_BxLxD, rope, attn_mask, cache: KVCache):
    """The cached forward (prefill, decode steps) as a layer scan over stacked `[layers, ...]` caches."""
    graphdef, stacked = nnx.split(self.layers)

    def body(carry, inputs):
      x, k, v = carry
      params, layer = inputs
      x, (k, v) = nnx.merge(graphdef, params)(x, rope, attn_mask, (k, v, cache.index, layer))
      return (x, k, v), None

    layer_ids = jnp.arange(self.config.num_layers, dtype=jnp.int32)
    return jax.lax.scan(body, (x_BxLxD, cache.k, cache.v), (stacked, layer_ids))[0]

  def _unrolled_cached_blocks(self, x_BxLxD, rope, attn_mask, cache: KVCache, layers: list[Block]):
    """The cached forward with the layers unrolled, each writing its own cache buffer in place: on a
    CPU the scan's per-step slices of every layer's weights and cache cost more than the decode step's
    attention (docs/benchmarks.md)."""
    k, v = list(cache.k), list(cache.v)
    for i, block in enumerate(layers):
      x_BxLxD, (k[i], v[i]) = block(x_BxLxD, rope, attn_mask, (k[i], v[i], cache.index, None))
    return x_BxLxD, tuple(k), tuple(v)

  def logits(self, hidden_BxLxD):
    """Projects final hidden states to float32 logits `[B, L, V]`."""
    dt = self.config.dtype
    w = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
    b, l, d = hidden_BxLxD.shape
    logits = jnp.dot(hidden_BxLxD.astype(dt).reshape(b * l, d), w.astype(dt),
                     preferred_element_type=jnp.float32)
    return logits.reshape(b, l, -1)


def bind_mesh(graphdef, state, mesh: jax.sharding.Mesh):
  """The graphdef of the same decoder with `activation_mesh = mesh` (see `Decoder`); `state` is its
  params (arrays, abstract arrays or shardings: only the structure is used)."""
  model = nnx.merge(graphdef, state)
  model.activation_mesh = mesh
  return nnx.split(model)[0]


def init_model(config: ModelConfig, seed: int = 0) -> Decoder:
  """A randomly initialized decoder (eager; for sharded init see `sharding.init_sharded`)."""
  return Decoder(config, nnx.Rngs(params=seed))


def positions_from_mask(mask_BxL):
  """Rotary positions for left-padded rows: 0 at the first real token, 0 on padding. `[B, L]`."""
  return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=-1) - 1, 0)
