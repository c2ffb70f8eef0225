"""grpo_jax.hf against PyTorch transformers on tiny random Llama / Mistral / Qwen2 / Qwen3 checkpoints."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from grpo_jax import hf, sharding, testing, tokenizer
from grpo_jax.model import KVCache, ModelConfig, init_model, positions_from_mask

TOL = 1e-4
_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
ARCHS = {
    # GQA, untied; rope wavelengths 6.3 / 20, 63 / >64 hit all three Llama-3 scaling regimes.
    "llama": transformers.LlamaConfig(
        **_COMMON, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64)),
    "mistral": transformers.MistralConfig(**_COMMON, head_dim=16, sliding_window=None,
                                          tie_word_embeddings=False),
    "qwen2": transformers.Qwen2Config(**_COMMON, tie_word_embeddings=True),
    # head_dim 32 != hidden / heads = 16.
    "qwen3": transformers.Qwen3Config(**_COMMON, head_dim=32, tie_word_embeddings=False),
}


def _make_checkpoint(hf_config, path, seed=0, dtype=torch.float32):
  model = testing.make_tiny_hf_checkpoint(hf_config, path, seed, dtype)
  if dtype == torch.float32:
    return model
  # The reference: the stored (rounded) weights in float32, with float32 rope buffers.
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def checkpoint(request, tmp_path_factory):
  """(arch name, directory, float32 torch reference model)."""
  path = tmp_path_factory.mktemp(request.param)
  return request.param, path, _make_checkpoint(ARCHS[request.param], path)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama_errors")
  _make_checkpoint(ARCHS["llama"], path, seed=1)
  return path


def _torch_logits(model, tokens, mask=None, positions=None):
  kw = {}
  if mask is not None:
    kw = dict(attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
              position_ids=torch.tensor(np.asarray(positions), dtype=torch.long))
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long), **kw).logits.float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, *args):
  return nnx.merge(graphdef, state)(*args)


def _forward(model, tokens, positions=None, mask=None, cache=None):
  """`model(...)` under jit (eager NNX calls compile every op once per shape: slow on 2 CPUs)."""
  args = [jnp.asarray(tokens)] + [None if a is None else jnp.asarray(a)
                                  for a in (positions, mask)]
  return _apply(*nnx.split(model), *args, *([] if cache is None else [cache]))


_random_model = testing.random_model


def _tokens(shape, seed=0):
  return np.random.default_rng(seed).integers(0, _COMMON["vocab_size"], shape, dtype=np.int32)


def _left_padded(seed=0):
  tokens = _tokens((3, 10), seed)
  lengths = np.array([10, 6, 3])
  mask = np.arange(10)[None] >= (10 - lengths)[:, None]
  return np.where(mask, tokens, 0), mask


def test_logits_match_torch(checkpoint):
  arch, path, ref = checkpoint
  model = hf.from_pretrained(path, jnp.float32)
  assert model.config.qkv_bias == (arch == "qwen2") and model.config.qk_norm == (arch == "qwen3")
  tokens = _tokens((2, 12))
  got, want = np.asarray(_forward(model, tokens)), _torch_logits(ref, tokens)
  assert np.abs(want).max() > 1.0  # the comparison is not trivially small numbers
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_left_padded_batch_matches_torch(checkpoint):
  _, path, ref = checkpoint
  model = hf.from_pretrained(path, jnp.float32)
  tokens, mask = _left_padded()
  positions = positions_from_mask(jnp.asarray(mask))
  got = np.asarray(_forward(model, tokens, positions, mask))
  want = _torch_logits(ref, tokens, mask, positions)
  np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


# GQA + rope scaling, and qk-norm + wide heads, cover the cache paths.
@pytest.mark.parametrize("checkpoint", ["llama", "qwen3"], indirect=True)
def test_kv_cache_decode_matches_full_forward(checkpoint):
  _, path, _ = checkpoint
  model = hf.from_pretrained(path, jnp.float32)
  tokens, mask = _left_padded(seed=1)
  prompt_len, steps = 6, 4
  mask = jnp.asarray(mask)
  positions = positions_from_mask(mask)
  full = _forward(model, tokens, positions, mask)
  cache = KVCache.init(model.config, tokens.shape[0], prompt_len + steps)
  prefill = slice(0, prompt_len)
  logits, cache = _forward(model, tokens[:, prefill], positions[:, prefill], mask[:, prefill],
                           cache)
  np.testing.assert_allclose(logits[mask[:, prefill]], full[:, prefill][mask[:, prefill]],
                             atol=TOL, rtol=0)
  for t in range(prompt_len, prompt_len + steps):
    step = slice(t, t + 1)
    logits, cache = _forward(model, tokens[:, step], positions[:, step], mask[:, step], cache)
    real = mask[:, t]  # row 2 is still padding at t = 6
    np.testing.assert_allclose(logits[real, 0], full[real, t], atol=TOL, rtol=0)


@pytest.mark.parametrize("checkpoint", ["llama", "qwen2", "qwen3"], indirect=True)  # mistral = llama
def test_save_pretrained_round_trip(checkpoint, tmp_path):
  arch, path, ref = checkpoint
  model = hf.from_pretrained(path, jnp.float32)
  # A tiny shard limit also exercises the multi-file + index.json layout.
  # The source config rides along through nnx.split / nnx.merge (as after training).
  hf.save_pretrained(nnx.merge(*nnx.split(model)), tmp_path,
                     max_shard_bytes=40_000 if arch == "llama" else 5 * 2**30)
  assert os.path.exists(tmp_path / ("model.safetensors.index.json" if arch == "llama"
                                    else "model.safetensors"))
  with open(tmp_path / "config.json") as f:
    saved = json.load(f)
  assert saved["model_type"] == arch and saved["dtype"] == "float32"
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  want_state, got_state = ref.state_dict(), back.state_dict()
  assert set(got_state) == set(want_state)
  for key, value in want_state.items():
    torch.testing.assert_close(got_state[key], value, atol=0, rtol=0, msg=key)
  tokens = _tokens((2, 9), seed=3)
  np.testing.assert_allclose(_torch_logits(back, tokens), _torch_logits(ref, tokens), atol=0, rtol=0)
  # ... and our own loader reads the saved directory back to the same parameters.
  again = hf.from_pretrained(tmp_path, jnp.float32)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(again), nnx.state(model))


@pytest.mark.parametrize("overrides, model_type", [
    (dict(), "llama"),
    (dict(qkv_bias=True, tie_embeddings=False), "qwen2"),
    (dict(qk_norm=True, rope_scaling=(8.0, 1.0, 4.0, 64), rope_theta=500000.0), "qwen3"),
])
def test_save_pretrained_without_hf_config(overrides, model_type, tmp_path):
  model = _random_model(ModelConfig.tiny(vocab_size=96, num_layers=2, hidden_size=64,
                                         intermediate_size=96, **overrides))
  hf.save_pretrained(model, tmp_path)
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  assert back.config.model_type == model_type
  assert hf.config_from_hf(back.config, "float32") == model.config
  tokens = _tokens((2, 8), seed=4) % 96
  np.testing.assert_allclose(_forward(model, tokens), _torch_logits(back, tokens), atol=TOL,
                             rtol=0)


@pytest.mark.parametrize("checkpoint", ["llama", "qwen2"], indirect=True)  # untied and tied
def test_sharded_load(checkpoint):
  arch, path, ref = checkpoint
  mesh = sharding.make_mesh((2, 2, 2))
  model = hf.from_pretrained(path, jnp.float32, mesh=mesh)
  specs = [
      (model.embed, P("tensor", "fsdp")),  # [V=128, D=64]
      # Stacked blocks: a leading, unsharded `layers` axis.
      (model.layers.attn.q, P(None, "fsdp", "tensor", None)),  # [layers, D, N=4, H]
      (model.layers.attn.k, P(None, "fsdp", "tensor", None)),  # [layers, D, K=2, H]
      (model.layers.attn.o, P(None, "tensor", None, "fsdp")),  # [layers, N, H, D]
      (model.layers.mlp.down, P(None, "tensor", "fsdp")),  # [layers, F=96, D]
  ]
  if arch == "qwen2":
    specs.append((model.layers.attn.k_bias, P(None, "tensor", None)))
  else:
    specs.append((model.lm_head, P("fsdp", "tensor")))
  assert model.final_norm[...].sharding.spec == P("fsdp")
  for param, spec in specs:
    value = param[...]
    assert value.sharding.mesh.shape == mesh.shape and value.sharding.spec == spec
    ways = math.prod(mesh.shape[a] for a in spec if a is not None)
    assert value.addressable_shards[0].data.size * ways == value.size
  tokens = _tokens((2, 12))
  np.testing.assert_allclose(_forward(model, tokens), _torch_logits(ref, tokens), atol=TOL,
                             rtol=0)


def test_bf16_checkpoint(tmp_path):
  ref = _make_checkpoint(ARCHS["qwen3"], tmp_path, seed=5, dtype=torch.bfloat16)
  model = hf.from_pretrained(tmp_path, jnp.bfloat16)
  assert model.layers.attn.q[...].dtype == jnp.bfloat16
  # Stored bf16 values arrive bit-exact (transposed into our layout).
  stored = load_file(tmp_path / "model.safetensors")["model.embed_tokens.weight"]
  np.testing.assert_array_equal(np.asarray(model.embed[...]), stored)
  tokens = _tokens((2, 12))
  got = np.asarray(_forward(model, tokens))
  want = _torch_logits(ref, tokens)  # bf16-rounded weights, float32 compute
  assert got.dtype == np.float32
  assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
  mixed = hf.from_pretrained(tmp_path, jnp.bfloat16, param_dtype=jnp.float32)
  assert mixed.config.dtype == "bfloat16" and mixed.embed[...].dtype == jnp.float32
  # bf16 weights into float32 parameters: float32 compute, tight tolerance.
  model32 = hf.from_pretrained(tmp_path, jnp.float32)
  np.testing.assert_allclose(_forward(model32, tokens), want, atol=TOL, rtol=0)


def _edit_checkpoint(src, dst, edit):
  tensors = load_file(src / "model.safetensors")
  edit(tensors)
  os.makedirs(dst, exist_ok=True)
  save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
  with open(src / "config.json") as f, open(dst / "config.json", "w") as g:
    g.write(f.read())


def test_missing_weight_is_named(llama_dir, tmp_path):
  _edit_checkpoint(llama_dir, tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"missing .*model\.layers\.1\.mlp\.up_proj\.weight"):
    hf.from_pretrained(tmp_path, jnp.float32)


def test_wrong_shape_is_named(llama_dir, tmp_path):
  def edit(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
  _edit_checkpoint(llama_dir, tmp_path, edit)
  with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*"
                                       r"expected shape \(32, 64\).*got \(16, 64\)"):
    hf.from_pretrained(tmp_path, jnp.float32)


def test_unexpected_weight_is_named(llama_dir, tmp_path):
  def edit(t):
    t["model.layers.0.self_attn.o_proj.bias"] = np.zeros((64,), np.float32)
    t["model.rotary_emb.inv_freq"] = np.ones((8,), np.float32)  # a buffer: ignored
  _edit_checkpoint(llama_dir, tmp_path, edit)
  with pytest.raises(ValueError, match=r"does not use.*o_proj\.bias"):
    hf.from_pretrained(tmp_path, jnp.float32)


def test_tied_lm_head_must_equal_embedding(tmp_path):
  src = tmp_path / "src"
  _make_checkpoint(ARCHS["qwen2"], src, seed=6)
  ok, bad = tmp_path / "ok", tmp_path / "bad"
  _edit_checkpoint(src, ok, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
  hf.from_pretrained(ok, jnp.float32)
  _edit_checkpoint(src, bad, lambda t: t.update(
      {"lm_head.weight": t["model.embed_tokens.weight"] + 1}))
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    hf.from_pretrained(bad, jnp.float32)


def test_unsupported_model_type(tmp_path):
  transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'.*llama, mistral, qwen2"):
    hf.from_pretrained(tmp_path)


@pytest.mark.parametrize("arch, overrides, match", [
    ("llama", dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=4.0)),
     r"unsupported rope_type 'yarn'.*default, llama3"),
    ("llama", dict(attention_bias=True), "attention_bias"),
    ("llama", dict(mlp_bias=True), "mlp_bias"),
    ("llama", dict(hidden_act="gelu"), "hidden_act"),
    ("mistral", dict(sliding_window=4096), "sliding_window"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1), "sliding"),
    ("qwen3", dict(quantization_config=dict(quant_method="fp8")), "fp8"),
])
def test_unsupported_features_are_refused(arch, overrides, match):
  config = ARCHS[arch].to_dict() | overrides
  with pytest.raises(ValueError, match=match):
    hf.config_from_hf(type(ARCHS[arch])(**config))


def test_config_from_hf_accepts_transformers_4_rope_fields():
  """4.x configs keep rope_theta at the top level and the scaling in `rope_scaling`."""
  v5 = hf.config_from_hf(ARCHS["llama"], "float32")
  v4 = {k: v for k, v in ARCHS["llama"].to_dict().items() if k != "rope_parameters"}
  v4["rope_theta"] = 10000.0
  v4["rope_scaling"] = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                            high_freq_factor=4.0, original_max_position_embeddings=64)
  assert hf.config_from_hf(v4, "float32") == v5
  assert v5.rope_scaling == (8.0, 1.0, 4.0, 64) and v5.head_dim == 16
  assert hf.config_from_hf(ARCHS["qwen3"]).param_dtype == "bfloat16"


def test_save_refuses_a_mismatched_hf_config(tmp_path):
  model = nnx.eval_shape(lambda: init_model(ModelConfig.tiny(num_layers=2)))  # config is checked first
  with pytest.raises(ValueError, match="num_layers"):
    hf.save_pretrained(model, tmp_path, hf_config=hf.hf_config_from_config(
        ModelConfig.tiny(num_layers=3)))


def test_loader_places_tensors_on_the_default_device(llama_dir):
  model = hf.from_pretrained(llama_dir, jnp.float32)
  leaves = jax.tree.leaves(model)
  assert leaves and all(x.devices() == {jax.devices()[0]} for x in leaves)


def test_load_tokenizer(tmp_path):
  tokenizer.make_tiny_hf_tokenizer(tmp_path)
  tok = hf.load_tokenizer(tmp_path)
  ids = tok.encode("12+34=46")
  assert ids and tok.decode(ids) == "12+34=46"
  assert tok.eos_id is not None


def test_config_json_is_read_as_transformers_reads_it(checkpoint):
  """`read_hf_config` (plain JSON plus class defaults) describes the same model as `AutoConfig`."""
  _, path, _ = checkpoint
  assert (hf.config_from_hf(hf.read_hf_config(path), "float32")
          == hf.config_from_hf(transformers.AutoConfig.from_pretrained(path), "float32"))


def test_qwen3_head_dim_default_matches_transformers(tmp_path):
  """A qwen3 config.json without head_dim: transformers' Qwen3Config default (128), not hidden / heads."""
  cfg = dict(ARCHS["qwen3"].to_dict(), hidden_size=512, num_attention_heads=8)
  cfg.pop("head_dim")
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  want = transformers.AutoConfig.from_pretrained(tmp_path).head_dim
  assert hf.config_from_hf(hf.read_hf_config(tmp_path)).head_dim == want == 128


def test_loading_never_imports_torch(llama_dir):
  """Loading reads config.json and safetensors without transformers' config classes, which import
  PyTorch (~200 MiB of RSS) whenever it is installed."""
  import subprocess
  import sys
  code = ("import sys, jax.numpy as jnp; from grpo_jax import hf; "
          f"m = hf.from_pretrained({str(llama_dir)!r}, jnp.float32); "
          "assert m.config.num_layers == 2; print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "False"
