"""Temp memory of scoring and of the loss gradient with and without chunked LM-head log-probs.

Compile only (XLA's `memory_analysis()` of the jitted programs, nothing runs), so a large vocabulary fits on
a laptop CPU:

  python benchmarks/logprob_memory.py --vocab 32000 --rows 16 --length 512 --chunks 0,128,32

Prints, per `grpo.logprob_chunk` value (0: one [N, T, V] logits array), the temp bytes of
`train.completion_logprobs` (the re-scoring / reference forward) and of `jax.grad(train.loss_fn)`.
"""
import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax import train as train_lib
from grpo_jax.model import Decoder, ModelConfig


def temp_mib(graphdef, params, batch, chunk: int) -> tuple[float, float]:
  score = jax.jit(lambda p, b: train_lib.completion_logprobs(
      graphdef, p, b["prompt_tokens"], b["prompt_mask"], b["tokens"], b["mask"], 1.0, chunk))
  cfg = train_lib.LossConfig(logprob_chunk=chunk)
  grad = jax.jit(jax.grad(lambda p, b: train_lib.loss_fn(p, graphdef, b, cfg)[0]))
  return tuple(f.lower(params, batch).compile().memory_analysis().temp_size_in_bytes / 2**20
               for f in (score, grad))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--rows", type=int, default=16, help="N completions")
  ap.add_argument("--length", type=int, default=512, help="T completion tokens")
  ap.add_argument("--prompt", type=int, default=16, help="P prompt tokens")
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--remat", default="full", help="the decoder's remat policy (isolates the LM head)")
  ap.add_argument("--chunks", default="0,128,32")
  args = ap.parse_args()
  cfg = ModelConfig.tiny(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=args.hidden // 4, remat=args.remat)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0))))
  n, t, p = args.rows, args.length, args.prompt
  s = jax.ShapeDtypeStruct
  batch = {"prompt_tokens": s((n, p), jnp.int32), "prompt_mask": s((n, p), jnp.int32),
           "tokens": s((n, t), jnp.int32), "mask": s((n, t), jnp.int32), "old_logp": s((n, t), jnp.float32),
           "ref_logp": s((n, t), jnp.float32), "advantages": s((n,), jnp.float32),
           "loss_mask": s((n, t), jnp.float32)}
  print(f"V={args.vocab} N={n} T={t} D={args.hidden} remat={args.remat} on {jax.devices()[0].platform}: "
        f"one [N, T, V] float32 array is {n * t * args.vocab * 4 / 2**20:.0f} MiB")
  print(f"{'chunk':>6} {'scoring temp MiB':>17} {'loss grad temp MiB':>19}")
  for chunk in (int(c) for c in args.chunks.split(",")):
    score, grad = temp_mib(graphdef, params, batch, chunk)
    print(f"{chunk:>6} {score:>17.1f} {grad:>19.1f}")


if __name__ == "__main__":
  main()
