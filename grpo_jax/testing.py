"""Test doubles shared by the tests, the notebooks and the benchmarks: random models and checkpoints.

Random weights here are drawn with NumPy (an eager `jax.random` draw compiles once per parameter shape:
seconds on a small CPU), and norms / biases are perturbed away from their 1 / 0 initial values so that a
layout bug (a transposed or misnamed weight) cannot hide behind them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grpo_jax.model import ModelConfig, init_model


def random_model(config: ModelConfig, seed: int = 0, norm_noise: float = 0.3):
  """A `Decoder` with NumPy-random parameters: matrices ~ N(0, 1/fan_in) (logits of std ~1), vectors
  (norm weights, biases) around 1 with std `norm_noise`."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: init_model(config)))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    shape = x.shape[1:] if "'layers'" in name else x.shape  # one layer of the stacked blocks
    if "norm" in name or "bias" in name:
      return jnp.asarray(1.0 + norm_noise * rng.standard_normal(x.shape), x.dtype)
    # fan_in is D for the embedding (tied: it is the output projection too), N*H for `o`.
    fan_in = shape[1] if "embed" in name else np.prod(shape[:2]) if "'o'" in name else shape[0]
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), x.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


def randomize_torch_model(model, seed: int = 0) -> None:
  """In place: O(1) logits, norms around 1 and biases around 0 but not at them (a transformers model)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.3 * noise)
      elif name.endswith("bias"):
        p.copy_(0.3 * noise)
      elif "embed_tokens" in name:
        p.copy_(0.5 * noise)
      else:  # Linear weight [out, in]
        p.copy_(noise / p.shape[1] ** 0.5)


def make_tiny_hf_checkpoint(hf_config, path, seed: int = 0, dtype=None):
  """Saves a random transformers model of `hf_config` to `path`; returns the float32 torch model."""
  import torch
  import transformers
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(hf_config).float()
  randomize_torch_model(model, seed)
  model.eval()
  model.to(dtype or torch.float32).save_pretrained(path)
  return model
