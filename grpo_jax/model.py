"""A decoder-only transformer covering the Llama, Qwen2 and Qwen3 families (Flax NNX).

One `ModelConfig` describes all three: RMSNorm, rotary embeddings (with Llama-3 frequency scaling),
grouped-query attention with any head_dim, a SwiGLU MLP, Qwen2's q/k/v biases, Qwen3's per-head q/k
RMSNorm, and tied or untied embeddings. Parameter layouts keep the head axis explicit
(q kernel `[D, N, H]`) so that each parameter carries logical axis names (`axes=` metadata) that
`grpo_jax.sharding` maps onto the mesh.

Shapes: B batch, L tokens in this call, S cache slots, D hidden, N query heads, K key/value heads,
H head_dim, F MLP width, V vocab.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx


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
  remat: bool = False  # rematerialize each block in the backward pass (saves activation memory)

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("dtype", "param_dtype"):
      jnp.dtype(getattr(self, name))  # raises a TypeError naming an unknown dtype

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
  """Static-size key/value cache. Slot s of row b holds a real token iff mask[b, s]."""

  k: jax.Array  # [layers, B, S, K, H]
  v: jax.Array  # [layers, B, S, K, H]
  mask: jax.Array  # [B, S] bool
  index: jax.Array  # int32 scalar: the next slot to write

  @classmethod
  def init(cls, config: ModelConfig, batch: int, size: int) -> "KVCache":
    shape = (config.num_layers, batch, size, config.num_kv_heads, config.head_dim)
    return cls(k=jnp.zeros(shape, config.dtype), v=jnp.zeros(shape, config.dtype),
               mask=jnp.zeros((batch, size), bool), index=jnp.zeros((), jnp.int32))


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


def apply_rope(x_BxLxNxH, positions_BxL, inv_freq):
  """Rotary embedding in the Hugging Face "rotate half" convention."""
  angles = positions_BxL[..., None].astype(jnp.float32) * inv_freq  # [B, L, H/2]
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxLxNxH.dtype)


def attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxLxS):
  """Grouped-query softmax attention; scores and softmax in float32. Returns `[B, L, N, H]`."""
  b, l, n, h = q_BxLxNxH.shape
  kv = k_BxSxKxH.shape[2]
  q = q_BxLxNxH.reshape(b, l, kv, n // kv, h)
  scores = jnp.einsum("blkgh,bskh->bkgls", q, k_BxSxKxH,
                      preferred_element_type=jnp.float32) / math.sqrt(h)
  # A finite fill keeps fully-masked rows (left padding) free of NaN.
  scores = jnp.where(mask_BxLxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxH.dtype)
  out = jnp.einsum("bkgls,bskh->blkgh", probs, v_BxSxKxH)
  return out.reshape(b, l, n, h)


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

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, inv_freq, kv_cache=None):
    """Returns `([B, L, D], kv)`. With `kv_cache=(k, v, layer, index)` (k, v: `[layers, B, S, K, H]`)
    the new keys and values are written in place at `[layer, :, index:index + L]`, attention runs over
    all S slots of that layer, and kv is the updated `(k, v)`; without a cache kv is None."""
    c, dt = self.config, self.config.dtype
    x = x_BxLxD.astype(dt)
    q = jnp.einsum("bld,dnh->blnh", x, self.q[...].astype(dt))
    k = jnp.einsum("bld,dkh->blkh", x, self.k[...].astype(dt))
    v = jnp.einsum("bld,dkh->blkh", x, self.v[...].astype(dt))
    if c.qkv_bias:
      q, k, v = (q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt),
                 v + self.v_bias[...].astype(dt))
    if c.qk_norm:
      q = rms_norm(q, self.q_norm[...].astype(dt), c.rms_norm_eps)
      k = rms_norm(k, self.k_norm[...].astype(dt), c.rms_norm_eps)
    q = apply_rope(q, positions_BxL, inv_freq)
    k = apply_rope(k, positions_BxL, inv_freq)
    kv = None
    if kv_cache is not None:
      k_all, v_all, layer, index = kv_cache
      start = (layer, 0, index, 0, 0)
      k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
      v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
      k, v, kv = k_all[layer], v_all[layer], (k_all, v_all)
    out = attention(q, k.astype(dt), v.astype(dt), mask_BxLxS)
    return jnp.einsum("blnh,nhd->bld", out, self.o[...].astype(dt)), kv


class MLP(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c, pd = config, config.param_dtype
    self.config = config
    self.gate = _param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)
    self.up = _param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)
    self.down = _param(rngs, (c.intermediate_size, c.hidden_size), ("mlp", "embed"), pd)

  def __call__(self, x_BxLxD):
    dt = self.config.dtype
    x = x_BxLxD.astype(dt)
    h = jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))
    return h @ self.down[...].astype(dt)


class Block(nnx.Module):

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    pd = config.param_dtype
    self.config = config
    self.attn_norm = _ones((config.hidden_size,), ("embed",), pd)
    self.attn = Attention(config, rngs)
    self.mlp_norm = _ones((config.hidden_size,), ("embed",), pd)
    self.mlp = MLP(config, rngs)

  def __call__(self, x, positions, mask, inv_freq, kv_cache=None):
    eps = self.config.rms_norm_eps
    h, kv = self.attn(rms_norm(x, self.attn_norm[...], eps), positions, mask, inv_freq, kv_cache)
    x = x + h.astype(x.dtype)
    x = x + self.mlp(rms_norm(x, self.mlp_norm[...], eps)).astype(x.dtype)
    return x, kv


class Decoder(nnx.Module):
  """The policy / reference model: tokens `[B, L]` -> logits `[B, L, V]` (float32)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    pd = config.param_dtype
    self.config = config
    # std 1/sqrt(D): with tied embeddings the initial logits then have unit scale.
    self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd,
                        scale=1.0 / math.sqrt(config.hidden_size))
    self.layers = nnx.List([Block(config, rngs) for _ in range(config.num_layers)])
    self.final_norm = _ones((config.hidden_size,), ("embed",), pd)
    if not config.tie_embeddings:
      self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), pd)

  def __call__(self, tokens_BxL, positions_BxL=None, mask_BxL=None, cache: KVCache | None = None,
               *, return_hidden: bool = False):
    """Causal forward pass.

    Args:
      tokens_BxL: int token ids.
      positions_BxL: rotary positions; default 0..L-1. Left-padded rows pass `cumsum(mask) - 1`.
      mask_BxL: 1 on real tokens, 0 on padding (padding is never attended to); default all ones.
      cache: a `KVCache`; the L tokens are written at slots [cache.index, cache.index + L) and attend
        to every earlier valid slot.
      return_hidden: return the final normed hidden states `[B, L, D]` instead of logits (lets the
        loss compute log-probs in chunks without a full `[B, L, V]` array).

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
    inv_freq = rope_frequencies(c)
    x = jnp.take(self.embed[...], tokens_BxL, axis=0).astype(c.dtype)
    kv = None if cache is None else (cache.k, cache.v)
    for i, block in enumerate(self.layers):
      kv_cache = None if kv is None else (*kv, i, cache.index)
      if c.remat and cache is None:
        x, kv = nnx.remat(lambda blk, *a: blk(*a))(block, x, positions_BxL, attn_mask, inv_freq, None)
      else:
        x, kv = block(x, positions_BxL, attn_mask, inv_freq, kv_cache)
    x = rms_norm(x, self.final_norm[...], c.rms_norm_eps)
    out = x if return_hidden else self.logits(x)
    if cache is None:
      return out
    new_cache = KVCache(k=kv[0], v=kv[1], mask=kv_mask, index=cache.index + l)
    return out, new_cache

  def logits(self, hidden_BxLxD):
    """Projects final hidden states to float32 logits `[B, L, V]`."""
    dt = self.config.dtype
    w = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
    return jnp.einsum("bld,dv->blv", hidden_BxLxD.astype(dt), w.astype(dt),
                      preferred_element_type=jnp.float32)


def init_model(config: ModelConfig, seed: int = 0) -> Decoder:
  """A randomly initialized decoder (eager; for sharded init see `sharding.init_sharded`)."""
  return Decoder(config, nnx.Rngs(params=seed))


def positions_from_mask(mask_BxL):
  """Rotary positions for left-padded rows: 0 at the first real token, 0 on padding. `[B, L]`."""
  return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=-1) - 1, 0)
