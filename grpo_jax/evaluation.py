"""Held-out evaluation: greedy accuracy, pass@k and maj@k.

A completion is correct when the task's correctness reward gives it at least 0.5 (1.0 for exact and
math answers). maj@k votes over the answers extracted from k samples (ties go to the answer seen first).
Prompts are evaluated in fixed-size chunks (padding the last chunk by repeating an example) so the
sampler compiles once.
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import numpy as np

from grpo_jax import rollout as rollout_lib


def _chunks(examples: Sequence[dict], size: int):
  for start in range(0, len(examples), size):
    chunk = list(examples[start:start + size])
    real = len(chunk)
    chunk += [chunk[-1]] * (size - real)
    yield chunk, real


def _score(correct_fn, prompts, completions, examples, group_size) -> np.ndarray:
  columns = rollout_lib.reward_columns(examples, group_size)
  scores = correct_fn(prompts, completions, **columns)
  return np.asarray([s is not None and s >= 0.5 for s in scores], bool)


def evaluate(greedy_fn: Callable, sample_fn: Callable | None, params, examples: Sequence[dict],
             tokenizer, correct_fn: Callable, answer_fn: Callable[[str], str], rng, *,
             batch_size: int, prompt_len: int, fmt: rollout_lib.PromptFormat, k: int = 0, mesh=None) -> dict:
  """Returns `{"eval/accuracy", "eval/pass@k", "eval/maj@k"}` over `examples`.

  `greedy_fn` / `sample_fn` are jitted samplers (temperature 0 / the eval temperature) taking
  `(params, tokens [b, P], mask [b, P], rng)`; `sample_fn` sees each prompt repeated k times
  (b = batch_size * k). k = 0 skips pass@k and maj@k.

  With a `mesh` spanning several processes the prompts go in as global arrays and every process reads
  back and scores all rows (eval sets are small; the training rollout scores each process's own rows), so
  every process returns the same metrics.
  """
  import jax  # local: keeps this module importable without initializing a backend

  def run(fn, tokens, mask, rng):
    if mesh is not None and jax.process_count() > 1:
      from grpo_jax import sharding as shd  # noqa: PLC0415
      from jax.experimental import multihost_utils  # noqa: PLC0415
      out = fn(params, *(jax.make_array_from_callback(x.shape, shd.batch_sharding(mesh, 2),
                                                      lambda idx, x=x: x[idx]) for x in (tokens, mask)),
               shd.global_replicated(rng, mesh))
      return multihost_utils.process_allgather(out, tiled=True)
    return jax.device_get(fn(params, tokens, mask, rng))

  n_correct, n_pass, n_maj, total = 0, 0, 0, 0
  for i, (chunk, real) in enumerate(_chunks(examples, batch_size)):
    texts, tokens, mask = rollout_lib.encode_prompts(chunk, tokenizer, prompt_len, fmt)
    out = run(greedy_fn, tokens, mask, jax.random.fold_in(rng, 2 * i))
    completions = rollout_lib.decode_completions(tokenizer, out.tokens, out.mask)
    n_correct += int(_score(correct_fn, texts, completions, chunk, 1)[:real].sum())
    total += real
    if k and sample_fn is not None:
      tk, mk = np.repeat(tokens, k, axis=0), np.repeat(mask, k, axis=0)
      out = run(sample_fn, tk, mk, jax.random.fold_in(rng, 2 * i + 1))
      samples = rollout_lib.decode_completions(tokenizer, out.tokens, out.mask)
      ok = _score(correct_fn, [t for t in texts for _ in range(k)], samples, chunk, k)
      ok = ok.reshape(batch_size, k)[:real]
      n_pass += int(ok.any(axis=1).sum())
      for row in range(real):
        answers = [answer_fn(s) for s in samples[row * k:(row + 1) * k]]
        voted = collections.Counter(answers).most_common(1)[0][0]
        n_maj += int(ok[row][answers.index(voted)])
  metrics = {"eval/accuracy": n_correct / max(total, 1)}
  if k and sample_fn is not None:
    metrics[f"eval/pass@{k}"] = n_pass / max(total, 1)
    metrics[f"eval/maj@{k}"] = n_maj / max(total, 1)
  return metrics
