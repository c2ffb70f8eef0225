"""The memory planner: parameter bytes by hand, its numbers against XLA's `memory_analysis()` of the real
compiled programs, the knobs it models, and the refusal of a run that cannot fit."""

import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from grpo_jax import config as config_lib
from grpo_jax import experiment
from grpo_jax import plan as plan_lib
from grpo_jax import sampler as sampler_lib
from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.model import Decoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**changes):
  """experiments/default.py with a smaller model and batch; `changes` as {"section__key": value} (or
  {"key": value} at the top level)."""
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  c.model.tiny = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16)
  c.rollout.prompts_per_step, c.grpo.group_size = 4, 8
  c.rollout.prompt_len, c.rollout.max_new_tokens = 16, 32
  c.eval.batch_size, c.eval.k = 8, 4
  c.grpo.beta = 0.04  # the reference: its params and the prepare phase's forward
  for key, value in changes.items():
    *section, name = key.split("__")
    (c[section[0]] if section else c)[name] = value
  return c


def test_param_and_optimizer_bytes_by_hand():
  # vocab 64, D 32, F 48, 2 layers, 4 heads, 2 KV heads, H 8, tied, float32, on (data 2, fsdp 2, tensor 2).
  c = _config(mesh=(2, 2, 2))
  c.model.tiny = dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8)
  plan = plan_lib.plan_memory(c, 8, vocab_size=64)
  # Per device: vocab and heads/kv_heads/mlp halve over tensor, embed (D) halves over fsdp, layers stay.
  embed = (64 // 2) * (32 // 2)  # [V, D]
  norms = 2 * (2 * (32 // 2)) + 32 // 2  # attn_norm, mlp_norm [L, D]; final_norm [D]
  q = o = 2 * (32 // 2) * (4 // 2) * 8  # [L, D, N, H], [L, N, H, D]
  k = v = 2 * (32 // 2) * (2 // 2) * 8  # [L, D, K, H]
  mlp = 3 * 2 * (32 // 2) * (48 // 2)  # gate, up [L, D, F]; down [L, F, D]
  params = 4 * (embed + norms + q + o + k + v + mlp)
  assert plan.bytes["params"] == params == 17728
  assert plan.bytes["ref_params"] == params  # beta > 0 keeps a reference copy
  # AdamW: mu and nu shard like the params; two int32 step counts (Adam's, the schedule's), replicated.
  assert plan.bytes["opt_state"] == 2 * params + 2 * 4
  # bfloat16 parameters: half of everything, and no reference without the KL term.
  c.model.param_dtype, c.grpo.beta = "bfloat16", 0.0
  bf16 = plan_lib.plan_memory(c, 8, vocab_size=64)
  assert bf16.bytes["params"] == params // 2 and bf16.bytes["ref_params"] == 0
  # KV cache: 2 x [L, B, K, S, H] float32 with B = max(N = 32, eval 8 x 4) / 4 batch shards, K = 2 / 2.
  assert plan.bytes["kv_cache"] == 2 * 2 * (32 // 4) * (2 // 2) * (16 + 32 - 1) * 8 * 4


def _compiled(c, vocab):
  """`memory_analysis()` of the update, prepare and sampler programs the loop compiles for `c`, on one
  CPU device, from abstract arguments (lowered and compiled, never run)."""
  plan = plan_lib.plan_memory(c, 1, vocab_size=vocab)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(plan.model, nnx.Rngs(params=0))))
  mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
  tx, schedule = train_lib.make_optimizer(c.optim.lr)
  g, r = c.grpo, c.rollout
  trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=schedule,
                              loss_cfg=experiment.loss_config(c), adv_cfg=experiment.advantage_config(c),
                              group_size=g.group_size, grad_accum=g.grad_accum,
                              num_minibatches=g.num_minibatches)
  s = jax.ShapeDtypeStruct
  n, p, t = r.prompts_per_step * g.group_size, r.prompt_len, r.max_new_tokens
  raw = {"prompt_tokens": s((n, p), jnp.int32), "prompt_mask": s((n, p), jnp.int32),
         "tokens": s((n, t), jnp.int32), "mask": s((n, t), jnp.int32), "old_logp": s((n, t), jnp.float32),
         "truncated": s((n,), bool)}
  prep_args = (params, params, raw, s((r.prompts_per_step, g.group_size), jnp.float32), s((n,), bool))
  prepare = trainer._prepare.lower(*prep_args).compile().memory_analysis()
  batch = jax.eval_shape(trainer._prepare, *prep_args)[0]
  key = jax.eval_shape(lambda: jax.random.key(0))
  state = jax.eval_shape(trainer._init, params, key)
  update = trainer._update.lower(state, batch).compile().memory_analysis()
  generate = sampler_lib.jit_generate(graphdef, mesh, trainer.param_shardings, max_new_tokens=t, eos_id=2)
  b = plan.rows["sampler"]
  sample = generate.lower(params, s((b, p), jnp.int32), s((b, p), jnp.int32), key).compile().memory_analysis()
  return plan, update, prepare, sample


@pytest.mark.parametrize("changes", [
    dict(),  # remat none, unchunked LM head, one micro-batch
    dict(model__remat="full", grpo__logprob_chunk=8, grpo__grad_accum=2),
], ids=["plain", "remat_chunk_accum"])
def test_plan_matches_compiled_memory(changes):
  """The planner against XLA:CPU's buffer assignment of the real programs, in float32 (XLA:CPU computes
  bfloat16 through float32 copies that TPUs and GPUs do not make). Compared, per device:
    update arguments  = params + opt_state + batch            (the donated TrainState and the batch)
    update temp       = update phase - the state arguments    (gradients, residuals, LM head, optimizer step)
    prepare temp      = prepare                               (the reference forward of one of the
                                                               num_minibatches x grad_accum parts)
    sampler temp      = kv_cache + kv_copy + sampler_work     (cache, loop copy, prefill)
  Outputs alias the donated state or are small; fsdp_gather is 0 on one device."""
  c = _config(**changes)
  vocab = 512  # a vocabulary big enough for the LM head to matter next to the blocks
  plan, update, prepare, sample = _compiled(c, vocab)
  b = plan.bytes
  pairs = {
      "update arguments": (b["params"] + b["opt_state"] + b["batch"], update.argument_size_in_bytes),
      "update temp": (plan.phases["update"] - sum(b[k] for k in plan_lib.STATE), update.temp_size_in_bytes),
      "prepare temp": (b["prepare"], prepare.temp_size_in_bytes),
      "sampler temp": (b["kv_cache"] + b["kv_copy"] + b["sampler_work"], sample.temp_size_in_bytes),
  }
  ratios = {k: planned / xla for k, (planned, xla) in pairs.items()}
  print({k: round(v, 3) for k, v in ratios.items()})
  assert abs(ratios["update arguments"] - 1) < 0.02, ratios
  assert all(0.8 <= v <= 1.2 for v in ratios.values()), ratios


def test_knobs_move_the_plan():
  """Each knob the refusal names shrinks the phase it is named for."""
  base = plan_lib.plan_memory(_config(), 8, vocab_size=4096)
  remat = plan_lib.plan_memory(_config(model__remat="full"), 8, vocab_size=4096)
  assert remat.bytes["activations"] < base.bytes["activations"] / 3
  chunked = plan_lib.plan_memory(_config(grpo__logprob_chunk=4), 8, vocab_size=4096)
  assert chunked.bytes["logits"] < base.bytes["logits"] / 3
  accum = plan_lib.plan_memory(_config(grpo__grad_accum=4), 8, vocab_size=4096)
  assert accum.rows["micro"] == base.rows["micro"] // 4 and accum.phases["update"] < base.phases["update"]
  shorter = plan_lib.plan_memory(_config(rollout__max_new_tokens=8), 8, vocab_size=4096)
  assert shorter.bytes["kv_cache"] == base.bytes["kv_cache"] * (16 + 8 - 1) // (16 + 32 - 1)
  fsdp = plan_lib.plan_memory(_config(mesh=(1, 8, 1)), 8, vocab_size=4096)
  assert fsdp.bytes["params"] * 8 == base.bytes["params"] * 1 and fsdp.bytes["fsdp_gather"] > 0


def test_refuses_a_run_that_cannot_fit():
  c = _config()
  plan = plan_lib.check_fits(c, 1, memory=2**40)  # 1 TiB: fits
  assert plan is not None and plan.peak < 2**40
  with pytest.raises(config_lib.ConfigError) as e:
    plan_lib.check_fits(c, 1, memory=plan.peak - 1)
  msg = str(e.value)
  assert e.value.key == "grpo.grad_accum" and "update phase" in msg  # the update is this run's peak
  for knob in ("grpo.grad_accum", "grpo.num_minibatches", "model.remat", "grpo.logprob_chunk", "mesh"):
    assert knob in msg
  # A sampling-bound run names the sampler's knobs first.
  long = _config(eval__batch_size=256, eval__k=8)  # 2048 sampled sequences at once
  peak = plan_lib.plan_memory(long, 1)
  assert peak.peak_phase == "sampling"
  with pytest.raises(config_lib.ConfigError, match=r"rollout\.max_new_tokens.*sampling phase"):
    plan_lib.check_fits(long, 1, memory=peak.peak // 2)

  # The config key, validated, and the check where the loop builds the experiment (before any weights).
  c.plan.device_memory_gb = -1.0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, jax.device_count())
  assert e.value.key == "plan.device_memory_gb"
  c.plan.device_memory_gb = 1e-4
  with pytest.raises(config_lib.ConfigError, match="GiB per device in its update phase"):
    experiment.build_experiment(c)


def test_cli(capsys):
  argv = ["plan", "--config=" + os.path.join(ROOT, "experiments", "default.py"), "--num_devices", "8",
          "--config.mesh=(1,8,1)"]
  assert plan_lib.main(argv + ["--device_memory_gb", "16"]) == 0
  out = capsys.readouterr().out
  assert "mesh (data, fsdp, tensor) = (1, 8, 1)" in out and "fits" in out and "kv_cache" in out
  assert plan_lib.main(argv + ["--device_memory_gb", "0.001"]) == 1
  assert "DOES NOT FIT" in capsys.readouterr().out
  assert plan_lib.main(argv + ["--config.plan.device_memory_gb=-2"]) == 2
  assert "config.plan.device_memory_gb" in capsys.readouterr().err
