"""Per-device memory plan of a GRPO run, from abstract shapes only (nothing is allocated or compiled).

  python -m grpo_jax.plan --config experiments/qwen2_5_0_5b_gsm8k.py \
      --config.model.path=/data/Qwen2.5-0.5B-Instruct --num_devices 8 --device_memory_gb 16

An `hf` model needs only its config.json. Bytes per device for the config's (data, fsdp, tensor) mesh, with
N = prompts_per_step * group_size sequences, P = rollout.prompt_len, T = rollout.max_new_tokens:

  params        each parameter's shard under `sharding.param_shardings` (on a `jax.sharding.AbstractMesh`)
  opt_state     `train.make_optimizer`'s state (`jax.eval_shape` of its init: AdamW's mu and nu, in the
                parameter dtype), sharded like the parameters as `train.Trainer` does
  ref_params    a second copy of params when grpo.beta > 0 (the frozen reference policy)
  batch         the prepared rollout batch (`train.prepare_batch`'s fields), N rows over data * fsdp
  fsdp_gather   with fsdp > 1, one layer's weights gathered whole for the layer computing (every phase)
Sampling (`sampler.make_generate_fn`, for the largest sampler batch: N, or eval.batch_size * eval.k):
  kv_cache      k and v `[L, B, K, S, H]` in the model dtype, B over data * fsdp, K over tensor, S = P + T - 1
  kv_copy       one more k (or v) array: XLA copies a while-loop-carried cache buffer (the XLA:CPU buffer
                assignment shows it; with scan_decode=False, one layer's k and v)
  sampler_work  the larger of one block's prefill (`jaxpr_memory.forward_peak` over S cache slots) and one
                decode step's 3 `[B, V]` float32 arrays (logits, Gumbel noise, log-softmax)
Prepare (`Trainer.prepare`: the reference and re-scored old-policy log-probs, forward only, in the same
N / (num_minibatches * grad_accum) rows per part as the update):
  prepare       `forward_peak` of `train.completion_logprobs` on one part, once per forward pass it runs
                (reference if beta > 0, re-scoring if old_logp == "rescore": XLA may run both side by side)
Update (`train.rollout_update` on micro-batches of N / (num_minibatches * grad_accum) rows):
  grads         params-sized; two copies with grpo.grad_accum > 1 (the accumulator and the new gradient)
  activations   `jaxpr_memory.residual_bytes` of `train.loss_fn` on one micro-batch under model.remat (the
                values the backward pass keeps), without the LM-head ones
  layer_work    what the backward of one block holds beyond its saved residuals: `forward_peak` of its vjp
                (under model.remat, the recomputation included) minus its `residual_bytes`
  logits        the LM-head residuals (the saved softmax `[rows, T, V]` float32, the transposed tied
                embedding) + the head's backward: 2 `[rows, T, V]` float32 arrays (the softmax term and the
                picked token's scatter), or with grpo.logprob_chunk = C, 3 `[rows, C, V]` blocks (+ the
                recomputed chunk)
Tensor parallelism: activations are traced with the per-device head, MLP and vocabulary widths. Weight-
shaped residuals count in full (under FSDP the backward may keep the gathered weights).

The run's peak is the state (params, opt_state, ref_params, batch, fsdp_gather) plus its largest phase:
  sampling = kv_cache + kv_copy + sampler_work;  prepare = prepare;
  update   = grads + activations + LM-head residuals + max(layer_work, LM-head backward)  (the two happen
             at different times), or the optimizer step: grads + updates + new params + new opt_state.
`check_fits` refuses a config whose peak exceeds the device memory (plan.device_memory_gb, else the device's
`memory_stats()["bytes_limit"]`), naming the knobs that shrink the phase that does not fit.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from grpo_jax import config as config_lib
from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.jaxpr_memory import forward_peak, nbytes, residual_bytes
from grpo_jax import model as model_lib
from grpo_jax.model import Block, Decoder, ModelConfig

GiB, MiB = 2**30, 2**20
STATE = ("params", "opt_state", "ref_params", "batch")  # the arguments of the jitted programs
EVERY_PHASE = STATE + ("fsdp_gather",)
PHASE_ROWS = {"sampling": ("kv_cache", "kv_copy", "sampler_work"), "prepare": ("prepare",),
              "update": ("grads", "activations", "layer_work", "logits")}
# The knobs that shrink each phase, most effective first (the refusal names them).
KNOBS = {
    "update": ("grpo.grad_accum", "grpo.num_minibatches", "model.remat", "grpo.logprob_chunk", "mesh"),
    "prepare": ("grpo.logprob_chunk", "grpo.grad_accum", "grpo.num_minibatches", "mesh"),
    "sampling": ("rollout.max_new_tokens", "mesh", "rollout.prompts_per_step", "eval.batch_size", "eval.k"),
}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device by category (see the module docstring) and the peak of each phase."""

  mesh: tuple[int, int, int]
  rows: dict[str, int]  # rows per device: "rollout" N, "micro" (update micro-batch = prepare part), "sampler"
  bytes: dict[str, int]
  phases: dict[str, int]  # phase -> the state + the phase's own peak
  model: ModelConfig
  logprob_chunk: int = 0  # grpo.logprob_chunk

  @property
  def peak(self) -> int:
    return max(self.phases.values())

  @property
  def peak_phase(self) -> str:
    return max(self.phases, key=self.phases.get)


def resolve_mesh(mesh, num_devices: int) -> tuple[int, int, int]:
  """The config's mesh with its -1 entry filled in for `num_devices` devices."""
  mesh = list(mesh)
  if -1 in mesh:
    mesh[mesh.index(-1)] = num_devices // math.prod(m for m in mesh if m != -1)
  return tuple(int(m) for m in mesh)


def model_config(c, vocab_size: int | None = None) -> ModelConfig:
  """The decoder `experiment.build_model` builds: from the hf directory's config.json (no weights are read),
  or the tiny model with `vocab_size` (default: the config's tokenizer's)."""
  kw = dict(scan_layers=c.model.scan_layers, scan_decode=c.model.scan_decode, remat=c.model.remat)
  if c.model.source == "hf":
    from grpo_jax import hf  # local: only hf configs need it
    return dataclasses.replace(hf.config_from_hf(hf.read_hf_config(c.model.path), c.model.dtype), **kw)
  if vocab_size is None:
    from grpo_jax import tokenizer as tokenizer_lib
    vocab_size = tokenizer_lib.load_tokenizer(c.tokenizer or c.model.path).vocab_size
  return ModelConfig.tiny(vocab_size=vocab_size, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
                          **kw, **dict(c.model.tiny))


def local_model(cfg: ModelConfig, tensor: int) -> ModelConfig:
  """The per-device widths under `tensor`-way parallelism (`sharding.LOGICAL_RULES` put heads, kv_heads,
  mlp and vocab over `tensor`; a width the axis does not divide stays whole)."""
  if tensor == 1:
    return cfg
  part = lambda n: n // tensor if n % tensor == 0 else n  # noqa: E731
  heads, kv = part(cfg.num_heads), part(cfg.num_kv_heads)
  if heads % kv:
    heads, kv = cfg.num_heads, cfg.num_kv_heads
  return dataclasses.replace(cfg, num_heads=heads, num_kv_heads=kv, vocab_size=part(cfg.vocab_size),
                             intermediate_size=part(cfg.intermediate_size))


def _abstract(module_fn):
  """`(graphdef, state)` of an abstract NNX module (`nnx.eval_shape`: no parameter is allocated)."""
  return nnx.split(nnx.eval_shape(module_fn))


def _tree_bytes(tree, shardings) -> int:
  return sum(nbytes(x, s) for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def state_bytes(c, cfg: ModelConfig, mesh: AbstractMesh) -> dict[str, int]:
  """params, opt_state and ref_params per device."""
  params = _abstract(lambda: Decoder(cfg, nnx.Rngs(params=0)))[1]
  param_sh = shd.param_shardings(params, mesh)
  tx, _ = train_lib.make_optimizer(  # the optimizer of experiment.build_experiment (its shapes)
      c.optim.lr, schedule=c.optim.schedule, weight_decay=c.optim.weight_decay, b1=c.optim.b1,
      b2=c.optim.b2, grad_clip=c.optim.grad_clip)
  opt = jax.eval_shape(tx.init, params)
  repl = NamedSharding(mesh, PartitionSpec())
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt, param_sh, transform_non_params=lambda _: repl,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))
  p = _tree_bytes(params, param_sh)
  return {"params": p, "opt_state": _tree_bytes(opt, opt_sh), "ref_params": p if c.grpo.beta != 0 else 0}


def _block_args(cfg: ModelConfig, rows: int, length: int, keys: int):
  """`(graphdef, params, x, rope, mask)` of one abstract block on `[rows, length]` tokens over `keys` keys."""
  graphdef, state = _abstract(lambda: Block(cfg, nnx.Rngs(0)))
  s = jax.ShapeDtypeStruct
  return (graphdef, state, s((rows, length, cfg.hidden_size), cfg.dtype),
          (s((rows, length, 1, cfg.head_dim), jnp.float32),) * 2, s((rows, length, keys), bool))


def sampler_bytes(cfg: ModelConfig, rows: int, prompt_len: int, new_tokens: int) -> dict[str, int]:
  """kv_cache, kv_copy and sampler_work for `rows` sequences per device (`cfg`: per-device widths)."""
  slots = prompt_len + new_tokens - 1
  one = cfg.num_layers * rows * cfg.num_kv_heads * slots * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
  graphdef, *args = _block_args(cfg, rows, max(prompt_len - 1, 1), slots)
  kv = jax.ShapeDtypeStruct((rows, cfg.num_kv_heads, slots, cfg.head_dim), cfg.dtype)
  prefill = forward_peak(lambda p, x, r, m, k, v: nnx.merge(graphdef, p)(x, r, m, (k, v, 0, None))[0],
                         *args, kv, kv)
  return {"kv_cache": 2 * one, "kv_copy": one if cfg.scan_decode else 2 * one // cfg.num_layers,
          "sampler_work": max(prefill, 3 * rows * cfg.vocab_size * 4)}


def block_backward_bytes(cfg: ModelConfig, rows: int, length: int) -> int:
  """What one block's backward pass holds beyond its own saved residuals, on `[rows, length]` tokens under
  `cfg.remat`: `forward_peak` of its vjp (the remat recomputation included) minus its `residual_bytes`."""
  graphdef, *args = _block_args(cfg, rows, length, length)

  def apply(p, x, rope, mask):
    return nnx.merge(graphdef, p)(x, rope, mask)[0]
  if cfg.remat != "none":
    apply = jax.checkpoint(apply, policy=model_lib.REMAT_POLICIES[cfg.remat])

  def backward(p, x, rope, mask, ct):
    return jax.vjp(lambda p, x: apply(p, x, rope, mask), p, x)[1](ct)
  saved = residual_bytes(apply, *args)[0]
  return max(forward_peak(backward, *args, args[1]) - saved, 0)


def micro_batch(rows: int, prompt_len: int, new_tokens: int, is_weight: bool) -> dict:
  """The abstract prepared batch of `rows` sequences (the fields `train.loss_fn` reads)."""
  s = jax.ShapeDtypeStruct
  mb = {k: s((rows, prompt_len), jnp.int32) for k in ("prompt_tokens", "prompt_mask")}
  mb.update({k: s((rows, new_tokens), jnp.int32) for k in ("tokens", "mask")})
  mb.update({k: s((rows, new_tokens), jnp.float32) for k in ("old_logp", "ref_logp", "loss_mask",
                                                              "behaviour_logp")})
  mb.update({k: s((rows,), jnp.float32) for k in ("advantages", "tokens_per_seq")})
  if is_weight:
    mb["is_weight"] = s((rows, new_tokens), jnp.float32)
  return mb


def update_bytes(c, cfg: ModelConfig, rows: int, loss_cfg) -> dict[str, int]:
  """prepare, activations, layer_work, logits and logits_saved (the LM-head residuals, part of logits) for
  `rows` sequences per device per micro-batch / prepare part (`cfg`: per-device widths)."""
  g, r = c.grpo, c.rollout
  p, t = r.prompt_len, r.max_new_tokens
  chunk = min(g.logprob_chunk, t) if g.logprob_chunk else 0
  graphdef, params = _abstract(lambda: Decoder(cfg, nnx.Rngs(params=0)))
  mb = micro_batch(rows, p, t, g.rollout_is != "none")
  score = lambda q, b: train_lib.completion_logprobs(  # noqa: E731
      graphdef, q, b["prompt_tokens"], b["prompt_mask"], b["tokens"], b["mask"], r.temperature, chunk)[0]
  forwards = int(g.beta != 0) + int(g.old_logp == "rescore")
  saved, head = residual_bytes(lambda q, b: train_lib.loss_fn(q, graphdef, b, loss_cfg)[0], params, mb,
                               last_axis=cfg.vocab_size)
  layer = block_backward_bytes(cfg, rows, p + t)
  head_backward = (3 if chunk else 2) * rows * (chunk or t) * cfg.vocab_size * 4
  return {"prepare": forwards * forward_peak(score, params, mb) if forwards else 0, "activations": saved,
          "layer_work": layer, "logits": head + head_backward, "logits_saved": head}


def plan_memory(c, num_devices: int, *, vocab_size: int | None = None, loss_cfg=None) -> MemoryPlan:
  """The `MemoryPlan` of config `c` on `num_devices` devices (the mesh's -1 resolved for that count).
  `loss_cfg` defaults to `experiment.loss_config(c)`; `vocab_size` (tiny models) to the tokenizer's."""
  mesh_shape = resolve_mesh(c.mesh, num_devices)
  mesh = AbstractMesh(mesh_shape, shd.MESH_AXES)
  cfg = model_config(c, vocab_size)
  local = local_model(cfg, mesh_shape[2])
  g, r = c.grpo, c.rollout
  shards = mesh_shape[0] * mesh_shape[1]
  n = r.prompts_per_step * g.group_size
  rows = {"rollout": n // shards, "micro": n // (g.num_minibatches * g.grad_accum) // shards,
          "sampler": max(n, c.eval.batch_size * max(c.eval.k, 1)) // shards}
  if loss_cfg is None:
    from grpo_jax.experiment import loss_config  # local: experiment imports this module
    loss_cfg = loss_config(c)
  out = state_bytes(c, cfg, mesh)
  # int32 prompt tokens and mask [N, P]; 7 [N, T] fields (tokens, mask, 4 log-probs, loss mask); 2 [N].
  out["batch"] = rows["rollout"] * (2 * r.prompt_len * 4 + 7 * r.max_new_tokens * 4 + 2 * 4)
  layers = _abstract(lambda: Decoder(local, nnx.Rngs(params=0)))[1]["layers"]
  out["fsdp_gather"] = (sum(nbytes(x) for x in jax.tree.leaves(layers)) // cfg.num_layers
                        if mesh_shape[1] > 1 else 0)
  out.update(sampler_bytes(local, rows["sampler"], r.prompt_len, r.max_new_tokens))
  out.update(update_bytes(c, local, rows["micro"], loss_cfg))
  out["grads"] = out["params"] * (2 if g.grad_accum > 1 else 1)
  state = sum(out[k] for k in EVERY_PHASE)
  saved_head = out.pop("logits_saved")
  backward = (out["grads"] + out["activations"] + saved_head
              + max(out["layer_work"], out["logits"] - saved_head))
  optimizer_step = out["grads"] + 2 * out["params"] + out["opt_state"]
  phases = {"sampling": state + sum(out[k] for k in PHASE_ROWS["sampling"]),
            "prepare": state + out["prepare"], "update": state + max(backward, optimizer_step)}
  return MemoryPlan(mesh=mesh_shape, rows=rows, bytes=out, phases=phases, model=cfg,
                    logprob_chunk=g.logprob_chunk)


def device_memory_bytes(c) -> int | None:
  """plan.device_memory_gb (GiB) when set, else the first local device's `bytes_limit`; None if unknown."""
  if c.plan.device_memory_gb:
    return int(c.plan.device_memory_gb * GiB)
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit") or None


def check_fits(c, num_devices: int, *, vocab_size: int | None = None, loss_cfg=None,
               memory: int | None = None) -> MemoryPlan | None:
  """Raises `config.ConfigError` naming the knobs to change when the planned peak exceeds `memory` (default
  `device_memory_bytes(c)`). Returns the plan, or None when the device memory is unknown (no plan made)."""
  memory = memory or device_memory_bytes(c)
  if not memory:
    return None
  plan = plan_memory(c, num_devices, vocab_size=vocab_size, loss_cfg=loss_cfg)
  if plan.peak > memory:
    phase = plan.peak_phase
    parts = ", ".join(f"{k} {plan.bytes[k] / GiB:.2f}" for k in PHASE_ROWS[phase])
    raise config_lib.ConfigError(
        f"config.{KNOBS[phase][0]}: the run needs {plan.peak / GiB:.2f} GiB per device in its {phase} phase "
        f"({parts} GiB; python -m grpo_jax.plan prints the breakdown) but a device has {memory / GiB:.2f} "
        f"GiB; to fit, change {', '.join(KNOBS[phase])} (now: {plan.rows['micro']} micro-batch rows per "
        f"device, remat {c.model.remat!r}, logprob_chunk {c.grpo.logprob_chunk}, mesh {plan.mesh}, "
        f"max_new_tokens {c.rollout.max_new_tokens}), or set plan.device_memory_gb")
  return plan


def format_plan(plan: MemoryPlan, memory: int | None = None) -> str:
  """The table `python -m grpo_jax.plan` prints (MiB per device)."""
  cfg, b, r = plan.model, plan.bytes, plan.rows
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(
      _abstract(lambda: Decoder(cfg, nnx.Rngs(params=0)))[1]))
  lines = [f"mesh (data, fsdp, tensor) = {plan.mesh}; {n_params / 1e6:.1f}M parameters ({cfg.param_dtype}), "
           f"{cfg.num_layers} layers, vocab {cfg.vocab_size}",
           f"remat {cfg.remat!r}, logprob_chunk {plan.logprob_chunk}, scan_layers {cfg.scan_layers}",
           f"rows per device: rollout {r['rollout']}, update micro-batch and prepare part {r['micro']}, "
           f"sampler {r['sampler']}", "MiB per device; the state (in every phase)"]
  lines += [f"  {k:<28}{b[k] / MiB:>12.1f}" for k in EVERY_PHASE]
  for phase, keys in PHASE_ROWS.items():
    lines.append(f"{phase} phase")
    lines += [f"  {k:<28}{b[k] / MiB:>12.1f}" for k in keys]
    lines.append(f"  {'= peak with the state':<28}{plan.phases[phase] / MiB:>12.1f}")
  lines.append(f"peak: {plan.peak / GiB:.2f} GiB per device ({plan.peak_phase} phase)")
  if memory:
    verdict = "fits" if plan.peak <= memory else "DOES NOT FIT"
    lines.append(f"device memory {memory / GiB:.2f} GiB: {verdict} ({100 * plan.peak / memory:.0f}%)")
  return "\n".join(lines)


def main(argv=None) -> int:
  """The CLI (module docstring); exit status 1 when the plan does not fit, 2 on a bad config."""
  from absl import flags
  from ml_collections import config_flags
  argv = list(sys.argv if argv is None else argv)
  fl = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                  flag_values=fl, lock_config=True, sys_argv=argv)
  flags.DEFINE_integer("num_devices", None, "Devices to plan for (default: jax.device_count()); the "
                       "config's mesh -1 is resolved for it.", flag_values=fl)
  flags.DEFINE_float("device_memory_gb", 0.0, "GiB per device to check against (default: "
                     "plan.device_memory_gb, else the device's own when JAX reports it).", flag_values=fl)
  fl(argv)
  c = fl.config
  num_devices = fl.num_devices or jax.device_count()
  try:
    config_lib.validate(c, num_devices, check_files=False)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  plan = plan_memory(c, num_devices)
  memory = int(fl.device_memory_gb * GiB) or device_memory_bytes(c)
  print(format_plan(plan, memory))
  return 0 if not memory or plan.peak <= memory else 1


if __name__ == "__main__":
  sys.exit(main())
