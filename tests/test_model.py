"""grpo_jax.model and grpo_jax.sharding without Hugging Face: invariants and NumPy references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from grpo_jax import sharding, testing
from grpo_jax.model import (KVCache, ModelConfig, init_model, positions_from_mask, rms_norm,
                            rope_frequencies)

TOL = 1e-5
VARIANTS = {"plain": {}, "qkv_bias_untied": dict(qkv_bias=True, tie_embeddings=False),
            "qk_norm_mqa": dict(qk_norm=True, num_kv_heads=1)}


_random_model = testing.random_model


def _tiny(**overrides):
  return ModelConfig.tiny(num_layers=2, **overrides)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, *args):
  return nnx.merge(graphdef, state)(*args)


def _forward(model, *args):
  return _apply(*nnx.split(model), *args)


def _left_padded(vocab, seed=0):
  """Tokens `[3, 10]` with 10, 6 and 3 real tokens (left padding, pad id 0) and their mask."""
  rng = np.random.default_rng(seed)
  mask = np.arange(10)[None] >= np.array([0, 4, 7])[:, None]
  return jnp.asarray(np.where(mask, rng.integers(1, vocab, (3, 10)), 0)), jnp.asarray(mask)


def test_positions_from_mask():
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])


@pytest.mark.parametrize("scan_decode", [True, False])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cache_decode_equals_full_forward(variant, scan_decode):
  model = _random_model(_tiny(scan_decode=scan_decode, **VARIANTS[variant]))
  tokens, mask = _left_padded(model.config.vocab_size)
  positions = positions_from_mask(mask)
  full = _forward(model, tokens, positions, mask)
  prompt_len, total = 5, tokens.shape[1]
  cache = KVCache.init(model.config, tokens.shape[0], total + 2)  # spare slots stay masked
  logits, cache = _forward(model, tokens[:, :prompt_len], positions[:, :prompt_len],
                           mask[:, :prompt_len], cache)
  m = mask[:, :prompt_len]
  np.testing.assert_allclose(logits[m], full[:, :prompt_len][m], atol=TOL, rtol=0)
  for t in range(prompt_len, total):
    logits, cache = _forward(model, tokens[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1],
                             cache)
    real = mask[:, t]
    np.testing.assert_allclose(logits[real, 0], full[real, t], atol=TOL, rtol=0)
  assert int(cache.index) == total
  np.testing.assert_array_equal(cache.mask[:, :total], mask)
  assert not cache.mask[:, total:].any()


def test_unrolled_layers_equal_the_layer_scan():
  """`scan_layers=False` applies the same stacked parameters in a Python loop: same logits, same
  gradients; and a cache of either layout (stacked for the scan, per-layer tuples when unrolled)."""
  config = _tiny(qkv_bias=True)
  model = _random_model(config)
  graphdef_scan, params = nnx.split(model)
  graphdef_loop = nnx.split(nnx.eval_shape(lambda: init_model(_tiny(qkv_bias=True, scan_layers=False))))[0]
  tokens, mask = _left_padded(config.vocab_size, seed=5)
  positions = positions_from_mask(mask)

  def loss(graphdef, p):
    return jnp.sum(jax.nn.log_softmax(nnx.merge(graphdef, p)(tokens, positions, mask)) * mask[..., None])

  (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(functools.partial(loss, gd)))(params)
                        for gd in (graphdef_scan, graphdef_loop))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(a).max())), g0, g1)
  assert isinstance(KVCache.init(config, 3, 4).k, jax.Array)
  assert isinstance(KVCache.init(_tiny(scan_decode=False), 3, 4).k, tuple)


def _hf_llama3_inv_freq(head_dim, theta, factor, low, high, original):
  """NumPy transcription of transformers' `_compute_llama3_parameters` (modeling_rope_utils.py)."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) /
                              head_dim))
  low_wavelen, high_wavelen = original / low, original / high
  wavelen = 2 * math.pi / inv_freq
  inv_freq_llama = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
  is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(is_medium, smoothed, inv_freq_llama), wavelen, (low_wavelen, high_wavelen)


@pytest.mark.parametrize("head_dim, theta, scaling", [
    (128, 500000.0, (8.0, 1.0, 4.0, 8192)),  # Llama 3.1 / 3.2
    (64, 10000.0, (32.0, 1.0, 4.0, 64)),
])
def test_rope_frequencies_llama3_scaling_matches_hf(head_dim, theta, scaling):
  config = _tiny(head_dim=head_dim, rope_theta=theta, rope_scaling=scaling)
  want, wavelen, (low_wavelen, high_wavelen) = _hf_llama3_inv_freq(head_dim, theta, *scaling)
  # All three regimes (kept, interpolated, divided by factor) are exercised.
  assert (wavelen < high_wavelen).any() and (wavelen > low_wavelen).any()
  assert ((wavelen >= high_wavelen) & (wavelen <= low_wavelen)).any()
  np.testing.assert_allclose(rope_frequencies(config), want, rtol=1e-6)
  unscaled = rope_frequencies(_tiny(head_dim=head_dim, rope_theta=theta))
  np.testing.assert_allclose(unscaled, theta ** -(np.arange(0, head_dim, 2) / head_dim), rtol=1e-6)


def test_rms_norm_matches_numpy():
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((3, 5, 16)) * 3, rng.standard_normal(16)
  want = w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
  got = rms_norm(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # bf16 in, bf16 out; the statistics are taken in float32.
  got16 = rms_norm(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), 1e-6)
  assert got16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got16, np.float32), want, rtol=0.05, atol=0.05)


def test_left_padding_does_not_change_real_token_logits():
  model = _random_model(_tiny(qkv_bias=True))
  tokens, mask = _left_padded(model.config.vocab_size, seed=1)
  padded = _forward(model, tokens, positions_from_mask(mask), mask)
  assert np.isfinite(padded).all()  # fully masked (padding) rows must not produce NaN
  for row, start in enumerate([0, 4, 7]):
    alone = _forward(model, tokens[row:row + 1, start:])  # default positions and mask
    np.testing.assert_allclose(padded[row, start:], alone[0], atol=TOL, rtol=0)


def test_remat_policies_give_the_same_gradients():
  config = _tiny(qk_norm=True)
  model = _random_model(config)
  tokens, mask = _left_padded(config.vocab_size, seed=2)
  positions = positions_from_mask(mask)
  weights = jnp.asarray(np.random.default_rng(3).standard_normal((3, 10, config.vocab_size)),
                        jnp.float32)
  params = nnx.state(model)

  def grads(remat):
    gd = nnx.split(nnx.eval_shape(lambda: init_model(_tiny(qk_norm=True, remat=remat))))[0]

    def loss(p):
      logits = nnx.merge(gd, p)(tokens, positions, mask)
      return jnp.sum(jax.nn.log_softmax(logits) * weights * mask[..., None])

    # The blocks really are rematerialized (a checkpoint inside the layer scan), or not at all.
    assert ("remat" in str(jax.make_jaxpr(loss)(params))) == (remat != "none")
    return jax.jit(jax.value_and_grad(loss))(params)

  (l0, g0) = grads("none")
  for policy in ("full", "dots", "dots_no_batch"):
    l1, g1 = grads(policy)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    # Recomputation may fuse differently: equal up to float32 rounding of O(1) gradients.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=1e-4 * float(np.abs(a).max()), rtol=1e-4), g0, g1)
  assert all(np.abs(x).max() > 0 for x in jax.tree.leaves(g0))


def test_param_shardings_on_a_2x2x2_mesh():
  config = _tiny(qkv_bias=True, qk_norm=True, tie_embeddings=False)  # D=128, N=4, K=2, F=352
  mesh = sharding.make_mesh((2, 2, 2))
  _, state = nnx.split(nnx.eval_shape(lambda: init_model(config)))
  specs = {p: v.get_value().spec for p, v in
           nnx.to_flat_state(sharding.param_shardings(state, mesh))}
  want = {
      ("embed",): P("tensor", "fsdp"),
      ("lm_head",): P("fsdp", "tensor"),
      ("final_norm",): P("fsdp"),
      # The stacked blocks' leading `layers` axis is never sharded.
      ("layers", "attn", "q"): P(None, "fsdp", "tensor", None),
      ("layers", "attn", "k"): P(None, "fsdp", "tensor", None),
      ("layers", "attn", "o"): P(None, "tensor", None, "fsdp"),
      ("layers", "attn", "q_bias"): P(None, "tensor", None),
      ("layers", "attn", "q_norm"): P(None, None),
      ("layers", "mlp", "gate"): P(None, "fsdp", "tensor"),
      ("layers", "mlp", "down"): P(None, "tensor", "fsdp"),
      ("layers", "mlp_norm"): P(None, "fsdp"),
  }
  for path, spec in want.items():
    assert specs[path] == spec, path
  assert all(s.mesh.shape == mesh.shape for s in jax.tree.leaves(sharding.param_shardings(
      state, mesh)))


def test_logical_to_spec_replicates_what_the_mesh_does_not_divide():
  mesh = sharding.make_mesh((1, 2, 4))
  # 2 KV heads on a 4-way tensor axis stay replicated; embed shards over fsdp.
  assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (128, 2, 32), mesh) == P(
      "fsdp", None, None)
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (128, 8, 32), mesh) == P(
      "fsdp", "tensor", None)
  assert sharding.logical_to_spec(("embed",), (127,), mesh) == P(None)  # odd hidden size
  # A mesh axis is used once per array; size-1 mesh axes are never named.
  assert sharding.logical_to_spec(("mlp", "heads"), (8, 8), mesh) == P("tensor", None)
  assert sharding.logical_to_spec(("batch", None), (8, 3), mesh) == P("fsdp", None)
  assert sharding.logical_to_spec(None, (3,), mesh) == P()
  with pytest.raises(ValueError, match="do not match shape"):
    sharding.logical_to_spec(("embed",), (4, 4), mesh)


def test_make_mesh():
  mesh = sharding.make_mesh((-1, 2, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == dict(
      data=2, fsdp=2, tensor=2)
  assert sharding.make_mesh().shape["data"] == jax.device_count()
  for shape, match in [((2, 2), "3 entries"), ((-1, -1, 2), "at most one"),
                       ((3, -1, 1), "does not divide"), ((2, 2, 1), "needs 4 devices")]:
    with pytest.raises(ValueError, match=match):
      sharding.make_mesh(shape)


def test_config_validates_remat_against_the_model_choices():
  from grpo_jax import config as config_lib
  from grpo_jax import model as model_lib
  assert config_lib.REMAT_CHOICES == model_lib.REMAT_CHOICES
  import importlib.util, os
  spec = importlib.util.spec_from_file_location(
      "default_cfg", os.path.join(os.path.dirname(__file__), "..", "experiments", "default.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model.remat = "sometimes"
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.remat: 'sometimes' is not one of"):
    config_lib.validate(c, 8)
