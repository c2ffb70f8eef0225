"""Benchmark: S seeds as ONE vmapped program vs the same seeds one at a time; and what a tiny Decoder
policy would cost on T2 (the reason the toys are tables).

  python -m grpo_jax.toys.bench [--out docs/ablations/speedup.json] [--repeats 3]

Execution alone (each program compiled once, then timed: median of repeats), and end to end with the
compile, against a shell loop that runs one seed per process (S compiles). Wall-clock numbers on whatever
machine runs this, so they are printed with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import ablate

CASES = (("T0", "experiments/ablations/std_norm.py", "grpo"),
         ("T1", "experiments/ablations/loss_agg.py", "seq_mean_token_mean"),
         ("T2", "experiments/ablations/rft.py", "grpo_outcome"))


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def seeds_speedup(path: str, arm_name: str, repeats: int) -> dict:
  """Wall time of all seeds of `arm_name` vmapped vs a Python loop over single-seed calls."""
  axis = ablate.load_suite(path).axes[0]
  arm = next(a for a in axis.arms if a.name == arm_name)
  settings = ablate.arm_settings(axis, arm, smoke=False)
  train = ablate.make_train(settings.toy(), settings.spec)
  hp = {k: jnp.float32(v) for k, v in settings.knob_rows[0]}
  keys = jax.vmap(jax.random.key)(jnp.arange(settings.seeds))
  vmapped = jax.jit(jax.vmap(train, in_axes=(0, None)))
  single = jax.jit(train)
  t0 = time.perf_counter()
  jax.block_until_ready(vmapped(keys, hp))  # compile (+ one run)
  t_first_vmap = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(single(keys[0], hp))  # compile (+ one run)
  t_first_single = time.perf_counter() - t0
  t_vmap = _median_time(lambda: vmapped(keys, hp), repeats)
  t_loop = _median_time(lambda: [single(keys[s], hp) for s in range(settings.seeds)], repeats)
  # A seed per fresh process (a shell loop over seeds) compiles every time: S x (compile + run).
  t_fresh = settings.seeds * t_first_single
  return {"arm": f"{axis.name}/{arm_name}", "seeds": settings.seeds, "steps": settings.spec.steps,
          "vmapped_s": t_vmap, "one_at_a_time_s": t_loop, "speedup": t_loop / t_vmap,
          "vmapped_with_compile_s": t_first_vmap, "fresh_process_per_seed_s": t_fresh,
          "speedup_with_compile": t_fresh / t_first_vmap}


def decoder_step_cost(repeats: int) -> dict:
  """Seconds per GRPO step of a tiny `grpo_jax.model.Decoder` on T2's batch (256 sequences, 4 prompt
  tokens, 20 completion tokens): one `sampler.generate` plus one forward+backward of the sequence."""
  from flax import nnx

  from grpo_jax import losses, sampler
  from grpo_jax.model import ModelConfig, init_model

  config = ModelConfig.tiny(vocab_size=16, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                            num_kv_heads=1, head_dim=32)
  model = init_model(config, seed=0)
  n, p, t = 256, 4, 20
  prompts = jnp.ones((n, p), jnp.int32)
  mask = jnp.ones((n, p), jnp.int32)
  gen = lambda: sampler.generate(model, prompts, mask, jax.random.key(0), max_new_tokens=t).tokens  # noqa: E731
  jax.block_until_ready(gen())
  graphdef, params = nnx.split(model)

  @jax.jit
  def grad_step(params, tokens):
    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens)
      return -jnp.mean(losses.token_logprobs(logits[:, :-1], tokens[:, 1:]))
    return jax.grad(loss)(params)

  tokens = jnp.ones((n, p + t), jnp.int32)
  jax.block_until_ready(grad_step(params, tokens))
  t_gen, t_grad = _median_time(gen, repeats), _median_time(lambda: grad_step(params, tokens), repeats)
  return {"sequences": n, "generate_s": t_gen, "forward_backward_s": t_grad, "step_s": t_gen + t_grad}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="", help="also write the numbers as JSON here")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  load0 = os.getloadavg()[0]
  result = {"cases": [], "load_avg_start": load0}
  for name, path, arm in CASES:
    row = dict(toy=name, **seeds_speedup(path, arm, args.repeats))
    result["cases"].append(row)
    print(f"{name} {row['arm']}: {row['seeds']} seeds x {row['steps']} steps — vmapped {row['vmapped_s']:.2f}s, "
          f"one at a time {row['one_at_a_time_s']:.2f}s, speed-up {row['speedup']:.1f}x; with compile: "
          f"vmapped {row['vmapped_with_compile_s']:.1f}s vs a fresh process per seed "
          f"{row['fresh_process_per_seed_s']:.1f}s ({row['speedup_with_compile']:.1f}x)", flush=True)
  result["decoder"] = decoder_step_cost(args.repeats)
  d = result["decoder"]
  suite = ablate.load_suite("experiments/ablations/all.py")
  d["suite_seed_steps"] = sum(s.seeds * s.spec.steps * len(s.sub_arms()) for axis in suite.axes
                              for s in (ablate.arm_settings(axis, arm, smoke=False) for arm in axis.arms))
  print(f"tiny Decoder on T2's batch: generate {d['generate_s']:.3f}s + forward/backward "
        f"{d['forward_backward_s']:.3f}s = {d['step_s']:.3f}s per GRPO step; the suite's "
        f"{d['suite_seed_steps']} seed-steps would take ~{d['suite_seed_steps'] * d['step_s'] / 3600:.1f} h",
        flush=True)
  result["load_avg_end"] = os.getloadavg()[0]
  print(f"load average {load0:.1f} -> {result['load_avg_end']:.1f} on {os.cpu_count()} CPUs")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
