"""Sampler throughput: our KV-cached jitted sampler vs a naive no-cache decode vs transformers' generate.

One GRPO rollout batch: B prompts x G samples (default 16 x 8 = 128 sequences), left-padded prompts of
P/2..P tokens, T new tokens, temperature 1, no EOS (every sequence generates all T tokens), the same
float32 weights everywhere (ours are written with `grpo_jax.hf.save_pretrained` and read back by
transformers). Compilation and one warm-up run per sampler are excluded (compile time is reported
separately); then the samplers take turns for --repeats rounds, so that load from other processes hits
them alike, and the table reports medians of wall time and of process CPU time (user + system, all
threads). Rows:
  grpo_jax, 1 device        make_generate_fn jitted on one CPU device (what `generate` runs)
  grpo_jax, data mesh       jit_generate with the batch split over one CPU device per core
                            (--cores devices, XLA's way to use several cores for data parallelism)
  naive no-cache decode     the full forward over the fixed-length buffer at every step (jitted)
  transformers generate     torch with --cores threads and with 1 thread; "vs transformers" divides
                            the faster of the two by each row's wall time

  python benchmarks/sampler.py                  # tiny config (ModelConfig.tiny), CPU
  python benchmarks/sampler.py --config small   # a ~10M-parameter config
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

CONFIGS = {
    "tiny": dict(),
    "small": dict(hidden_size=384, intermediate_size=1024, num_layers=6, num_heads=6, num_kv_heads=2,
                  head_dim=64),
}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
  parser.add_argument("--vocab", type=int, default=512)
  parser.add_argument("--prompts", type=int, default=16, help="B")
  parser.add_argument("--group", type=int, default=8, help="G")
  parser.add_argument("--prompt-len", type=int, default=32, help="P (the bucket); lengths P/2..P")
  parser.add_argument("--new", type=int, default=64, help="T, max_new_tokens")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cores", type=int, default=2, help="torch threads = CPU devices of the mesh")
  parser.add_argument("--skip-naive", action="store_true", help="the no-cache baseline is slow")
  return parser.parse_args(argv)


ARGS = _parse(sys.argv[1:])
# One XLA CPU device per core for the data-mesh row; must be set before jax starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={ARGS.cores}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from grpo_jax import hf, sampler, sharding  # noqa: E402
from grpo_jax.model import ModelConfig, init_model, positions_from_mask  # noqa: E402


def make_naive_generate_fn(graphdef, *, max_new_tokens: int, temperature: float):
  """Baseline without a KV cache: every step re-runs the full forward over the fixed-length buffer
  [prompt | completion so far | not yet written] (causality hides the unwritten tail)."""
  sampling = sampler.SamplingParams(temperature)

  def fn(params, prompt_tokens_BxP, prompt_mask_BxP, rng):
    model = nnx.merge(graphdef, params)
    b, p = prompt_tokens_BxP.shape
    tokens = jnp.concatenate([prompt_tokens_BxP, jnp.zeros((b, max_new_tokens), jnp.int32)], 1)
    mask = jnp.concatenate([prompt_mask_BxP, jnp.ones((b, max_new_tokens), jnp.int32)], 1)
    positions = positions_from_mask(mask)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(b))

    def step(t, tokens):
      logits = model(tokens, positions, mask)[:, p - 1 + t]
      keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, t)
      return tokens.at[:, p + t].set(sampling.sample(logits, keys))

    return jax.lax.fori_loop(0, max_new_tokens, step, tokens)[:, p:]

  return fn


def _cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _compiled(jitted, args):
  """(compile seconds, a zero-argument runner) for a jitted function; runs the warm-up call."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  run = lambda: jax.block_until_ready(compiled(*args))
  run()
  return compile_s, run


def _transformers_runner(model_dir, tokens, mask, max_new_tokens, threads):
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  ids, attn = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

  def run():
    torch.set_num_threads(threads)
    with torch.no_grad():
      out = model.generate(ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0,
                           top_p=1.0, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                           pad_token_id=0, eos_token_id=None)
    assert out.shape == (ids.shape[0], ids.shape[1] + max_new_tokens)

  run()  # warm-up
  with torch.no_grad():  # same weights: the table header compares these logits with ours
    last_logits = model(ids, attention_mask=attn).logits[:, -1].numpy()
  return run, last_logits


def main():
  args = ARGS
  config = ModelConfig.tiny(vocab_size=args.vocab, **CONFIGS[args.config])
  model = init_model(config, seed=0)
  graphdef, params = nnx.split(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rng = np.random.default_rng(0)
  lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, size=args.prompts)
  prompts = [list(rng.integers(1, args.vocab, size=n)) for n in lengths]
  tokens, mask = sampler.left_pad(prompts, buckets=[args.prompt_len])
  tokens, mask = sampler.repeat_for_group(tokens, mask, args.group)
  n, t = tokens.shape[0], args.new
  key = jax.random.key(0)
  jargs = (params, jnp.asarray(tokens), jnp.asarray(mask), key)

  runners = {}  # name -> (compile seconds or None, run)
  static = dict(max_new_tokens=t, temperature=1.0)
  runners["grpo_jax sampler, 1 device"] = _compiled(
      jax.jit(sampler.make_generate_fn(graphdef, **static)), jargs)
  if jax.device_count() > 1:
    mesh = sharding.make_mesh((jax.device_count(), 1, 1))
    shardings = sharding.param_shardings(params, mesh)
    fn = sampler.jit_generate(graphdef, mesh, shardings, **static)
    runners[f"grpo_jax sampler, data mesh of {jax.device_count()} CPU devices"] = _compiled(
        fn, (sharding.shard_state(params, shardings), *jargs[1:]))
  if not args.skip_naive:
    runners["naive jitted decode (no KV cache)"] = _compiled(
        jax.jit(make_naive_generate_fn(graphdef, **static)), jargs)
  hf_names = []
  with tempfile.TemporaryDirectory() as model_dir:
    hf.save_pretrained(model, model_dir)
    # torch's spinning OpenMP threads collapse on a loaded machine, so a 1-thread row is kept too.
    for threads in sorted({args.cores, 1}, reverse=True):
      hf_run, hf_logits = _transformers_runner(model_dir, tokens, mask, t, threads)
      hf_names.append(f"transformers generate (torch, {threads} thread{'s' * (threads > 1)})")
      runners[hf_names[-1]] = (None, hf_run)
  ours_logits = np.asarray(model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)),
                                 jnp.asarray(mask))[:, -1])

  wall = {name: [] for name in runners}
  cpu = {name: [] for name in runners}
  load_before = os.getloadavg()[0]
  for _ in range(args.repeats):  # round robin: background load hits every sampler alike
    for name, (_, run) in runners.items():
      if name.startswith("naive") and wall[name]:
        continue  # one timed run of the slow baseline is enough
      t0, c0 = time.perf_counter(), _cpu_s()
      run()
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(_cpu_s() - c0)
  load_after = os.getloadavg()[0]

  hf_wall = min(statistics.median(wall[name]) for name in hf_names)  # the faster transformers row
  print(f"\n`python benchmarks/sampler.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
  print(f"\nconfig {args.config}: {n_params / 1e6:.2f}M params, V={args.vocab}, float32; {args.prompts} "
        f"prompts x G={args.group} = {n} sequences, P={args.prompt_len}, T={t}; {os.cpu_count()} CPU "
        f"cores, load average {load_before:.1f} -> {load_after:.1f}; median of {args.repeats} "
        f"interleaved runs; max |logits ours - HF| = {np.abs(ours_logits - hf_logits).max():.1e}\n")
  print("| sampler | compile (s) | wall / batch (s) | CPU / batch (s) | tokens/s | vs transformers |")
  print("|---|---:|---:|---:|---:|---:|")
  for name, (compile_s, _) in runners.items():
    w, c = statistics.median(wall[name]), statistics.median(cpu[name])
    compile_txt = "—" if compile_s is None else f"{compile_s:.2f}"
    print(f"| {name} | {compile_txt} | {w:.3f} | {c:.3f} | {n * t / w:,.0f} | {hf_wall / w:.2f}x |")


if __name__ == "__main__":
  main()
