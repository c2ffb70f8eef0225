"""The peer-benchmark GRPO step with grpo_jax: jitted sampler -> host reward -> `Trainer.prepare`
(reference log-probs, advantages) -> `Trainer.step` (one AdamW update). Prints one `RESULT {json}` line.

Usage: python benchmarks/peers/bench_grpo_jax.py DATA_DIR [--steps 9] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("data_dir")
  ap.add_argument("--steps", type=int, default=9)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--profile_dir", default="", help="write a jax.profiler trace of the last step here")
  ap.add_argument("--decode", choices=("unrolled", "scan"), default="unrolled",
                  help="ModelConfig.scan_decode: unrolled decode layers (faster on a CPU) or the layer scan (the "
                       "default: a generate program independent of depth)")
  ap.add_argument("--remat", default="dots", help="ModelConfig.remat of the update (dots: no slower here, "
                                                   "-130 MiB of activations)")
  ap.add_argument("--dtype", default="float32", help="activation/matmul dtype (bfloat16: bf16 matmuls)")
  ap.add_argument("--off_policy", action="store_true",
                  help="one-step-off-policy: the next rollout runs (worker thread) during this update")
  ap.add_argument("--compilation_cache", default="",
                  help="JAX persistent compilation cache folder (a warm cache skips the XLA compiles)")
  args = ap.parse_args()
  if args.steps <= args.warmup:
    ap.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  import grpo_jax
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from grpo_jax import async_rollout, hf, rewards, rollout, sampler, sharding, train

  c = common
  model_dir = os.path.join(args.data_dir, "model")
  prompts = common.load_prompts(args.data_dir)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  model = hf.from_pretrained(model_dir, jnp.dtype(args.dtype), mesh=mesh, param_dtype=jnp.float32,
                             scan_decode=args.decode == "scan", remat=args.remat)
  graphdef, params = nnx.split(model)
  tokenizer = hf.load_tokenizer(model_dir)
  tx, schedule = train.make_optimizer(c.LEARNING_RATE, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0)
  trainer = train.Trainer(
      graphdef, params, mesh, tx=tx, schedule=schedule,
      loss_cfg=train.LossConfig(beta=c.BETA, kl_kind="k3", clip_low=c.EPSILON, clip_high=c.EPSILON,
                                temperature=c.TEMPERATURE),
      adv_cfg=train.AdvantageConfig(), group_size=c.GROUP_SIZE)
  # eos_id=None: every completion is exactly T tokens (the shared workload forbids early stops).
  generate = sampler.jit_generate(graphdef, mesh, trainer.param_shardings, max_new_tokens=c.COMPLETION_LEN,
                                  temperature=c.TEMPERATURE, eos_id=None, pad_id=tokenizer.pad_id)
  reward_fn = lambda prompts, completions, answer, **_: common.exact_match_reward(completions, answer)  # noqa
  runner = rewards.RewardRunner([reward_fn], [1.0])
  state = trainer.init_state(params, jax.random.PRNGKey(c.SEED))
  ref_params = jax.tree.map(lambda x: x.copy(), state.params)
  jax.block_until_ready((state, ref_params))
  setup_s = time.perf_counter() - T_START
  fmt = rollout.PromptFormat(use_chat_template=False)
  key = jax.random.PRNGKey(c.SEED + 1)

  prefetch = async_rollout.OneStepOff() if args.off_policy else None
  step_times, cpu_times, phases, rewards_mean = [], [], [], []
  for step in range(args.steps):
    examples = prompts[step * c.PROMPTS_PER_STEP:(step + 1) * c.PROMPTS_PER_STEP]
    timer = common.Timer()
    profiling = args.profile_dir and step == args.steps - 1
    if profiling:
      jax.profiler.start_trace(args.profile_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    with timer("rollout"):  # sampling on device + decode + reward on host (blocks on the samples)
      ro = prefetch.take() if prefetch is not None else None  # --off_policy: started during the last update
      ro = ro or rollout.rollout(generate, state.params, examples, tokenizer, runner,
                                 jax.random.fold_in(key, step), group_size=c.GROUP_SIZE,
                                 prompt_len=c.PROMPT_LEN, fmt=fmt)
    if prefetch is not None and step + 1 < args.steps:
      nxt = prompts[(step + 1) * c.PROMPTS_PER_STEP:(step + 2) * c.PROMPTS_PER_STEP]
      prefetch.start(lambda p, ex=nxt, k=jax.random.fold_in(key, step + 1): rollout.rollout(
          generate, p, ex, tokenizer, runner, k, group_size=c.GROUP_SIZE, prompt_len=c.PROMPT_LEN, fmt=fmt),
          state.params, None)
    with timer("reference"):  # reference log-probs + advantages
      batch = trainer.shard_batch(ro.batch)
      batch, _ = trainer.prepare(state.params, ref_params, batch, ro.rewards_BxG, ro.valid_N)
      jax.block_until_ready(batch)
    with timer("update"):  # policy forward + backward + AdamW
      state, metrics = trainer.step(state, batch)
      loss = float(metrics["loss"])
    step_times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
    if profiling:
      jax.profiler.stop_trace()
    assert np.isfinite(loss), loss
    assert int(ro.batch["mask"].sum()) == c.GROUP_SIZE * c.PROMPTS_PER_STEP * c.COMPLETION_LEN
    phases.append(timer.totals)
    rewards_mean.append(float(ro.rewards_BxG.mean()))

  timed = phases[args.warmup:]
  phase_median = {k: float(np.median([p[k] for p in timed])) for k in timed[0]}
  impl = ("grpo_jax" + ("-scan-decode" if args.decode == "scan" else "") + ("-bf16" if args.dtype != "float32" else "")
          + ("-off-policy" if args.off_policy else "") + ("-warm-cache" if args.compilation_cache else ""))
  common.emit(common.summarize(impl, step_times, warmup=args.warmup, cpu_times=cpu_times, extra={
      "version": grpo_jax.__version__, "jax": jax.__version__, "setup_s": setup_s,
      "phases_per_step_s": [{k: round(v, 4) for k, v in p.items()} for p in phases],
      "first_step_phases_s": phases[0], "median_phases_s": phase_median,
      "mean_reward": float(np.mean(rewards_mean))}))


if __name__ == "__main__":
  main()
