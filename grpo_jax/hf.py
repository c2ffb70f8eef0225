"""Hugging Face interop: config.json -> `ModelConfig`, safetensors <-> `Decoder` params, tokenizers.

Loading reads `config.json` with `json` and safetensors with NumPy — neither transformers' config classes
nor PyTorch is imported — and places every tensor straight into its `NamedSharding` with
`jax.make_array_from_callback`, so no device ever holds a full unsharded copy. The decoder's blocks are
stacked (`grpo_jax.model`): HF's per-layer `model.layers.{i}.*` tensors are the slices `[i]` of one
array per parameter, in both directions.
Saving writes a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads back.

Supported `model_type`s: llama (incl. Llama-3 rope scaling), mistral (without sliding window), qwen2
(q/k/v biases), qwen3 (per-head q/k RMSNorm). Anything the decoder does not implement (other rope
types, sliding-window attention, o/MLP biases, non-SiLU activations) is refused with a ValueError
instead of being silently mis-loaded.

Layouts (torch `Linear.weight` is `[out, in]`; ours is `[in, out]` with the head axis explicit):
  q_proj.weight `[N*H, D]` -> q `[D, N, H]`;  o_proj.weight `[D, N*H]` -> o `[N, H, D]`;
  q_proj.bias `[N*H]` -> q_bias `[N, H]`;  gate_proj.weight `[F, D]` -> gate `[D, F]`;  norms as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from grpo_jax import model as model_lib
from grpo_jax import sharding as sharding_lib
from grpo_jax import tokenizer as tokenizer_lib

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# Checkpoint entries that are buffers, not parameters.
_IGNORED_KEYS = re.compile(r".*rotary_emb\.inv_freq$")

# Our parameter path (below `layers` for the stacked per-layer ones, whose slice i is HF's
# `model.layers.{i}.<name>`) -> (HF name, layout kind).
_TOP_LEVEL = {"embed": ("model.embed_tokens.weight", "copy"),
              "final_norm": ("model.norm.weight", "copy"),
              "lm_head": ("lm_head.weight", "linear")}
_PER_LAYER = {
    ("attn_norm",): ("input_layernorm.weight", "copy"),
    ("mlp_norm",): ("post_attention_layernorm.weight", "copy"),
    ("attn", "q"): ("self_attn.q_proj.weight", "heads_in"),
    ("attn", "k"): ("self_attn.k_proj.weight", "heads_in"),
    ("attn", "v"): ("self_attn.v_proj.weight", "heads_in"),
    ("attn", "o"): ("self_attn.o_proj.weight", "heads_out"),
    ("attn", "q_bias"): ("self_attn.q_proj.bias", "heads_bias"),
    ("attn", "k_bias"): ("self_attn.k_proj.bias", "heads_bias"),
    ("attn", "v_bias"): ("self_attn.v_proj.bias", "heads_bias"),
    ("attn", "q_norm"): ("self_attn.q_norm.weight", "copy"),
    ("attn", "k_norm"): ("self_attn.k_norm.weight", "copy"),
    ("mlp", "gate"): ("mlp.gate_proj.weight", "linear"),
    ("mlp", "up"): ("mlp.up_proj.weight", "linear"),
    ("mlp", "down"): ("mlp.down_proj.weight", "linear"),
}


def _hf_shape(kind: str, shape) -> tuple[int, ...]:
  """The checkpoint shape of a parameter whose shape in our layout is `shape`."""
  if kind == "linear":
    return (shape[1], shape[0])
  if kind == "heads_in":  # ours [D, N, H]
    return (shape[1] * shape[2], shape[0])
  if kind == "heads_out":  # ours [N, H, D]
    return (shape[2], shape[0] * shape[1])
  if kind == "heads_bias":  # ours [N, H]
    return (shape[0] * shape[1],)
  return tuple(shape)


def _to_ours(kind: str, w: np.ndarray, shape) -> np.ndarray:
  """Checkpoint array -> our layout (a NumPy view where possible: nothing is copied whole)."""
  if kind == "linear":
    return w.T
  if kind == "heads_in":
    d, n, h = shape
    return w.reshape(n, h, d).transpose(2, 0, 1)
  if kind == "heads_out":
    return w.T.reshape(shape)
  return w.reshape(shape)


def _to_hf(kind: str, w: np.ndarray) -> np.ndarray:
  """Our layout -> checkpoint array (contiguous, ready for safetensors)."""
  if kind == "linear":
    w = w.T
  elif kind == "heads_in":
    w = w.transpose(1, 2, 0).reshape(-1, w.shape[0])
  elif kind == "heads_out":
    w = w.reshape(-1, w.shape[-1]).T
  elif kind == "heads_bias":
    w = w.reshape(-1)
  return np.ascontiguousarray(w)


def _hf_names(path, num_layers: int) -> tuple[list[str], str, bool]:
  """`(HF keys, layout kind, stacked)` of the parameter at nnx state path `path`: one key for a top-level
  parameter (e.g. ('embed',)), `num_layers` keys — slice i is `model.layers.{i}.*` — for a stacked one
  (e.g. ('layers', 'attn', 'q'))."""
  if path[0] == "layers":
    name, kind = _PER_LAYER[tuple(path[1:])]
    return [f"model.layers.{i}.{name}" for i in range(num_layers)], kind, True
  name, kind = _TOP_LEVEL[path[0]]
  return [name], kind, False


def _config_dict(hf_config) -> dict:
  if isinstance(hf_config, dict):
    return dict(hf_config)
  if isinstance(hf_config, str):
    return json.loads(hf_config)
  return hf_config.to_dict()


def _rope(c: dict, model_type: str) -> tuple[float, tuple | None]:
  """(rope_theta, ModelConfig.rope_scaling) from transformers 5.x `rope_parameters` or 4.x
  `rope_scaling` + `rope_theta`."""
  rp = c.get("rope_parameters") or c.get("rope_scaling") or {}
  if rp and all(isinstance(v, dict) for v in rp.values()):
    raise ValueError(f"{model_type}: per-layer-type rope_parameters {sorted(rp)} are not supported")
  theta = float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))
  if float(rp.get("partial_rotary_factor") or c.get("partial_rotary_factor") or 1.0) != 1.0:
    raise ValueError(f"{model_type}: partial_rotary_factor != 1 is not supported")
  rope_type = rp.get("rope_type", rp.get("type", "default"))
  if rope_type == "default":
    return theta, None
  if rope_type == "llama3":
    original = rp.get("original_max_position_embeddings", c.get("max_position_embeddings"))
    return theta, (float(rp["factor"]), float(rp["low_freq_factor"]),
                   float(rp["high_freq_factor"]), int(original))
  raise ValueError(f"unsupported rope_type {rope_type!r} in a {model_type} config; supported rope "
                   f"types: {', '.join(SUPPORTED_ROPE_TYPES)}")


def config_from_hf(hf_config, dtype="bfloat16", param_dtype=None) -> model_lib.ModelConfig:
  """`ModelConfig` from a transformers config (a `PretrainedConfig`, its dict or its JSON string).

  `dtype` is the activation dtype, `param_dtype` the parameter dtype (default: `dtype`).
  Raises ValueError naming the unsupported model_type / rope type / feature.
  """
  c = _config_dict(hf_config)
  model_type = c.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported model types: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")

  def refuse(what):
    raise ValueError(f"{model_type} config with {what} is not supported by grpo_jax.model")

  if c.get("quantization_config"):
    refuse(f"quantization_config (quant_method={c['quantization_config'].get('quant_method')!r})")
  if c.get("hidden_act", "silu") != "silu":
    refuse(f"hidden_act={c['hidden_act']!r} (only 'silu')")
  if c.get("attention_bias"):  # qwen2 has q/k/v biases built in and no flag; this one adds o_proj.bias
    refuse("attention_bias=True")
  if c.get("mlp_bias"):
    refuse("mlp_bias=True")
  layer_types = set(c.get("layer_types") or ())
  if c.get("use_sliding_window") or layer_types - {"full_attention"}:
    refuse(f"sliding-window attention (layer_types {sorted(layer_types)})")
  if model_type == "mistral" and c.get("sliding_window") is not None:
    refuse(f"sliding_window={c['sliding_window']} (only null)")
  rope_theta, rope_scaling = _rope(c, model_type)
  heads = c["num_attention_heads"]
  return model_lib.ModelConfig(
      vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
      intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
      num_heads=heads, num_kv_heads=c.get("num_key_value_heads") or heads,
      head_dim=c.get("head_dim") or c["hidden_size"] // heads,
      rope_theta=rope_theta, rope_scaling=rope_scaling, rms_norm_eps=c.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(c.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3",
      dtype=jnp.dtype(dtype).name, param_dtype=jnp.dtype(param_dtype or dtype).name)


def _safetensors_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      return [os.path.join(path, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path}")
  return files


# What transformers' config classes fill in for keys a config.json may omit, where it differs from the
# fallbacks `config_from_hf` uses (reading the JSON directly must describe the same model).
_HF_DEFAULTS = {"qwen3": {"head_dim": 128}, "mistral": {"sliding_window": 4096}}


def read_hf_config(path) -> dict:
  """`config.json` of a local HF directory as a dict, with the class defaults `_HF_DEFAULTS` filled in.
  Plain JSON: importing transformers' config classes would import PyTorch (+200 MiB) when installed."""
  filename = os.path.join(os.fspath(path), "config.json")
  if not os.path.isfile(filename):
    raise FileNotFoundError(f"no config.json in {os.fspath(path)} (a Hugging Face model directory)")
  with open(filename) as f:
    c = json.load(f)
  for key, value in _HF_DEFAULTS.get(c.get("model_type"), {}).items():
    c.setdefault(key, value)
  return c


def from_pretrained(path, dtype=jnp.bfloat16, *, mesh=None, param_dtype=None, scan_layers: bool = True,
                    scan_decode: bool = True, remat: str = "none", head: str = "lm") -> model_lib.Decoder:
  """A `Decoder` from a local Hugging Face directory (config.json + *.safetensors).

  Args:
    path: the directory (sharded checkpoints with `model.safetensors.index.json` are fine).
    dtype: activation dtype; `param_dtype` (default `dtype`) is what parameters are stored in.
    mesh: a `(data, fsdp, tensor)` mesh (`grpo_jax.sharding.make_mesh`); parameters are placed
      directly into `grpo_jax.sharding.param_shardings`. None: the default device.
    scan_layers, scan_decode, remat: how forwards apply the layers (`grpo_jax.model.ModelConfig`).
    head: "lm" (a causal LM: `lm_head.weight` unless tied) or "none": the decoder body only, for
      checkpoints with another head (`*ForSequenceClassification`'s `score.weight`, read by the caller,
      see `grpo_jax.reward_model`); the model then has no `lm_head` and tensors outside `model.` are
      not checked.

  The returned module has `hf_config_json` (the source config, a static string attribute that
  survives `nnx.split`/`nnx.merge`) so that `save_pretrained` writes the same config back.
  Raises ValueError naming the HF key on a missing, unexpected or wrongly shaped tensor.
  """
  path = os.fspath(path)
  if head not in ("lm", "none"):
    raise ValueError(f"head must be 'lm' or 'none', got {head!r}")
  hf_config = read_hf_config(path)
  config = dataclasses.replace(config_from_hf(hf_config, dtype, param_dtype), scan_layers=scan_layers,
                               scan_decode=scan_decode, remat=remat)
  if head == "none":  # tied: no lm_head parameter (the logits of this model are not meant to be used)
    config = dataclasses.replace(config, tie_embeddings=True)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_lib.Decoder(config, nnx.Rngs(0))))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = [device] * len(nnx.to_flat_state(abstract))
  else:
    shardings = [v.get_value() for _, v in
                 nnx.to_flat_state(sharding_lib.param_shardings(abstract, mesh))]

  with contextlib.ExitStack() as stack:
    files = {}  # HF key -> open safetensors file
    for filename in _safetensors_files(path):
      f = stack.enter_context(safe_open(filename, framework="numpy"))
      files.update(dict.fromkeys(f.keys(), f))
    expected = {}  # our path -> (HF keys, abstract variable, kind, stacked)
    for p, var in nnx.to_flat_state(abstract):
      keys, kind, stacked = _hf_names(p, config.num_layers)
      expected[p] = (keys, var, kind, stacked)
    _check_keys(path, config, expected,
                files if head == "lm" else {k: f for k, f in files.items() if k.startswith("model.")})

    flat = []
    for (p, (keys, var, kind, stacked)), sharding in zip(expected.items(), shardings):
      target = var.get_value().dtype
      shard = _shard_reader(files, keys, kind, var.shape, stacked, target)
      flat.append((p, var.replace(jax.make_array_from_callback(var.shape, sharding, shard))))
  model = nnx.merge(graphdef, nnx.from_flat_state(flat))
  model.hf_config_json = json.dumps(hf_config)
  return model


def _shard_reader(files, keys, kind, shape, stacked: bool, dtype):
  """The `make_array_from_callback` callback of one parameter: index -> that block, cast to `dtype`.

  Host memory stays at one checkpoint tensor plus one device's block: a stacked parameter's block is
  assembled layer by layer from the layers it spans, and replicas (equal indices) share one read."""
  done = {}

  def one(key, layer_shape, idx):
    return np.asarray(_to_ours(kind, files[key].get_tensor(key), layer_shape)[idx]).astype(dtype)

  def read(idx):
    cache_key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in idx)
    if cache_key not in done:
      if stacked:
        layers = range(shape[0])[idx[0]]
        done[cache_key] = np.stack([one(keys[i], shape[1:], idx[1:]) for i in layers])
      else:
        done[cache_key] = one(keys[0], shape, idx)
    return done[cache_key]

  return read


def _check_keys(path, config, expected: dict, files: dict) -> None:
  """Missing / unexpected / wrongly shaped checkpoint tensors -> ValueError naming the HF keys."""
  wanted = {}  # HF key -> its shape in the checkpoint
  for keys, var, kind, stacked in expected.values():
    for key in keys:
      wanted[key] = _hf_shape(kind, var.shape[1:] if stacked else var.shape)
  missing = [k for k in wanted if k not in files]
  if missing:
    raise ValueError(f"checkpoint {path} is missing {len(missing)} weight(s) that config.json "
                     f"implies: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  for key, want in wanted.items():
    got = tuple(files[key].get_slice(key).get_shape())
    if want != got:
      raise ValueError(f"weight {key} in {path}: expected shape {want} (from config.json), got {got}")
  extra = sorted(k for k in files if k not in wanted and not _IGNORED_KEYS.match(k))
  if config.tie_embeddings and "lm_head.weight" in extra:
    # Some exporters write the tied head out; it must then be the embedding itself.
    embed = "model.embed_tokens.weight"
    if not np.array_equal(files["lm_head.weight"].get_tensor("lm_head.weight"),
                          files[embed].get_tensor(embed)):
      raise ValueError(f"{path}: tie_word_embeddings=True but lm_head.weight differs from {embed}")
    extra.remove("lm_head.weight")
  if extra:
    raise ValueError(f"checkpoint {path} has {len(extra)} weight(s) the model does not use "
                     f"(an unsupported feature?): {', '.join(extra[:8])}")


def hf_config_from_config(config: model_lib.ModelConfig):
  """A transformers config for a `ModelConfig` (qwen3 if qk_norm, qwen2 if qkv_bias, else llama)."""
  import transformers  # noqa: PLC0415 - saving may import torch; loading never does
  if config.qk_norm and config.qkv_bias:
    raise ValueError("no supported HF model_type has both q/k/v biases and q/k norms")
  model_type = "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    factor, low, high, original = config.rope_scaling
    rope.update(rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                original_max_position_embeddings=original)
  return transformers.AutoConfig.for_model(
      model_type, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps, rope_parameters=rope,
      tie_word_embeddings=config.tie_embeddings, architectures=[_ARCHITECTURES[model_type]])


def _config_for_save(model, hf_config):
  import transformers  # noqa: PLC0415
  source = hf_config if hf_config is not None else getattr(model, "hf_config_json", None)
  if source is None:
    cfg = hf_config_from_config(model.config)
  else:
    d = _config_dict(source)
    cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    derived = dataclasses.replace(config_from_hf(cfg, model.config.dtype, model.config.param_dtype),
                                  scan_layers=True, scan_decode=True)
    ours = dataclasses.replace(model.config, remat="none", scan_layers=True, scan_decode=True)
    if derived != ours:
      diff = {f.name: (getattr(derived, f.name), getattr(ours, f.name))
              for f in dataclasses.fields(ours) if getattr(derived, f.name) != getattr(ours, f.name)}
      raise ValueError(f"hf_config does not describe this model; (hf_config, model) differ in {diff}")
  cfg.architectures = cfg.architectures or [_ARCHITECTURES[cfg.model_type]]
  cfg.dtype = model.config.param_dtype  # what the safetensors hold
  return cfg


def _gather(x) -> np.ndarray:
  if not x.is_fully_addressable:  # multi-host: every process must call save_pretrained
    from jax.experimental import multihost_utils  # noqa: PLC0415
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def save_pretrained(model: model_lib.Decoder, path, *, hf_config=None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json + safetensors that `transformers.AutoModelForCausalLM` loads back.

  Args:
    model: a `Decoder` (its parameters may be sharded; each tensor is gathered to host one at a time).
    path: output directory (created).
    hf_config: the transformers config to write (a `PretrainedConfig`, dict or JSON string);
      default the one `from_pretrained` stored on the model, else one built from `model.config`.
      It must describe the same architecture as `model.config` (checked).
    max_shard_bytes: above this the weights are split into `model-0000k-of-0000n.safetensors`
      files plus `model.safetensors.index.json`, which also bounds host memory to one shard.

  On several hosts every process must call this (gathers are collective); process 0 writes.
  """
  path = os.fspath(path)
  cfg = _config_for_save(model, hf_config)
  shards, size = [[]], 0
  for key, kind, value in _hf_tensors(model):
    nbytes = math.prod(value.shape) * value.dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((key, kind, value))
    size += nbytes
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
    cfg.save_pretrained(path)
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  weight_map, total = {}, 0
  for name, shard in zip(names, shards):
    tensors = {}
    for key, kind, value in shard:
      tensors[key] = _to_hf(kind, _gather(value))
      weight_map[key] = name
      total += tensors[key].nbytes
    if writer:
      save_file(tensors, os.path.join(path, name), metadata={"format": "pt"})
  if writer and len(shards) > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _hf_tensors(model: model_lib.Decoder):
  """`(HF key, layout kind, device array)` per checkpoint tensor, in HF order (embedding, layer 0 ... L-1,
  final norm, head); a stacked parameter yields its slice `[i]` for layer i."""
  top, per_layer = [], [[] for _ in range(model.config.num_layers)]
  for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    keys, kind, stacked = _hf_names(p, model.config.num_layers)
    value = var.get_value()
    if stacked:
      for i, key in enumerate(keys):
        per_layer[i].append((key, kind, value[i]))
    else:
      top.append((keys[0], kind, value))
  heads = [t for t in top if t[0] != "model.embed_tokens.weight"]
  return [t for t in top if t[0] == "model.embed_tokens.weight"] + sum(per_layer, []) + heads


def load_tokenizer(path, **kwargs) -> tokenizer_lib.HFTokenizer:
  """The tokenizer of a local HF directory, as a `grpo_jax.tokenizer.HFTokenizer` (encode / decode /
  left-padded batches / chat template); `kwargs` go to `transformers.AutoTokenizer.from_pretrained`."""
  return tokenizer_lib.load_tokenizer(os.fspath(path), **kwargs)
