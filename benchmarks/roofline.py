"""FLOP count of one GRPO step and the measured matmul peak of this machine (the roofline).

Counted work (matmul FLOPs only; norms, rotary, softmax, sampling, the optimizer and biases are
excluded — they are O(params) or O(tokens·D), a few percent at most):

  per token through the trunk:  2·M_layers,   M_layers = L·(D·H·(N_q + 2·N_kv) + N_q·H·D + 3·D·F)
  per scored position:          2·D·V         (the LM head / tied embedding, only where logits are used)
  causal attention:             4·L·N_q·H per (query, key) pair (QKᵀ and PV, 2 FLOPs per MAC each)

  forward(n_tokens, pairs, n_logits) = 2·M_layers·n_tokens + 4·L·N_q·H·pairs + 2·D·V·n_logits

For N = B·G sequences, prompt length P (the padded bucket) and completion length T:

  rollout   = N · forward(P+T−1, (P+T−1)(P+T)/2, T)   prefill P−1 tokens + T decode steps (the last
                                                     sampled token is never fed back); causal pairs
                                                     only — a padded static cache is not "useful" work
  reference = N · forward(P+T, (P+T)(P+T+1)/2, T)      teacher-forced prompt + completion, logits on T
  update    = 3 · reference                            policy forward + backward (backward = 2× forward)
  step      = rollout + reference + update

`python benchmarks/roofline.py --backend jax|torch` measures the float32 (or --dtype bfloat16) peak:
the best of `--repeats` large square matmuls, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


@dataclasses.dataclass(frozen=True)
class Dims:
  """The architecture numbers the FLOP count needs (Hugging Face names in comments)."""

  vocab: int  # vocab_size
  hidden: int  # hidden_size (D)
  layers: int  # num_hidden_layers (L)
  heads: int  # num_attention_heads (N_q)
  kv_heads: int  # num_key_value_heads (N_kv)
  head_dim: int  # H (hidden / heads for Qwen2)
  intermediate: int  # intermediate_size (F)

  def layer_matmul_params(self) -> int:
    d, h = self.hidden, self.head_dim
    attn = d * h * (self.heads + 2 * self.kv_heads) + self.heads * h * d
    return self.layers * (attn + 3 * d * self.intermediate)


def forward_flops(dims: Dims, n_tokens: int, attn_pairs: int, n_logits: int) -> int:
  """Matmul FLOPs of one sequence's forward pass (see the module docstring)."""
  return (2 * dims.layer_matmul_params() * n_tokens
          + 4 * dims.layers * dims.heads * dims.head_dim * attn_pairs
          + 2 * dims.hidden * dims.vocab * n_logits)


def grpo_step_flops(dims: Dims, num_seqs: int, prompt_len: int, completion_len: int) -> dict[str, int]:
  """`{"rollout", "reference", "update", "step"}` FLOPs of one GRPO step (one update per rollout)."""
  p, t = prompt_len, completion_len
  rollout = num_seqs * forward_flops(dims, p + t - 1, (p + t - 1) * (p + t) // 2, t)
  reference = num_seqs * forward_flops(dims, p + t, (p + t) * (p + t + 1) // 2, t)
  update = 3 * reference
  return {"rollout": rollout, "reference": reference, "update": update,
          "step": rollout + reference + update}


def decode_bytes_per_token_step(dims: Dims, num_seqs: int, context: int, bytes_per_elem: int) -> int:
  """HBM bytes one decode step must read: all weights once (+ the embedding as LM head) and the KV cache
  of `context` positions for every sequence. Used for the bandwidth bound of decoding."""
  weights = dims.layer_matmul_params() + dims.hidden * dims.vocab
  kv = 2 * dims.layers * num_seqs * context * dims.kv_heads * dims.head_dim
  return (weights + kv) * bytes_per_elem


def measure_jax(n: int, repeats: int, dtype: str) -> float:
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def measure_torch(n: int, repeats: int, dtype: str, threads: int) -> float:
  import torch
  torch.set_num_threads(threads)
  dt = getattr(torch, dtype)
  a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
  torch.matmul(a, b)
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    torch.matmul(a, b)
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--backend", choices=("jax", "torch"), default="jax")
  ap.add_argument("--n", type=int, default=2048)
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  args = ap.parse_args()
  if args.backend == "jax":
    flops = measure_jax(args.n, args.repeats, args.dtype)
  else:
    flops = measure_torch(args.n, args.repeats, args.dtype, args.threads)
  print("RESULT " + json.dumps({"backend": args.backend, "n": args.n, "dtype": args.dtype,
                                "threads": args.threads, "peak_gflops": flops / 1e9}), flush=True)


if __name__ == "__main__":
  main()
