"""Sampler throughput: our KV-cached jitted sampler vs a naive no-cache decode vs transformers' generate.

One GRPO rollout batch: B prompts x G samples (default 16 x 8 = 128 sequences), left-padded prompts of
up to P tokens, T new tokens, temperature 1, no EOS (every sequence generates all T tokens), the same
weights everywhere (ours are written with `grpo_jax.hf.save_pretrained` and read by transformers).
Compile / warm-up runs are excluded and timed separately; the table reports the median of --repeats
(--naive-repeats for the slow no-cache baseline).

  python benchmarks/sampler.py                  # tiny config (ModelConfig.tiny), CPU
  python benchmarks/sampler.py --config small   # a ~12M-parameter config
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grpo_jax import hf, sampler
from grpo_jax.model import ModelConfig, init_model, positions_from_mask

CONFIGS = {
    "tiny": lambda vocab: ModelConfig.tiny(vocab_size=vocab),
    "small": lambda vocab: ModelConfig.tiny(vocab_size=vocab, hidden_size=384, intermediate_size=1024,
                                            num_layers=6, num_heads=6, num_kv_heads=2, head_dim=64),
}


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


def time_jax(fn, args, repeats):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def time_transformers(model_dir, tokens, mask, max_new_tokens, repeats, threads):
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  torch.set_num_threads(threads)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  ids, attn = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

  def run():
    with torch.no_grad():
      return model.generate(ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0,
                            top_p=1.0, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                            pad_token_id=0, eos_token_id=None)

  run()  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
  assert out.shape == (tokens.shape[0], tokens.shape[1] + max_new_tokens)
  with torch.no_grad():  # same weights: compare logits with ours
    logits = model(ids, attention_mask=attn).logits[:, -1].numpy()
  return statistics.median(times), logits


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
  parser.add_argument("--vocab", type=int, default=512)
  parser.add_argument("--prompts", type=int, default=16, help="B")
  parser.add_argument("--group", type=int, default=8, help="G")
  parser.add_argument("--prompt-len", type=int, default=32, help="P (bucket); lengths are P/2..P")
  parser.add_argument("--new", type=int, default=64, help="T, max_new_tokens")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--naive-repeats", type=int, default=1, help="the no-cache baseline is slow")
  parser.add_argument("--torch-threads", type=int, default=2)
  parser.add_argument("--skip-naive", action="store_true")
  args = parser.parse_args(argv)

  config = CONFIGS[args.config](args.vocab)
  model = init_model(config, seed=0)
  graphdef, params = nnx.split(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rng = np.random.default_rng(0)
  lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, size=args.prompts)
  prompts = [list(rng.integers(1, args.vocab, size=n)) for n in lengths]
  tokens, mask = sampler.left_pad(prompts, buckets=[args.prompt_len])
  tokens, mask = sampler.repeat_for_group(tokens, mask, args.group)
  n, t = tokens.shape[0], args.new
  jargs = (params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0))

  rows = []
  fn = sampler.make_generate_fn(graphdef, max_new_tokens=t, temperature=1.0)
  rows.append(("grpo_jax sampler (KV cache, while_loop)", *time_jax(fn, jargs, args.repeats)))
  if not args.skip_naive:
    naive = make_naive_generate_fn(graphdef, max_new_tokens=t, temperature=1.0)
    rows.append(("naive jitted decode (no cache)", *time_jax(naive, jargs, args.naive_repeats)))
  with tempfile.TemporaryDirectory() as model_dir:
    hf.save_pretrained(model, model_dir)
    hf_s, hf_logits = time_transformers(model_dir, np.asarray(tokens), np.asarray(mask), t,
                                        args.repeats, args.torch_threads)
  rows.append((f"transformers generate (torch, {args.torch_threads} threads)", None, hf_s))
  ours_logits = np.asarray(model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)),
                                 jnp.asarray(mask))[:, -1])

  print(f"\n`python benchmarks/sampler.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip()
        .replace(" `", "`"))
  print(f"\nconfig {args.config}: {n_params / 1e6:.2f}M params, V={args.vocab}, float32; "
        f"{args.prompts} prompts x G={args.group} = {n} sequences, P={args.prompt_len}, T={t}; "
        f"{jax.devices()[0].platform}, median of {args.repeats}; "
        f"max |logits ours - HF| = {np.abs(ours_logits - hf_logits).max():.1e}\n")
  print("| sampler | compile (s) | time / batch (s) | tokens/s | vs transformers |")
  print("|---|---:|---:|---:|---:|")
  for name, compile_s, run_s in rows:
    compile_txt = "—" if compile_s is None else f"{compile_s:.2f}"
    print(f"| {name} | {compile_txt} | {run_s:.3f} | {n * t / run_s:,.0f} | {hf_s / run_s:.1f}x |")


if __name__ == "__main__":
  main()
