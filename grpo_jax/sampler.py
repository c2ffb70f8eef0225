"""Autoregressive sampling for GRPO rollouts: a jitted prefill plus a `lax.while_loop` decode over a KV cache.

`make_generate_fn` builds the pure function `(params, prompt_tokens, prompt_mask, rng) -> SampleOutput`;
`jit_generate` jits it once with explicit shardings (batch over the mesh data axes, params in their
training layout); `generate` is the eager convenience wrapper with a per-configuration compile cache.

Shapes: B sequences (in GRPO, B = prompts · G), P prompt length (left-padded to a bucket), T =
max_new_tokens, V vocabulary, S = P + T - 1 cache slots. All shapes are static: one compile per
(graphdef, sampling arguments, B, P), reused for every new value of the params.

Randomness: row b draws token t with the key `fold_in(row_key_b, t)`, where the row keys are
`fold_in(rng, b)` for a single `rng`, or are given directly as a `[B]` key array. A row's samples
therefore depend only on its own prompt and key — not on the batch size, on the other rows, on the prompt
bucket or on how the batch is sharded.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grpo_jax import sharding as sharding_lib
from grpo_jax import model as model_lib
from grpo_jax.model import Decoder, KVCache, positions_from_mask

LOGPROBS_MODES = ("full", "truncated")


# ----------------------------------------------------------------------------------------------------------
# Sampling filters: [B, V] logits -> [B, V] logits with the removed entries at -inf (probability exactly 0).


@dataclasses.dataclass(frozen=True)
class Temperature:
  """Divides the logits by `t` > 0 (t < 1 sharpens, t > 1 flattens)."""

  t: float

  def __call__(self, logits_BxV):
    return logits_BxV / self.t


def _ordered_bits(x):
  """float32 -> uint32 keys in the same order as the floats (-inf lowest), for bisection on values."""
  x = x.astype(jnp.float32)
  x = jnp.where(x == 0, 0.0, x)  # -0.0 == 0.0 must get one key
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _largest_threshold(keys_BxV, holds):
  """Per row, the largest key t with `holds(keys_BxV >= t)` true, for a `holds` that is monotone
  (true for small t) and true at the row minimum: exact bisection over the 2^32 keys in 32 steps of
  O(V) each. Replaces a sort (slow on CPU, and O(V log V) everywhere)."""

  def step(_, bounds):
    lo_B, hi_B = bounds
    gap_B = hi_B - lo_B
    mid_B = lo_B + (gap_B >> 1) + (gap_B & 1)  # ceil((lo + hi) / 2) without overflow
    ok_B = holds(keys_BxV >= mid_B[:, None])
    return jnp.where(ok_B, mid_B, lo_B), jnp.where(ok_B, hi_B, mid_B - 1)

  lo_B, _ = jax.lax.fori_loop(0, 32, step, (keys_BxV.min(-1), keys_BxV.max(-1)), unroll=4)
  return lo_B[:, None]


@dataclasses.dataclass(frozen=True)
class TopK:
  """Keeps the `k` largest logits of each row; ties with the k-th are kept (as HF's TopKLogitsWarper)."""

  k: int

  def __call__(self, logits_BxV):
    if self.k <= 0 or self.k >= logits_BxV.shape[-1]:
      return logits_BxV
    keys_BxV = _ordered_bits(logits_BxV)
    kth_Bx1 = _largest_threshold(keys_BxV, lambda kept_BxV: kept_BxV.sum(-1) >= self.k)
    return jnp.where(keys_BxV >= kth_Bx1, logits_BxV, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling (Holtzman et al. 2020): keeps the smallest set of most likely tokens whose
  probability (renormalized over the finite logits) reaches `p`; the token that crosses `p` is kept,
  and so are its ties."""

  p: float

  def __call__(self, logits_BxV):
    if self.p >= 1.0:
      return logits_BxV
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    keys_BxV = _ordered_bits(logits_BxV)
    # The cutoff is the largest logit whose tokens at or above it carry mass >= p.
    cutoff_Bx1 = _largest_threshold(
        keys_BxV, lambda kept_BxV: jnp.where(kept_BxV, probs_BxV, 0.0).sum(-1) >= self.p)
    return jnp.where(keys_BxV >= cutoff_Bx1, logits_BxV, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class MinP:
  """Min-p sampling (Nguyen et al. 2024): keeps tokens with p_i ≥ min_p · max_j p_j, i.e. logits within
  log(min_p) of the row maximum."""

  min_p: float

  def __call__(self, logits_BxV):
    if self.min_p <= 0.0:
      return logits_BxV
    cutoff_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True) + np.log(self.min_p)
    return jnp.where(logits_BxV >= cutoff_Bx1, logits_BxV, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is drawn. Filters apply in Hugging Face's order: temperature, top-k, top-p (on the
  top-k renormalized distribution), min-p. `temperature=0` is greedy (argmax of the raw logits)."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got temperature={self.temperature!r}")
    if int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"top_k must be an int >= 0 (0 = off), got top_k={self.top_k!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got top_p={self.top_p!r}")
    if not 0.0 <= self.min_p <= 1.0:
      raise ValueError(f"min_p must be in [0, 1] (0 = off), got min_p={self.min_p!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  @property
  def filters(self) -> tuple:
    out = [] if self.temperature == 1.0 else [Temperature(self.temperature)]
    if self.top_k > 0:
      out.append(TopK(self.top_k))
    if self.top_p < 1.0:
      out.append(TopP(self.top_p))
    if self.min_p > 0.0:
      out.append(MinP(self.min_p))
    return tuple(out)

  def filter_logits(self, logits_BxV):
    """Logits of the sampling distribution (float32, -inf where filtered out). Not for greedy."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    for f in self.filters:
      logits_BxV = f(logits_BxV)
    return logits_BxV

  def sample(self, logits_BxV, keys_B):
    """Next tokens `[B]` int32, row b drawn with `keys_B[b]` (a `[B]` typed key array)."""
    if self.greedy:
      return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    filtered_BxV = self.filter_logits(logits_BxV)
    return jax.vmap(jax.random.categorical)(keys_B, filtered_BxV).astype(jnp.int32)

  def logprobs(self, logits_BxV, tokens_B, mode: str = "full"):
    """Log-probabilities `[B]` float32 of `tokens_B`; see `generate` for the two modes."""
    picked = lambda x_BxV: jnp.take_along_axis(x_BxV, tokens_B[:, None], axis=-1)[:, 0]
    logits_BxV = logits_BxV.astype(jnp.float32)
    if mode == "full":
      # The formula of `losses.token_logprobs`, so the trainer's re-score reproduces it to float error.
      scaled_BxV = logits_BxV / (self.temperature or 1.0)
      return picked(scaled_BxV) - jax.nn.logsumexp(scaled_BxV, axis=-1)
    if self.greedy:  # the greedy policy is a point mass
      return jnp.zeros(tokens_B.shape, jnp.float32)
    filtered_BxV = self.filter_logits(logits_BxV)
    return picked(filtered_BxV) - jax.nn.logsumexp(filtered_BxV, axis=-1)


# ----------------------------------------------------------------------------------------------------------
# Prompt layout helpers (host side, before the jitted call).


def repeat_for_group(prompt_tokens, prompt_mask, group_size: int):
  """Repeats each prompt G times consecutively: `[B, P]` -> `[B·G, P]`, rows b·G … b·G+G−1 are prompt b
  (so `rewards.reshape(B, G)` lines up with the groups). numpy in, numpy out (stays on the host)."""
  xp = np if isinstance(prompt_tokens, np.ndarray) else jnp
  return xp.repeat(prompt_tokens, group_size, axis=0), xp.repeat(prompt_mask, group_size, axis=0)


def pad_to_bucket(tokens, mask, buckets: Sequence[int], pad_id: int = 0):
  """Left-pads a left-padded batch `[B, L]` to the smallest bucket ≥ L (numpy, host side), so the jitted
  sampler compiles once per bucket instead of once per prompt length. Returns `(tokens, mask)` `[B, P]`."""
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  length = tokens.shape[1]
  fitting = sorted(b for b in buckets if b >= length)
  if not fitting:
    raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)}; "
                     "raise the bucket sizes or truncate the prompts")
  extra = fitting[0] - length
  tokens = np.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id)
  mask = np.pad(mask, ((0, 0), (extra, 0)), constant_values=0)
  return tokens.astype(np.int32), mask.astype(np.int32)


def left_pad(sequences: Sequence[Sequence[int]], buckets: Sequence[int] | None = None, pad_id: int = 0):
  """Token-id lists -> left-padded `(tokens, mask)` int32 `[B, P]`, P the longest (or its bucket)."""
  length = max(len(s) for s in sequences)
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for i, s in enumerate(sequences):
    if len(s):
      tokens[i, length - len(s):], mask[i, length - len(s):] = s, 1
  return pad_to_bucket(tokens, mask, buckets, pad_id) if buckets else (tokens, mask)


# ----------------------------------------------------------------------------------------------------------
# The sampler.


@flax.struct.dataclass
class SampleOutput:
  tokens: jax.Array  # [B, T] int32; pad_id after EOS
  logprobs: jax.Array  # [B, T] float32; 0 after EOS
  mask: jax.Array  # [B, T] int32; 1 up to and including EOS
  lengths: jax.Array  # [B] int32; completion lengths (= mask.sum(-1))
  truncated: jax.Array  # [B] bool; no EOS within T tokens
  num_steps: jax.Array  # int32 []; columns actually sampled (< T when every row stopped early)


@flax.struct.dataclass
class _DecodeState:
  step: jax.Array  # int32 []: the column sampled next
  last_B: jax.Array  # int32 [B]: the token fed next (last prompt token, then the latest sample)
  tokens_BxT: jax.Array  # int32
  logprobs_BxT: jax.Array  # float32
  done_B: jax.Array  # bool: EOS emitted
  lengths_B: jax.Array  # int32
  cache: KVCache


def _row_keys(rng, batch: int):
  """A `[B]` typed key array from one key (`fold_in(rng, b)`) or from `[B]` keys (legacy uint32 ok)."""
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if rng.shape == ():
    return jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(batch))
  if rng.shape != (batch,):
    raise ValueError(f"rng must be one key or {batch} per-row keys, got key shape {rng.shape}")
  return rng


def _cache_sharding(mesh, cache: KVCache) -> KVCache:
  spec = lambda axes, x: jax.sharding.NamedSharding(
      mesh, sharding_lib.logical_to_spec(axes, x.shape, mesh))
  kv_axes = ("batch", "kv_heads", None, "head_dim")  # [B, K, S, H]
  one = lambda x: spec(("layers", *kv_axes) if x.ndim == 5 else kv_axes, x)  # noqa: E731
  return KVCache(k=jax.tree.map(one, cache.k), v=jax.tree.map(one, cache.v),
                 mask=spec(("batch", None), cache.mask), index=spec(None, cache.index))


def make_generate_fn(graphdef, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, min_p: float = 0.0, eos_id: int | None = None, pad_id: int = 0,
                     logprobs_mode: str = "full", mesh: jax.sharding.Mesh | None = None):
  """The pure sampler `fn(params, prompt_tokens_BxP, prompt_mask_BxP, rng) -> SampleOutput` (not jitted).

  `graphdef` comes from `nnx.split(model)` and `params` is the matching state; all other arguments are
  static (see `generate`). With `mesh`, the KV cache is constrained to the batch layout of
  `sharding.batch_sharding(mesh)` (and kv heads over `tensor`); jit the result with `jit_generate`.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got max_new_tokens={max_new_tokens!r}")
  if logprobs_mode not in LOGPROBS_MODES:
    raise ValueError(f"unknown logprobs_mode={logprobs_mode!r}; expected one of {LOGPROBS_MODES}")
  sampling = SamplingParams(temperature, top_k, top_p, min_p)
  num_new = max_new_tokens

  def fn(params, prompt_tokens_BxP, prompt_mask_BxP, rng) -> SampleOutput:
    model: Decoder = nnx.merge(graphdef, params)
    b, p = prompt_tokens_BxP.shape
    row_keys_B = _row_keys(rng, b)
    prompt_mask_BxP = prompt_mask_BxP.astype(jnp.int32)
    prompt_len_B = prompt_mask_BxP.sum(axis=-1)

    # Prefill every prompt column but the last one; the loop feeds the last column (one column for
    # all rows thanks to the left padding) at step 0, so sampling is traced once, inside the loop. The
    # last sampled token is never fed back: P + T - 1 slots hold everything that is attended to.
    cache = KVCache.init(model.config, b, p + num_new - 1)
    if mesh is not None:
      cache = jax.lax.with_sharding_constraint(cache, _cache_sharding(mesh, cache))
    # Unrolled layers: their weights are sliced once, here, outside the decode loop.
    layers = None if model.config.scan_decode else model.unstacked()
    if p > 1:
      _, cache = model(prompt_tokens_BxP[:, :-1], positions_from_mask(prompt_mask_BxP)[:, :-1],
                       prompt_mask_BxP[:, :-1], cache, return_hidden=True, layers=layers)

    def cond(state: _DecodeState):
      return (state.step < num_new) & ~jnp.all(state.done_B)

    def body(state: _DecodeState) -> _DecodeState:
      positions_Bx1 = (prompt_len_B + state.step - 1)[:, None]
      logits_Bx1xV, cache = model(state.last_B[:, None], positions_Bx1, jnp.ones((b, 1), jnp.int32),
                                  state.cache, layers=layers)
      logits_BxV = logits_Bx1xV[:, 0]
      keys_B = jax.vmap(jax.random.fold_in, (0, None))(row_keys_B, state.step)
      tok_B = sampling.sample(logits_BxV, keys_B)
      logp_B = sampling.logprobs(logits_BxV, tok_B, logprobs_mode)
      tok_B = jnp.where(state.done_B, pad_id, tok_B)
      logp_B = jnp.where(state.done_B, 0.0, logp_B)
      done_B = state.done_B if eos_id is None else state.done_B | (tok_B == eos_id)
      return _DecodeState(
          step=state.step + 1, last_B=tok_B,
          tokens_BxT=jax.lax.dynamic_update_index_in_dim(state.tokens_BxT, tok_B, state.step, 1),
          logprobs_BxT=jax.lax.dynamic_update_index_in_dim(state.logprobs_BxT, logp_B, state.step, 1),
          done_B=done_B, lengths_B=state.lengths_B + (~state.done_B).astype(jnp.int32), cache=cache)

    state = _DecodeState(
        step=jnp.zeros((), jnp.int32), last_B=prompt_tokens_BxP[:, -1].astype(jnp.int32),
        tokens_BxT=jnp.full((b, num_new), pad_id, jnp.int32),
        logprobs_BxT=jnp.zeros((b, num_new), jnp.float32), done_B=jnp.zeros((b,), bool),
        lengths_B=jnp.zeros((b,), jnp.int32), cache=cache)
    state = jax.lax.while_loop(cond, body, state)
    mask_BxT = (jnp.arange(num_new)[None, :] < state.lengths_B[:, None]).astype(jnp.int32)
    return SampleOutput(tokens=state.tokens_BxT, logprobs=state.logprobs_BxT, mask=mask_BxT,
                        lengths=state.lengths_B, truncated=~state.done_B, num_steps=state.step)

  return fn


def output_shardings(mesh: jax.sharding.Mesh) -> SampleOutput:
  """`SampleOutput` of shardings: per-sequence fields over the mesh batch axes, `num_steps` replicated."""
  rows, cols = sharding_lib.batch_sharding(mesh, 1), sharding_lib.batch_sharding(mesh, 2)
  return SampleOutput(tokens=cols, logprobs=cols, mask=cols, lengths=rows, truncated=rows,
                      num_steps=sharding_lib.replicated(mesh))


def jit_generate(graphdef, mesh: jax.sharding.Mesh, params_shardings, **static):
  """`make_generate_fn(graphdef, mesh=mesh, **static)` jitted with explicit shardings: params stay in
  `params_shardings` (e.g. `sharding.param_shardings(params, mesh)`), prompts and every output row are
  split over the (`data`, `fsdp`) axes (B must be a multiple of `sharding.batch_divisor(mesh)`), and `rng`
  (one key, or `[B]` row keys) is replicated. Call it once and reuse it every step."""
  batch = sharding_lib.batch_sharding(mesh, 2)
  graphdef = model_lib.bind_mesh(graphdef, params_shardings, mesh)  # activations stay batch-sharded
  return jax.jit(make_generate_fn(graphdef, mesh=mesh, **static),
                 in_shardings=(params_shardings, batch, batch, sharding_lib.replicated(mesh)),
                 out_shardings=output_shardings(mesh))


@functools.lru_cache(maxsize=64)
def _jitted_generate(graphdef, static: tuple):
  return jax.jit(make_generate_fn(graphdef, **dict(static)))


def generate(model, prompt_tokens, prompt_mask, rng, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, eos_id: int | None = None,
             pad_id: int = 0, logprobs_mode: str = "full") -> SampleOutput:
  """Samples `max_new_tokens` (T) tokens after each left-padded prompt.

  Args:
    model: a `Decoder`, or a `(graphdef, params)` pair from `nnx.split`.
    prompt_tokens: `[B, P]` int, left-padded (pad to a bucket with `pad_to_bucket` to bound compiles).
    prompt_mask: `[B, P]`, 1 on real tokens, 0 on the left padding; every row needs ≥ 1 real token.
    rng: one PRNG key (row b uses `fold_in(rng, b)`) or a `[B]` array of row keys.
    max_new_tokens: T, the static completion length.
    temperature: softmax temperature; 0 is greedy (argmax; the filters are then irrelevant).
    top_k: keep the k most likely tokens (0: off). top_p: nucleus mass (1: off). min_p: keep tokens
      with p ≥ min_p · p_max (0: off). Applied in that order after the temperature.
    eos_id: stop token (None: always generate T tokens). pad_id: written after EOS.
    logprobs_mode: which log-probability of each sampled token to report:
      "full" (default): log softmax(logits / temperature) over the FULL vocabulary — exactly what
        `grpo_jax.losses.token_logprobs(logits, tokens, temperature)` computes when the trainer re-scores
        the completion, so the on-policy ratio π/π_old is 1 up to float error. With top-k / top-p /
        min-p the tokens are drawn from the truncated distribution q, not from this π: the GRPO ratio
        then measures the change of the full-vocabulary policy, and tokens outside q's support are
        never sampled (the common practice of TRL / verl; an exact off-policy correction would need
        π/q, which "truncated" provides).
      "truncated": log q(token), the filtered, renormalized sampling distribution actually used
        (≥ the "full" value). Use it for importance weights against the behaviour policy; it is not
        what a plain forward pass re-computes, so the on-policy ratio against "full" scores is not 1.
      With temperature 0, "full" reports log softmax(logits) (temperature 1 for scoring) and
      "truncated" reports 0 (greedy decoding is a point mass).

  Returns:
    `SampleOutput` with `tokens`, `logprobs`, `mask` `[B, T]`, `lengths`, `truncated` `[B]` and
    `num_steps`. Compiles once per (graphdef, static arguments, B, P); new params values reuse it.
  """
  if isinstance(model, Decoder):
    graphdef, params = nnx.split(model)
  else:
    graphdef, params = model
  static = dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
                top_p=float(top_p), min_p=float(min_p), eos_id=eos_id, pad_id=int(pad_id),
                logprobs_mode=logprobs_mode)
  if not np.asarray(prompt_mask)[:, -1].all():
    raise ValueError("every prompt row must end with a real token (prompt_mask[:, -1] == 1): prompts are "
                     "left-padded and non-empty (see left_pad / pad_to_bucket)")
  fn = _jitted_generate(graphdef, tuple(sorted(static.items())))
  return fn(params, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), rng)
