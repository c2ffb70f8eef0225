"""Chunked LM-head log-probs and entropies: equal to the unchunked ones (values and gradients), and the
compiled programs hold no `[N, T, V]` float32 array (XLA's memory analysis, compile only)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grpo_jax import losses
from grpo_jax import train as train_lib
from grpo_jax.chunked_logprobs import chunked_logprobs
from grpo_jax.model import Decoder, ModelConfig
from test_train import _batch, _params


def _head_case(n=3, t=7, d=8, v=40):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(n, t, d)), jnp.float32), jnp.asarray(rng.normal(size=(d, v)), jnp.float32),
          jnp.asarray(rng.integers(0, v, (n, t)), jnp.int32))


@pytest.mark.parametrize("chunk", [3, 16])  # 3 does not divide T = 7; 16 > T
def test_chunked_equals_unchunked_values_and_gradients(chunk):
  hidden, w, tokens = _head_case()

  def objective(h, w_, chunk_):
    head = lambda x: jnp.einsum("ncd,dv->ncv", x, w_)  # noqa: E731
    if chunk_:
      logp, ent = chunked_logprobs(head, h, tokens, 0.7, chunk_, entropy_grad=True)
    else:
      logits = head(h)
      logp, ent = losses.token_logprobs(logits, tokens, 0.7), losses.token_entropy(logits, 0.7)
    return jnp.sum(logp * jnp.arange(7.0)) + 0.3 * jnp.sum(ent), (logp, ent)

  (v0, (lp0, h0)), g0 = jax.value_and_grad(objective, (0, 1), has_aux=True)(hidden, w, 0)
  (v1, (lp1, h1)), g1 = jax.jit(jax.value_and_grad(objective, (0, 1), has_aux=True),
                                static_argnums=2)(hidden, w, chunk)
  np.testing.assert_allclose(lp1, lp0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h1, h0, rtol=1e-5, atol=1e-5)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_entropy_without_gradient_is_a_metric():
  hidden, w, tokens = _head_case()
  f = lambda h, eg: jnp.sum(chunked_logprobs(lambda x: x @ w, h, tokens, 1.0, 4, entropy_grad=eg)[1])  # noqa
  assert np.all(np.asarray(jax.grad(f)(hidden, False)) == 0)
  assert np.abs(np.asarray(jax.grad(f)(hidden, True))).max() > 1e-3


def test_loss_fn_chunked_equals_unchunked():
  """The whole loss (with an entropy bonus, so the entropy's gradient is compared too) and its parameter
  gradients, through the decoder: chunk 4 over T = 6 positions vs one [N, T, V] logits array."""
  graphdef, params = _params()
  mb = {k: jnp.asarray(v) for k, v in _batch().items()}

  def run(chunk):
    cfg = train_lib.LossConfig(beta=0.04, entropy_coef=0.01, logprob_chunk=chunk, clip_high=0.28)
    f = jax.jit(jax.value_and_grad(lambda p: train_lib.loss_fn(p, graphdef, mb, cfg), has_aux=True))
    return f(params)

  (l0, m0), g0 = run(0)
  (l1, m1), g1 = run(4)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(m1["entropy"], m0["entropy"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_chunked_programs_hold_no_full_logits_array():
  """Compile-time temp bytes of scoring and of the loss gradient, V = 8192: unchunked they exceed one
  [N, T, V] float32 array; chunked (C = 2 of T = 64 positions; the backward keeps a few [N, C, V] blocks
  alive) they stay under a quarter of it."""
  V, N, P, T = 8192, 16, 4, 64
  cfg = ModelConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=16, remat="full")
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0))))
  s = jax.ShapeDtypeStruct
  mb = {"prompt_tokens": s((N, P), jnp.int32), "prompt_mask": s((N, P), jnp.int32),
        "tokens": s((N, T), jnp.int32), "mask": s((N, T), jnp.int32), "old_logp": s((N, T), jnp.float32),
        "ref_logp": s((N, T), jnp.float32), "advantages": s((N,), jnp.float32),
        "loss_mask": s((N, T), jnp.float32)}
  full = N * T * V * 4

  def temp_bytes(chunk):
    score = jax.jit(lambda p, b: train_lib.completion_logprobs(
        graphdef, p, b["prompt_tokens"], b["prompt_mask"], b["tokens"], b["mask"], 1.0, chunk))
    lc = train_lib.LossConfig(logprob_chunk=chunk)
    grad = jax.jit(jax.grad(lambda p, b: train_lib.loss_fn(p, graphdef, b, lc)[0]))
    return [f.lower(params, mb).compile().memory_analysis().temp_size_in_bytes for f in (score, grad)]

  unchunked, chunked = temp_bytes(0), temp_bytes(2)
  for before, after in zip(unchunked, chunked):
    assert before >= full and after < full / 4, (before, after, full)
