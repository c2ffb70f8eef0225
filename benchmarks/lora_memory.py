"""Memory of LoRA against full fine-tuning: trainable parameters, optimizer and state bytes, and the temp
memory of the jitted update program.

Compile only (XLA's `memory_analysis()` of `Trainer._update`, nothing runs), so a real model's shapes fit
on a laptop CPU:

  python benchmarks/lora_memory.py --preset qwen2.5-0.5b --ranks 0,8,64

Rank 0 is full fine-tuning. Per rank it prints the trainable parameters, the AdamW state and the whole
`TrainState` (what the checkpoint holds), the frozen base (LoRA: an argument of every program, shared with
the reference and the sampler), and the update program's temp bytes: the activations, the gradients and,
with LoRA, the merged copy of the adapted weights with its full-size gradient (`lora.merge` runs inside
the loss); the rollout's merged weights (`Trainer.policy_params`) are the `merged` column.
"""
import argparse
import math

import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax import lora as lora_lib
from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.model import Decoder, ModelConfig

PRESETS = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                         num_heads=14, num_kv_heads=2, head_dim=64, tie_embeddings=True, qkv_bias=True,
                         rope_theta=1e6),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                 num_kv_heads=2, head_dim=32, tie_embeddings=True),
}


def nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def measure(graphdef, params, batch, rank: int, targets, chunk: int) -> dict:
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  tx, sched = train_lib.make_optimizer(1e-5)
  cfg = lora_lib.LoRAConfig(rank=rank, alpha=2.0 * rank, targets=targets) if rank else None
  trainer = train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=sched,
                              loss_cfg=train_lib.LossConfig(beta=0.04, logprob_chunk=chunk),
                              adv_cfg=train_lib.AdvantageConfig(), group_size=4, lora=cfg)
  state = jax.eval_shape(trainer.init_state, params, jax.random.PRNGKey(0))
  base = () if cfg is None else (params,)
  mem = trainer._update.lower(state, batch, *base).compile().memory_analysis()
  merged = 0 if cfg is None else nbytes(lora_lib.targets_of(params, cfg))
  return {"trainable": trainer.num_trainable, "opt": nbytes(state.opt_state), "state": nbytes(state),
          "base": nbytes(params) if cfg else 0, "temp": mem.temp_size_in_bytes, "merged": merged}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="qwen2.5-0.5b", choices=sorted(PRESETS))
  ap.add_argument("--dtype", default="bfloat16", help="parameter and activation dtype")
  ap.add_argument("--ranks", default="0,8,64", help="0: full fine-tuning")
  ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
  ap.add_argument("--rows", type=int, default=8, help="N completions per update")
  ap.add_argument("--prompt", type=int, default=64, help="P prompt tokens")
  ap.add_argument("--length", type=int, default=256, help="T completion tokens")
  ap.add_argument("--remat", default="full")
  ap.add_argument("--chunk", type=int, default=64, help="grpo.logprob_chunk (0: full [N, T, V] logits)")
  args = ap.parse_args()
  cfg = ModelConfig(**PRESETS[args.preset], dtype=args.dtype, param_dtype=args.dtype, remat=args.remat)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(params=0))))
  n, p, t = args.rows, args.prompt, args.length
  s = jax.ShapeDtypeStruct
  batch = {"prompt_tokens": s((n, p), jnp.int32), "prompt_mask": s((n, p), jnp.int32),
           "tokens": s((n, t), jnp.int32), "mask": s((n, t), jnp.int32), "old_logp": s((n, t), jnp.float32),
           "ref_logp": s((n, t), jnp.float32), "advantages": s((n,), jnp.float32),
           "loss_mask": s((n, t), jnp.float32)}
  targets = tuple(args.targets.split(","))
  print(f"{args.preset} ({lora_lib.num_params(params) / 1e6:.1f}M params, {args.dtype}), N={n} P={p} T={t} "
        f"remat={args.remat} logprob_chunk={args.chunk}, targets {','.join(targets)}, on "
        f"{jax.devices()[0].platform}")
  mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
  print(f"{'rank':>5} {'trainable':>12} {'optimizer MiB':>14} {'TrainState MiB':>15} {'base MiB':>9} "
        f"{'update temp MiB':>16} {'merged MiB':>11}")
  for rank in (int(r) for r in args.ranks.split(",")):
    m = measure(graphdef, params, batch, rank, targets, args.chunk)
    print(f"{rank:>5} {m['trainable']:>12,} {mib(m['opt']):>14} {mib(m['state']):>15} {mib(m['base']):>9} "
          f"{mib(m['temp']):>16} {mib(m['merged']):>11}", flush=True)


if __name__ == "__main__":
  main()
