"""grpo_jax.sampler: exactness against transformers and teacher forcing, the sampling distribution
(chi-square), EOS / early stop, invariances (padding, batch composition, sharding), compile reuse.

Most tests share one tiny model and one prompt batch [8, 8] so that they share compiled samplers."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax import sampler, sharding, testing
from grpo_jax.model import ModelConfig, positions_from_mask

V = 32
T = 10
SAMPLED = dict(max_new_tokens=T, temperature=0.8)  # the shared sampled configuration


def _reference_probs(logits_V, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
  """Independent float64 numpy reference of the filtered sampling distribution of one row."""
  z = np.asarray(logits_V, np.float64) / temperature
  keep = np.ones_like(z, bool)
  if top_k:
    keep &= z >= np.sort(z)[::-1][top_k - 1]
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  if top_p < 1.0:
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    nucleus = np.zeros_like(keep)
    nucleus[order[before < top_p]] = True
    p = np.where(nucleus, p, 0.0)
    p /= p.sum()
  if min_p > 0.0:
    p = np.where(p >= min_p * p.max(), p, 0.0)
    p /= p.sum()
  return p


def _random_model(seed: int):
  """A one-layer tiny Decoder whose next-token distributions have ~2.5 nats of entropy, so every filter
  below removes some tokens and keeps several."""
  return testing.random_model(ModelConfig.tiny(vocab_size=V, num_layers=1), seed, norm_noise=0.1)


@pytest.fixture(scope="module")
def model():
  return _random_model(0)


def _keys(seed: int, n: int = 8):
  """Row keys fold_in(key(seed), b), as `generate` derives them from one key."""
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.arange(n))


@pytest.fixture(scope="module")
def prompts():
  """8 left-padded prompts of lengths 1..8 in a bucket of 8."""
  rng = np.random.default_rng(0)
  seqs = [list(rng.integers(1, V, size=n)) for n in (3, 8, 5, 1, 7, 2, 6, 4)]
  return sampler.left_pad(seqs, buckets=[8])


@jax.jit
def _jit_forward(graphdef, params, tokens, mask):
  return nnx.merge(graphdef, params)(tokens, positions_from_mask(mask), mask)


def _forward(model, tokens, mask=None):
  """Full (uncached) causal forward, jitted: logits [B, L, V]."""
  mask = jnp.ones(tokens.shape, jnp.int32) if mask is None else mask
  return _jit_forward(*nnx.split(model), tokens, mask)


def _teacher_forced_logits(model, prompt_tokens, prompt_mask, out):
  """Logits predicting each completion token, from one full forward over [prompt + completion]."""
  tokens = jnp.concatenate([prompt_tokens, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, out.mask], axis=1)
  logits = _forward(model, tokens, mask)
  p = prompt_tokens.shape[1]
  return np.asarray(logits[:, p - 1:-1], np.float64)  # [B, T, V]


# ---------------------------------------------------------------------------------------------- filters


def test_filters_hand_computed():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  kept = lambda x: np.flatnonzero(np.isfinite(np.asarray(x[0]))).tolist()
  assert kept(sampler.TopK(3)(logits)) == [0, 1, 2]
  assert kept(sampler.TopK(0)(logits)) == [0, 1, 2, 3]
  assert kept(sampler.TopP(0.7)(logits)) == [0, 1]  # 0.5 < 0.7 before token 1; 0.75 >= 0.7 before token 2
  assert kept(sampler.TopP(0.3)(logits)) == [0]
  assert kept(sampler.MinP(0.4)(logits)) == [0, 1]  # p >= 0.2
  # top-p on the top-3 renormalized distribution [.556, .278, .167]: 0.556 < 0.6, 0.833 >= 0.6.
  both = sampler.SamplingParams(top_k=3, top_p=0.6)
  assert kept(both.filter_logits(logits)) == [0, 1]
  np.testing.assert_allclose(jax.nn.softmax(both.filter_logits(logits))[0, :2], [2 / 3, 1 / 3],
                             rtol=1e-6)
  # Temperature 0.5 squares the probabilities: [.25, .0625, .0225, .01] / .345.
  np.testing.assert_allclose(jax.nn.softmax(sampler.SamplingParams(0.5).filter_logits(logits))[0],
                             np.array([0.25, 0.0625, 0.0225, 0.01]) / 0.345, rtol=1e-5)


def test_invalid_arguments(model, prompts):
  with pytest.raises(ValueError, match="top_p"):
    sampler.SamplingParams(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    sampler.generate(model, *prompts, jax.random.key(0), max_new_tokens=2, temperature=-1.0)
  with pytest.raises(ValueError, match="logprobs_mode"):
    sampler.make_generate_fn(nnx.graphdef(model), max_new_tokens=2, logprobs_mode="ratio")
  with pytest.raises(ValueError, match="left-padded"):  # right padding is caught
    sampler.generate(model, prompts[0][:, ::-1], prompts[1][:, ::-1], jax.random.key(0),
                     max_new_tokens=2)
  with pytest.raises(ValueError, match="bucket"):
    sampler.pad_to_bucket(np.ones((2, 9)), np.ones((2, 9)), buckets=[4, 8])


def test_layout_helpers():
  tokens, mask = sampler.left_pad([[5, 6], [7, 8, 9]], buckets=[2, 4, 8], pad_id=1)
  np.testing.assert_array_equal(tokens, [[1, 1, 5, 6], [1, 7, 8, 9]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 1, 1, 1]])
  tokens_g, mask_g = sampler.repeat_for_group(tokens, mask, 3)
  assert tokens_g.shape == (6, 4)
  np.testing.assert_array_equal(tokens_g[0:3], np.repeat(tokens[:1], 3, 0))
  np.testing.assert_array_equal(tokens_g[3:6], np.repeat(tokens[1:], 3, 0))
  np.testing.assert_array_equal(mask_g[3:6], np.repeat(mask[1:], 3, 0))


# ------------------------------------------------------------------------------------------ exactness


def test_greedy_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from grpo_jax import hf

  config = transformers.Qwen2Config(
      vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
      max_position_embeddings=64)
  hf_model = testing.make_tiny_hf_checkpoint(config, tmp_path)
  ours = hf.from_pretrained(tmp_path, jnp.float32)

  rng = np.random.default_rng(1)
  tokens, mask = sampler.left_pad([list(rng.integers(1, 64, size=n)) for n in (7, 3, 5)])
  new = 12
  with torch.no_grad():
    ref = hf_model.generate(torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                            max_new_tokens=new, pad_token_id=0, eos_token_id=None,
                            return_dict_in_generate=True, output_logits=True)
  ref_tokens = ref.sequences[:, tokens.shape[1]:].numpy()
  ref_logp = np.stack([torch.log_softmax(l, -1).numpy() for l in ref.logits], 1)  # [B, T, V]
  ref_logp = np.take_along_axis(ref_logp, ref_tokens[..., None], -1)[..., 0]
  assert ref_tokens.shape == (3, new)

  out = sampler.generate(ours, tokens, mask, jax.random.key(0), max_new_tokens=new, temperature=0.0)
  np.testing.assert_array_equal(out.tokens, ref_tokens)
  np.testing.assert_allclose(out.logprobs, ref_logp, atol=1e-4)
  np.testing.assert_array_equal(out.mask, 1)
  assert bool(out.truncated.all()) and int(out.num_steps) == new


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.8),
    dict(temperature=0.7, top_k=5),
    dict(temperature=0.7, top_k=5, top_p=0.9, logprobs_mode="truncated"),
    dict(temperature=0.0, logprobs_mode="full"),
], ids=["temperature", "top_k", "truncated", "greedy"])
def test_logprobs_match_teacher_forcing(model, prompts, kwargs):
  kwargs = dict(kwargs)
  out = sampler.generate(model, *prompts, _keys(1), max_new_tokens=T, **kwargs)
  logits = _teacher_forced_logits(model, *map(jnp.asarray, prompts), out)
  mode = kwargs.pop("logprobs_mode", "full")
  temperature = kwargs.pop("temperature")
  tokens = np.asarray(out.tokens)
  if mode == "full":  # log softmax(logits / τ) over the full vocabulary (τ = 1 for greedy)
    z = logits / (temperature or 1.0)
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
        -1, keepdims=True)
    ref = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  else:  # log q(token) under the filtered, renormalized sampling distribution
    ref = np.array([[np.log(_reference_probs(logits[b, t], temperature, **kwargs)[tokens[b, t]])
                     for t in range(T)] for b in range(tokens.shape[0])])
  assert np.isfinite(ref).all()
  np.testing.assert_allclose(out.logprobs, ref, atol=1e-4)
  if temperature == 0.0:
    np.testing.assert_array_equal(tokens, logits.argmax(-1))
  else:  # sampled tokens lie in the support of the filtered distribution
    for b, t in np.ndindex(tokens.shape):
      assert _reference_probs(logits[b, t], temperature, **kwargs)[tokens[b, t]] > 0


def _chi_square_p_value(counts, probs):
  """p-value of Pearson's chi-square test of `counts` [V] against `probs` [V] over the cells with
  probs > 0. The two smallest cells are merged until every cell expects >= 5 counts (the validity
  condition of the chi-square approximation)."""
  support = probs > 0
  cells = sorted(zip(counts.sum() * probs[support], counts[support]))  # (expected, observed)
  while cells[0][0] < 5:
    (e1, o1), (e2, o2), *rest = cells
    cells = sorted([(e1 + e2, o1 + o2), *rest])
  expected, observed = map(np.array, zip(*cells))
  assert len(cells) >= 3, cells
  stat = float(((observed - expected) ** 2 / expected).sum())
  return float(jax.scipy.special.gammaincc((len(cells) - 1) / 2, stat / 2))  # chi-square survival fn


def _check_distribution(tokens, logits, **kwargs):
  counts = np.bincount(np.asarray(tokens), minlength=V)
  probs = _reference_probs(logits, **kwargs)
  assert counts[probs == 0].sum() == 0  # filtered-out tokens never appear
  p_value = _chi_square_p_value(counts, probs)
  assert p_value > 1e-3, (kwargs, p_value)
  return counts


N_SAMPLES = 20_000
PROMPT = [3, 14, 15, 9, 2, 6]


def test_first_token_distribution_chi_square(model):
  """20k first tokens of one prompt, sampled end to end in one batched call (fixed seed)."""
  kwargs = dict(temperature=1.3, top_k=12, top_p=0.8, min_p=0.02)
  prompt = jnp.array([PROMPT], jnp.int32)
  out = sampler.generate(model, jnp.tile(prompt, (N_SAMPLES, 1)), jnp.ones((N_SAMPLES, 6), jnp.int32),
                         jax.random.key(2024), max_new_tokens=1, **kwargs)
  logits = _forward(model, prompt)[0, -1]
  counts = _check_distribution(out.tokens[:, 0], logits, **kwargs)
  assert 3 <= (_reference_probs(logits, **kwargs) > 0).sum() < 12  # the filters bite
  # The test has power: the same counts reject the unfiltered softmax(logits / T).
  e = N_SAMPLES * _reference_probs(logits, kwargs["temperature"])
  assert float(((counts - e) ** 2 / e).sum()) > 200


FILTER_CASES = (
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=0.8, top_k=6),
    dict(temperature=1.0, top_p=0.7),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=2.0, top_k=20, top_p=0.9),
)


def test_filter_distribution_chi_square(model):
  """Each filter on the model's next-token logits, 20k draws with distinct row keys."""
  logits = _forward(model, jnp.array([PROMPT], jnp.int32))[0, -1]

  @jax.jit  # one compile for all cases: they share the keys, so XLA shares the random bits
  def draw(logits_NxV, keys_N):
    return [sampler.SamplingParams(**kw).sample(logits_NxV, keys_N) for kw in FILTER_CASES]

  draws = draw(jnp.broadcast_to(logits, (N_SAMPLES, V)), _keys(11, N_SAMPLES))
  for kwargs, tokens in zip(FILTER_CASES, draws):
    support = (_reference_probs(logits, **kwargs) > 0).sum()
    assert support == V if len(kwargs) == 1 else 2 <= support < V, kwargs
    _check_distribution(tokens, logits, **kwargs)


# ------------------------------------------------------------------------------------- EOS and early stop


def test_eos(model, prompts):
  free = sampler.generate(model, *prompts, _keys(3), **SAMPLED)
  free_tokens = np.asarray(free.tokens)
  assert int(free.num_steps) == T and bool(free.truncated.all())  # eos_id=None: never stops
  # EOS := the token that the most rows emit; rows without it run to T and are truncated.
  eos = int(np.argmax([(free_tokens == v).any(1).sum() for v in range(V)]))
  has = (free_tokens == eos).any(1)
  assert 2 <= has.sum() < 8, "precondition: some rows emit EOS and some do not"
  lengths = np.where(has, (free_tokens == eos).argmax(1) + 1, T)

  out = sampler.generate(model, *prompts, _keys(3), eos_id=eos, pad_id=31, **SAMPLED)
  np.testing.assert_array_equal(out.lengths, lengths)
  np.testing.assert_array_equal(out.truncated, ~has)
  np.testing.assert_array_equal(out.mask, np.arange(T)[None] < lengths[:, None])
  np.testing.assert_array_equal(out.tokens, np.where(out.mask, free_tokens, 31))
  np.testing.assert_allclose(out.logprobs, np.where(out.mask, free.logprobs, 0.0), atol=1e-6)
  assert int(out.num_steps) == T

  # Early stop: a batch of only rows that emit EOS before step T (with their own row keys) leaves
  # the while_loop once every row is done, after max(lengths) < T steps.
  early_rows = np.flatnonzero(has & (lengths < T))
  assert len(early_rows), "precondition"
  idx = np.resize(early_rows, 8)
  early = sampler.generate(model, prompts[0][idx], prompts[1][idx], _keys(3)[idx], eos_id=eos,
                           pad_id=31, **SAMPLED)
  np.testing.assert_array_equal(early.tokens, out.tokens[idx])
  assert int(early.num_steps) == lengths[idx].max() < T and not bool(early.truncated.any())


# ------------------------------------------------------------------------------------------ invariances


def test_left_padding_does_not_change_results(model, prompts):
  out = sampler.generate(model, *prompts, _keys(4), **SAMPLED)
  wide = sampler.pad_to_bucket(*prompts, buckets=[13])
  assert wide[0].shape == (8, 13)
  out_wide = sampler.generate(model, *wide, _keys(4), **SAMPLED)
  np.testing.assert_array_equal(out_wide.tokens, out.tokens)
  np.testing.assert_allclose(out_wide.logprobs, out.logprobs, atol=1e-5)


def test_rows_do_not_depend_on_batch_composition(model, prompts):
  out = sampler.generate(model, *prompts, _keys(5), **SAMPLED)
  # Row 2 alone, with its row key, in a batch of one.
  alone = sampler.generate(model, prompts[0][2:3], prompts[1][2:3], _keys(5)[2:3], **SAMPLED)
  np.testing.assert_array_equal(alone.tokens[0], out.tokens[2])
  np.testing.assert_allclose(alone.logprobs[0], out.logprobs[2], atol=1e-5)
  # Row 2 inside a batch with other neighbours (and duplicates: same prompt + key, same sample).
  idx = np.array([7, 2, 0, 0, 5, 1, 3, 3])
  mixed = sampler.generate(model, prompts[0][idx], prompts[1][idx], _keys(5)[idx], **SAMPLED)
  np.testing.assert_array_equal(mixed.tokens, out.tokens[idx])
  np.testing.assert_allclose(mixed.logprobs, out.logprobs[idx], atol=1e-5)
  # Other row keys give other samples.
  other = sampler.generate(model, *prompts, _keys(6), **SAMPLED)
  assert (np.asarray(other.tokens) != np.asarray(out.tokens)).mean() > 0.3


def test_new_params_do_not_recompile(model, prompts, monkeypatch):
  traces = []  # positions_from_mask runs once per trace of the sampler
  original = sampler.positions_from_mask
  monkeypatch.setattr(sampler, "positions_from_mask", lambda m: traces.append(1) or original(m))
  kw = dict(max_new_tokens=3, temperature=0.9, top_k=7)  # a configuration no other test compiles
  a = sampler.generate(model, *prompts, jax.random.key(7), **kw)
  b = sampler.generate(_random_model(1), *prompts, jax.random.key(7), **kw)
  assert len(traces) == 1
  assert not np.allclose(a.logprobs, b.logprobs)
  c = sampler.generate(nnx.split(model), *prompts, jax.random.key(7), **kw)  # (graphdef, params)
  assert len(traces) == 1
  np.testing.assert_array_equal(c.tokens, a.tokens)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sharded_matches_unsharded(model, prompts, temperature):
  """jit_generate on a (data 4, fsdp 2, tensor 1) mesh; one key, which must equal its row keys."""
  mesh = sharding.make_mesh((4, 2, 1))
  graphdef, params = nnx.split(model)
  shardings = sharding.param_shardings(params, mesh)
  kw = dict(SAMPLED, temperature=temperature)
  fn = sampler.jit_generate(graphdef, mesh, shardings, **kw)
  out = fn(sharding.shard_state(params, shardings), *map(jnp.asarray, prompts), jax.random.key(8))
  ref = sampler.generate(model, *prompts, _keys(8), **kw)
  assert out.tokens.sharding.spec == sharding.batch_sharding(mesh).spec
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  np.testing.assert_array_equal(out.mask, ref.mask)


def test_unrolled_layers_sample_the_same(prompts):
  """The per-layer-buffer cache of `scan_decode=False` (unrolled decode) and the stacked cache of the layer
  scan hold the same keys and values: same samples, same log-probs, on a mesh too."""
  config = ModelConfig.tiny(vocab_size=V, num_layers=3)
  scanned = testing.random_model(config, 3)
  graphdef = nnx.split(nnx.eval_shape(lambda: testing.random_model(
      ModelConfig.tiny(vocab_size=V, num_layers=3, scan_decode=False), 3)))[0]
  unrolled = nnx.merge(graphdef, nnx.state(scanned))
  a = sampler.generate(scanned, *prompts, _keys(9), **SAMPLED)
  b = sampler.generate(unrolled, *prompts, _keys(9), **SAMPLED)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  mesh = sharding.make_mesh((4, 1, 2))
  params = nnx.state(unrolled)
  shardings = sharding.param_shardings(params, mesh)
  fn = sampler.jit_generate(graphdef, mesh, shardings, **SAMPLED)
  c = fn(sharding.shard_state(params, shardings), *map(jnp.asarray, prompts), jax.random.key(9))
  np.testing.assert_array_equal(c.tokens, a.tokens)
