"""Compile cost against depth: seconds to trace+lower and to XLA-compile each jitted function of a GRPO step,
and its optimized-HLO size, for the peer-benchmark model shape at 2 / 4 / 8 / 16 / 24 layers.

  python benchmarks/depth_sweep.py                       # the table, as JSON lines and markdown
  python benchmarks/depth_sweep.py --layers 2,16 --cli   # plus a cold CLI run of the default experiment

Variants (`grpo_jax.model.ModelConfig`): "scan" (scan_layers and scan_decode: the defaults), "unrolled" (both
off) and "cpu" (the layer scan for training and scoring, unrolled decode: the peer-benchmark setting).
Compile seconds are wall seconds of `jitted.lower(...)` and `.compile()` on abstract inputs (nothing runs);
run it on an otherwise idle machine. `--cli` times `python -m grpo_jax.main` on the default experiment
shortened to be compile-dominated (20 warm-start steps, 3 GRPO steps, 32 eval questions), cold (no
persistent compilation cache), at each depth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = {"scan": dict(scan_layers=True, scan_decode=True),
            "unrolled": dict(scan_layers=False, scan_decode=False),
            "cpu": dict(scan_layers=True, scan_decode=False)}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_costs(num_layers: int, variant: str, n: int = 64, p: int = 24, t: int = 32) -> dict:
  """{function: {lower_s, compile_s, hlo_lines}} for train_step, generate and prepare."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from grpo_jax import sampler, sharding, train
  from grpo_jax.model import Decoder, ModelConfig

  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  cfg = ModelConfig(vocab_size=384, hidden_size=256, intermediate_size=704, num_layers=num_layers,
                    num_heads=4, num_kv_heads=2, head_dim=64, tie_embeddings=True, qkv_bias=True,
                    dtype="float32", param_dtype="float32", **VARIANTS[variant])
  graphdef, params = sharding.init_sharded(lambda: Decoder(cfg, nnx.Rngs(0)), mesh)
  tx, schedule = train.make_optimizer(1e-5)
  trainer = train.Trainer(graphdef, params, mesh, tx=tx, schedule=schedule,
                          loss_cfg=train.LossConfig(beta=0.04), adv_cfg=train.AdvantageConfig(),
                          group_size=8)
  state = jax.eval_shape(trainer.init_state, params, jax.random.PRNGKey(0))
  s = jax.ShapeDtypeStruct
  batch = {"prompt_tokens": s((n, p), jnp.int32), "prompt_mask": s((n, p), jnp.int32),
           "tokens": s((n, t), jnp.int32), "mask": s((n, t), jnp.int32),
           "old_logp": s((n, t), jnp.float32), "truncated": s((n,), bool)}
  prepared = dict(batch, ref_logp=s((n, t), jnp.float32), advantages=s((n,), jnp.float32),
                  loss_mask=s((n, t), jnp.float32))
  generate = sampler.jit_generate(trainer.graphdef, mesh, trainer.param_shardings, max_new_tokens=t,
                                  temperature=1.0, eos_id=None)
  out = {}
  for name, fn, args in (
      ("train_step", trainer._update, (state, prepared)),
      ("generate", generate, (params, batch["prompt_tokens"], batch["prompt_mask"], jax.random.key(0))),
      ("prepare", trainer._prepare, (params, params, batch, s((n // 8, 8), jnp.float32), s((n,), bool)))):
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out[name] = {"lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
                 "hlo_lines": compiled.as_text().count("\n")}
  return out


def cli_run(num_layers: int) -> float:
  """Wall seconds of a cold, compile-dominated CLI run of the default experiment at this depth."""
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "grpo_jax.main", f"--config={ROOT}/experiments/default.py",
           f"--workdir={workdir}/run", "--compilation_cache=", f"--config.model.tiny.num_layers={num_layers}",
           "--config.sft.steps=20", "--config.train.num_steps=3", "--config.eval.every=0",
           "--config.eval.num_examples=32", "--config.eval.batch_size=32", "--config.train.progress_bar=False"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return round(time.perf_counter() - t0, 1)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", default="2,4,8,16,24")
  ap.add_argument("--variants", default="scan,cpu,unrolled")
  ap.add_argument("--cli", action="store_true", help="also time a cold CLI run at each depth")
  ap.add_argument("--one", help=argparse.SUPPRESS)  # "variant:layers": one measurement, in this process
  args = ap.parse_args()
  if args.one:
    variant, layers = args.one.split(":")
    print("RESULT " + json.dumps({"variant": variant, "layers": int(layers),
                                  **compile_costs(int(layers), variant)}), flush=True)
    return
  rows = []
  for layers in (int(x) for x in args.layers.split(",")):
    for variant in args.variants.split(","):
      # A fresh process per measurement: nothing compiled earlier is reused.
      out = subprocess.run([sys.executable, __file__, "--one", f"{variant}:{layers}"], check=True,
                           capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
      row = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
      if args.cli and variant == "scan":
        row["cli_cold_s"] = cli_run(layers)
      rows.append(row)
      print(json.dumps(row), flush=True)
  print("\n| layers | variant | train step: lower / compile s, HLO lines | generate | prepare |"
        + (" cold CLI s |" if args.cli else ""))
  print("|---|---|---|---|---|" + ("---|" if args.cli else ""))
  for r in rows:
    cells = [f"{r[k]['lower_s']} / {r[k]['compile_s']}, {r[k]['hlo_lines']}"
             for k in ("train_step", "generate", "prepare")]
    cli = f" {r['cli_cold_s']} |" if "cli_cold_s" in r else (" |" if args.cli else "")
    print(f"| {r['layers']} | {r['variant']} | " + " | ".join(cells) + " |" + cli)


if __name__ == "__main__":
  main()
