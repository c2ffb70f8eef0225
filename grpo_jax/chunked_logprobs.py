"""Token log-probs and entropies from hidden states, C positions at a time: no `[N, T, V]` float32 array.

The LM head's logits are the largest activation of GRPO scoring and of the loss: N·T·V float32 values
(N = 256 completions of T = 1024 tokens over a 152k vocabulary is 160 GB), plus the softmax the backward
pass keeps. `chunked_logprobs` projects C positions at a time inside a `lax.map` (a scan) and reduces each
chunk to its `[N, C]` log-probs and entropies at once, so the forward holds one `[N, C, V]` block. The chunk
body is `jax.checkpoint`ed: the backward pass saves only the chunk's hidden states (already alive) and
recomputes its logits, one block at a time, instead of keeping every block's logits and softmax.
Chunks run over completion positions, not over rows, so the row (batch) sharding is kept inside the scan.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def chunk_logprobs_and_entropy(logits_NxCxV: jax.Array, tokens_NxC: jax.Array, temperature: float = 1.0,
                               entropy_grad: bool = False):
  """`(log softmax(z)[token], H(softmax(z)))` with z = logits / temperature, [N, C, V] -> two [N, C] float32.

  The same quantities and formulas as `losses.token_logprobs` and `losses.token_entropy` (vocabulary
  entries at −inf have p = 0 and contribute 0 to the entropy). With `entropy_grad=False` the entropy is a metric: it is computed
  from stop-gradient logits, so the backward pass does no work for it.
  """
  z = logits_NxCxV.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  picked = jnp.take_along_axis(z, tokens_NxC[..., None].astype(jnp.int32), axis=-1)[..., 0]
  # −Σ p·log p on log p = z − lse (not lse − Σ p·z, which cancels to float error when H is small).
  logp_all = z - lse[..., None]
  if not entropy_grad:
    logp_all = jax.lax.stop_gradient(logp_all)
  p = jnp.exp(logp_all)
  entropy = -jnp.sum(jnp.where(p > 0, p * logp_all, 0.0), axis=-1)
  return picked - lse, entropy


def chunked_logprobs(head_fn: Callable[[jax.Array], jax.Array], hidden_NxTxD: jax.Array,
                     tokens_NxT: jax.Array, temperature: float = 1.0, chunk: int = 128,
                     entropy_grad: bool = False):
  """Log-probs and entropies `[N, T]` float32 of `tokens_NxT` under logits `head_fn(hidden)`, C = `chunk`
  positions at a time (T is padded up to a multiple of C; the padding is dropped).

  Args:
    head_fn: hidden `[N, C, D]` -> logits `[N, C, V]` (e.g. `Decoder.logits`); it may close over the
      (traced) head weights: their gradient accumulates over the chunks.
    hidden_NxTxD: the final hidden states at the positions that predict `tokens_NxT`.
    chunk: C ≥ 1. Peak logits memory is N·C·V floats instead of N·T·V.
    entropy_grad: differentiate the entropy too (an entropy bonus); else it is a stop-gradient metric.
  """
  if not (isinstance(chunk, int) and chunk >= 1):
    raise ValueError(f"chunked_logprobs: chunk must be an int >= 1, got chunk={chunk!r}")
  n, t, d = hidden_NxTxD.shape
  c = min(chunk, t)
  num = -(-t // c)
  pad = num * c - t
  if pad:
    hidden_NxTxD = jnp.pad(hidden_NxTxD, ((0, 0), (0, pad), (0, 0)))
    tokens_NxT = jnp.pad(tokens_NxT, ((0, 0), (0, pad)))
  hidden_KxNxCxD = jnp.swapaxes(hidden_NxTxD.reshape(n, num, c, d), 0, 1)
  tokens_KxNxC = jnp.swapaxes(tokens_NxT.reshape(n, num, c), 0, 1)

  @jax.checkpoint
  def one_chunk(args):
    h_NxCxD, tok_NxC = args
    return chunk_logprobs_and_entropy(head_fn(h_NxCxD), tok_NxC, temperature, entropy_grad)

  logp_KxNxC, entropy_KxNxC = jax.lax.map(one_chunk, (hidden_KxNxCxD, tokens_KxNxC))
  unchunk = lambda x: jnp.swapaxes(x, 0, 1).reshape(n, num * c)[:, :t]  # noqa: E731
  return unchunk(logp_KxNxC), unchunk(entropy_KxNxC)
