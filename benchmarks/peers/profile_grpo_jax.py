"""Where grpo_jax's GRPO step spends its time on the peer workload: compile (trace+lower vs XLA compile,
per jitted function, with HLO sizes) and the steady state of each piece against its FLOP count.

Usage: python benchmarks/peers/profile_grpo_jax.py DATA_DIR [--repeats 5] [--malloc_trim] [--trace]
Run it under different XLA_FLAGS to compare compiler settings; prints one `RESULT {json}` line. With
--trace, one train step and one rollout are traced with `jax.profiler` (XLA:CPU kernel annotations on) and
the thread time is summed per kernel kind (`ynn_fusion` = XNNPACK dots, `copy_*`/`transpose_*` = layout
copies, ...), into `trace/train_step` and `trace/generate` of the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
import roofline  # noqa: E402


def kernel_shares(fn) -> dict:
  """Traces one call of `fn` and returns {kernel kind: share of the worker threads' busy time}."""
  import collections
  import glob
  import re
  import shutil
  import tempfile

  import jax
  from jax._src.lib import _profile_data  # the xplane reader bundled with jaxlib

  d = tempfile.mkdtemp(prefix="grpo_jax_trace_")
  jax.profiler.start_trace(d)
  fn()
  jax.profiler.stop_trace()
  data = _profile_data.ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
  kinds = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue
      for ev in line.events:
        if not ev.name.startswith(("ThunkExecutor", "Slinky", "end:")):
          kinds[re.sub(r"[.\d]+$", "", ev.name)] += ev.duration_ns
  shutil.rmtree(d, ignore_errors=True)
  total = sum(kinds.values()) or 1
  return {k: round(v / total, 3) for k, v in kinds.most_common(8)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("data_dir")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--malloc_trim", action="store_true",
                  help="return freed heap pages to the OS after each compile (glibc malloc_trim)")
  ap.add_argument("--trace", action="store_true", help="per-kernel-kind time shares from a jax.profiler trace")
  args = ap.parse_args()
  if args.trace:  # before jax starts: per-kernel TraceMe annotations of the XLA:CPU runtime
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from grpo_jax import hf, sampler, sharding, train
  from grpo_jax.model import positions_from_mask

  c = common
  n, p, t = c.GROUP_SIZE * c.PROMPTS_PER_STEP, c.PROMPT_LEN, c.COMPLETION_LEN
  model_dir = os.path.join(args.data_dir, "model")
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  model = hf.from_pretrained(model_dir, jnp.float32, mesh=mesh)
  graphdef, params = nnx.split(model)
  cfg = model.config
  dims = roofline.Dims(cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
                       cfg.head_dim, cfg.intermediate_size)
  tx, schedule = train.make_optimizer(c.LEARNING_RATE, b1=0.9, b2=0.999, grad_clip=1.0)
  trainer = train.Trainer(graphdef, params, mesh, tx=tx, schedule=schedule,
                          loss_cfg=train.LossConfig(beta=c.BETA, clip_low=c.EPSILON, clip_high=c.EPSILON),
                          adv_cfg=train.AdvantageConfig(), group_size=c.GROUP_SIZE)
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(3, cfg.vocab_size, (n, p)), jnp.int32)
  pmask = jnp.ones((n, p), jnp.int32)
  key = jax.random.PRNGKey(0)

  def gen_fn(num_new):
    return sampler.jit_generate(graphdef, mesh, trainer.param_shardings, max_new_tokens=num_new,
                                temperature=1.0, eos_id=None, pad_id=0)

  state = trainer.init_state(params, key)
  ref = jax.tree.map(lambda x: x.copy(), state.params)
  out = {}

  def rss_mib():
    with open("/proc/self/status") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

  def aot(name, jitted, *a):
    """Trace+lower and XLA-compile times, the optimized HLO size, RSS after the compile and XLA's
    temporary buffer size of one call."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*a)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    if args.malloc_trim:
      import ctypes
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    hlo = compiled.as_text()
    mem = compiled.memory_analysis()
    out[f"compile/{name}"] = {"lower_s": t1 - t0, "xla_compile_s": t2 - t1,
                              "hlo_lines": hlo.count("\n"), "fusions": hlo.count(" fusion("),
                              "rss_after_mib": rss_mib(),
                              "temp_mib": getattr(mem, "temp_size_in_bytes", 0) / 2**20}
    return compiled

  gen = aot("generate", gen_fn(t), state.params, prompt, pmask, key)
  gen1 = aot("generate_T1", gen_fn(1), state.params, prompt, pmask, key)
  sample = gen(state.params, prompt, pmask, key)
  batch = {"prompt_tokens": prompt, "prompt_mask": pmask, "tokens": sample.tokens, "mask": sample.mask,
           "old_logp": sample.logprobs, "truncated": sample.truncated}
  rewards = jnp.asarray(rng.integers(0, 2, (c.PROMPTS_PER_STEP, c.GROUP_SIZE)), jnp.float32)
  valid = jnp.ones((n,), bool)
  prep = aot("prepare", trainer._prepare, state.params, ref, batch, rewards, valid)
  prepared, _ = prep(state.params, ref, batch, rewards, valid)
  step = aot("train_step", trainer._step, state, prepared)

  # A plain teacher-forced forward (what `prepare` does) and forward+backward, without the GRPO extras.
  def fwd(params):
    m = nnx.merge(graphdef, params)
    full = jnp.concatenate([prompt, sample.tokens], 1)
    h = m(full, positions_from_mask(jnp.ones_like(full)), jnp.ones_like(full), return_hidden=True)
    return jnp.sum(m.logits(h[:, p - 1:-1]))
  fwd_j = jax.jit(fwd)
  grad_j = jax.jit(jax.grad(fwd))

  def best(fn, *a):
    jax.block_until_ready(fn(*a))
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))

  flops = roofline.grpo_step_flops(dims, n, p, t)
  pf = roofline.forward_flops(dims, p - 1, (p - 1) * p // 2, 0) * n
  timings = {
      "generate_T32": best(gen, state.params, prompt, pmask, key),
      "generate_T1": best(gen1, state.params, prompt, pmask, key),
      "prepare": best(prep, state.params, ref, batch, rewards, valid),
      "forward_only": best(fwd_j, state.params),
      "forward_backward_only": best(grad_j, state.params),
  }
  donated = state
  ts = []
  for _ in range(args.repeats + 1):
    t0 = time.perf_counter()
    donated, m = step(donated, prepared)
    jax.block_until_ready(m)
    ts.append(time.perf_counter() - t0)
  timings["train_step"] = (min(ts[1:]), float(np.median(ts[1:])))
  decode_s = (timings["generate_T32"][1] - timings["generate_T1"][1]) / (t - 1)
  out["steady"] = {k: {"best_s": v[0], "median_s": v[1]} for k, v in timings.items()}
  out["decode_step_s"] = decode_s
  out["decode_step_gflops"] = (flops["rollout"] - pf) / t / decode_s / 1e9
  out["gflops"] = {
      "generate_T32": flops["rollout"] / timings["generate_T32"][1] / 1e9,
      "prepare": flops["reference"] / timings["prepare"][1] / 1e9,
      "forward_only": flops["reference"] / timings["forward_only"][1] / 1e9,
      "train_step": flops["update"] / timings["train_step"][1] / 1e9,
      "forward_backward_only": flops["update"] / timings["forward_backward_only"][1] / 1e9,
  }
  if args.trace:
    # `state` was donated to the timed steps; `donated` holds the live params (and is donated last).
    out["trace/generate"] = kernel_shares(lambda: jax.block_until_ready(gen(donated.params, prompt, pmask, key)))
    out["trace/train_step"] = kernel_shares(lambda: jax.block_until_ready(step(donated, prepared)[1]))
  out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  out["peak_rss_mib"] = common.peak_rss_mib()
  out["malloc_trim"] = args.malloc_trim
  common.emit(out)


if __name__ == "__main__":
  main()
