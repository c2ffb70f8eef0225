"""The GRPO step on an accelerator at Qwen2.5-0.5B size: decode throughput against the HBM-bandwidth bound and
train-step MFU against the bf16 peak.

Model: the real Qwen2.5-0.5B shape (vocab 151936, hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
tied embeddings, q/k/v biases), random weights — nothing is downloaded. Workload: 32 prompts × G = 16
(N = 512 sequences), prompt length 128 (random tokens), exactly 512 completion tokens, temperature 1,
β = 0.04 (k3), ε = 0.2, one AdamW update per rollout, bf16 parameters and activations.

  python benchmarks/gpu.py                      # on a GPU (H100 / H200 peaks picked by device_kind)
  python benchmarks/gpu.py --peak_tflops 989 --hbm_gbps 3350   # any other device
  python benchmarks/gpu.py --tiny               # a seconds-long CPU run of the same code (the test)

Peaks: bf16 dense tensor-core TFLOP/s and HBM GB/s from the vendors' data sheets (H100 SXM 989 / 3350,
H100 PCIe 756 / 2000, H200 989 / 4800); on an unknown device (and with --tiny) they are measured: a jitted
matmul in the model dtype and a large elementwise copy. Prints one `RESULT {json}` line.

Decode bound: every decode step must read all weights once (the tied embedding as the LM head) plus the
KV cache of the positions generated so far, for all N sequences (`roofline.decode_bytes_per_token_step`);
summed over the T steps that gives the least time, so N·T / that time is the tokens/s bound. MFU: matmul
FLOPs of the phase (`roofline.grpo_step_flops`) / time / peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # noqa: E402

# (bf16 dense TFLOP/s, HBM GB/s) by a substring of jax's device_kind.
DEVICE_PEAKS = {"H200": (989.0, 4800.0), "H100 PCIe": (756.0, 2000.0), "H100": (989.0, 3350.0)}

QWEN25_05B = dict(vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, head_dim=64, intermediate=4864)
TINY = dict(vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128)


def device_peaks(kind: str):
  for key, peaks in DEVICE_PEAKS.items():
    if key.lower() in kind.lower():
      return peaks
  return None


def measure_peaks(dtype) -> tuple[float, float]:
  """(matmul TFLOP/s, copy GB/s) measured on the default device: best of 5."""
  import jax
  import jax.numpy as jnp
  n = 1024
  a = jnp.ones((n, n), dtype)
  mm = jax.jit(lambda a: a @ a)
  x = jnp.ones((8 * 2**20,), jnp.float32)  # 32 MiB
  cp = jax.jit(lambda x: x * 2.0)

  def best(f, arg):
    jax.block_until_ready(f(arg))
    ts = []
    for _ in range(5):
      t0 = time.perf_counter()
      jax.block_until_ready(f(arg))
      ts.append(time.perf_counter() - t0)
    return min(ts)
  return 2 * n**3 / best(mm, a) / 1e12, 2 * x.nbytes / best(cp, x) / 1e9


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny model and workload, for a CPU test")
  ap.add_argument("--prompts", type=int, default=None, help="B (default 32; tiny 2)")
  ap.add_argument("--group_size", type=int, default=None, help="G (default 16; tiny 4)")
  ap.add_argument("--prompt_len", type=int, default=None, help="P (default 128; tiny 8)")
  ap.add_argument("--completion_len", type=int, default=None, help="T (default 512; tiny 8)")
  ap.add_argument("--micro_batch", type=int, default=None,
                  help="sequences per gradient-accumulation microbatch and per reference chunk (default 16)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (default 3)")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--remat", action="store_true", help="rematerialize blocks in the backward pass")
  ap.add_argument("--peak_tflops", type=float, default=None, help="device peak (default: by device_kind)")
  ap.add_argument("--hbm_gbps", type=float, default=None, help="device memory bandwidth (default: by kind)")
  args = ap.parse_args(argv)
  d = (lambda v, full, tiny: v if v is not None else (tiny if args.tiny else full))  # noqa: E731
  b, g = d(args.prompts, 32, 2), d(args.group_size, 16, 4)
  p, t = d(args.prompt_len, 128, 8), d(args.completion_len, 512, 8)
  micro, steps = d(args.micro_batch, 16, 4), d(args.steps, 3, 1)
  n = b * g

  import jax
  import jax.numpy as jnp
  import numpy as np

  from grpo_jax import model as model_lib
  from grpo_jax import sampler, sharding, train

  arch = roofline.Dims(**(TINY if args.tiny else QWEN25_05B))
  config = model_lib.ModelConfig(
      vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
      num_layers=arch.layers, num_heads=arch.heads, num_kv_heads=arch.kv_heads, head_dim=arch.head_dim,
      rope_theta=1e6, rms_norm_eps=1e-6, tie_embeddings=True, qkv_bias=True, dtype=args.dtype,
      param_dtype=args.dtype, remat=args.remat)
  mesh = sharding.make_mesh((-1, 1, 1))
  if n % (micro * sharding.batch_divisor(mesh)) and n % micro:
    raise ValueError(f"N = {n} sequences must be a multiple of --micro_batch {micro}")
  t0 = time.perf_counter()
  graphdef, params = sharding.init_sharded(lambda: model_lib.init_model(config, seed=0), mesh)
  tx, schedule = train.make_optimizer(1e-6, b1=0.9, b2=0.999, grad_clip=1.0)
  trainer = train.Trainer(graphdef, params, mesh, tx=tx, schedule=schedule, group_size=g,
                          loss_cfg=train.LossConfig(beta=0.04, clip_low=0.2, clip_high=0.2),
                          adv_cfg=train.AdvantageConfig(), grad_accum=n // micro)
  generate = sampler.jit_generate(graphdef, mesh, trainer.param_shardings, max_new_tokens=t,
                                  temperature=1.0, eos_id=None, pad_id=0)
  state = trainer.init_state(params, jax.random.PRNGKey(0))
  ref = jax.tree.map(lambda x: x.copy(), state.params)
  jax.block_until_ready((state, ref))
  setup_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  chunk = max(micro // g, 1) * g  # reference log-probs per chunk of whole groups (memory: [chunk, T, V])

  def one_step(i, state):
    key = jax.random.fold_in(jax.random.PRNGKey(1), i)
    prompts = rng.integers(1, arch.vocab, (b, p)).astype(np.int32)
    tokens, mask = sampler.repeat_for_group(prompts, np.ones_like(prompts), g)
    times = {}
    t0 = time.perf_counter()
    out = generate(state.params, tokens, mask, key)
    jax.block_until_ready(out)
    times["rollout"] = time.perf_counter() - t0
    rewards = rng.integers(0, 2, (b, g)).astype(np.float32)  # a host reward stand-in
    batch = {"prompt_tokens": np.asarray(tokens), "prompt_mask": np.asarray(mask),
             "tokens": np.asarray(out.tokens), "mask": np.asarray(out.mask),
             "old_logp": np.asarray(out.logprobs), "truncated": np.asarray(out.truncated)}
    t0 = time.perf_counter()
    parts = []
    for s in range(0, n, chunk):
      sub = trainer.shard_batch({k: v[s:s + chunk] for k, v in batch.items()})
      prepared, _ = trainer.prepare(state.params, ref, sub, rewards[s // g:(s + chunk) // g],
                                    np.ones((chunk,), bool))
      parts.append(prepared)
    full = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *parts)
    jax.block_until_ready(full)
    times["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = trainer.step(state, trainer.shard_batch(full))
    loss = float(metrics["loss"])
    times["update"] = time.perf_counter() - t0
    if not np.isfinite(loss):
      raise FloatingPointError(f"non-finite loss {loss}")
    times["step"] = sum(times.values())
    return state, times

  state, first = one_step(0, state)
  timed = []
  for i in range(steps):
    state, times = one_step(i + 1, state)
    timed.append(times)
  med = {k: statistics.median(x[k] for x in timed) for k in first}

  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  known = device_peaks(kind) if device.platform == "gpu" else None
  peak_tflops, hbm_gbps = args.peak_tflops, args.hbm_gbps
  source = "flags"
  if peak_tflops is None or hbm_gbps is None:
    measured = known or measure_peaks(jnp.dtype(args.dtype))
    source = "data sheet" if known else "measured"
    peak_tflops = peak_tflops or measured[0]
    hbm_gbps = hbm_gbps or measured[1]
  flops = roofline.grpo_step_flops(arch, n, p, t)
  elem = jnp.dtype(args.dtype).itemsize
  decode_bytes = sum(roofline.decode_bytes_per_token_step(arch, n, p + s, elem) for s in range(t))
  decode_bound_tok_s = n * t / (decode_bytes / (hbm_gbps * 1e9))
  decode_tok_s = n * t / med["rollout"]
  result = {
      "device": str(kind), "platform": device.platform, "num_devices": jax.device_count(),
      "tiny": args.tiny, "dtype": args.dtype, "B": b, "G": g, "P": p, "T": t, "micro_batch": micro,
      "params_millions": (arch.layer_matmul_params() + arch.vocab * arch.hidden) / 1e6,
      "peak_tflops": peak_tflops, "hbm_gbps": hbm_gbps, "peak_source": source, "setup_s": setup_s,
      "first_step_s": first["step"], "first_step_phases_s": first, "median_phases_s": med,
      "step_tflop": flops["step"] / 1e12,
      "decode_tokens_per_s": decode_tok_s, "decode_bound_tokens_per_s": decode_bound_tok_s,
      "decode_fraction_of_hbm_bound": decode_tok_s / decode_bound_tok_s,
      "update_mfu": flops["update"] / med["update"] / (peak_tflops * 1e12),
      "reference_mfu": flops["reference"] / med["reference"] / (peak_tflops * 1e12),
      "step_mfu": flops["step"] / med["step"] / (peak_tflops * 1e12),
  }
  print("RESULT " + json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
