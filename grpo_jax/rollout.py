"""Rollouts: prompts -> G completions each -> host rewards -> a training batch.

Sampling runs on device (the jitted sampler); decoding and reward functions run in host Python, the way
TRL's reward functions do, so any Python callable can score a completion.

Shapes: B prompts, G group size, N = B*G, P prompt length (a fixed bucket), T completion length.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np

from grpo_jax import rewards as rewards_lib
from grpo_jax import sampler as sampler_lib
from grpo_jax import sharding as shd
from grpo_jax.tasks import format_prompt


@dataclasses.dataclass
class PromptFormat:
  """How an example's `prompt` text becomes model input (see `tasks.format_prompt`)."""

  system_prompt: str | None = None
  template: str | None = None
  use_chat_template: bool = False


def encode_prompts(examples: Sequence[dict], tokenizer, prompt_len: int, fmt: PromptFormat):
  """Formats and left-pads prompts: `(texts, tokens [B, P] int32, mask [B, P] int32)`."""
  texts = [format_prompt(ex["prompt"], tokenizer, system_prompt=fmt.system_prompt,
                         template=fmt.template, use_chat_template=fmt.use_chat_template)
           for ex in examples]
  tokens, mask = tokenizer.batch_encode_left_padded(texts, prompt_len)
  return texts, np.asarray(tokens, np.int32), np.asarray(mask, np.int32)


def reward_columns(examples: Sequence[dict], group_size: int) -> dict[str, list]:
  """Dataset columns (everything but `prompt`), each repeated G times to align with completions."""
  keys = sorted({k for ex in examples for k in ex if k != "prompt"})
  return {k: [ex.get(k) for ex in examples for _ in range(group_size)] for k in keys}


def decode_completions(tokenizer, tokens_NxT: np.ndarray, mask_NxT: np.ndarray) -> list[str]:
  return [tokenizer.decode([int(t) for t, m in zip(row, mrow) if m])
          for row, mrow in zip(tokens_NxT, mask_NxT)]


@dataclasses.dataclass
class Rollout:
  """One step's samples. With several processes, the per-row fields hold this process's `rows` of the
  global batch (`sharding.process_rows`) and the rewards are all-gathered; on one process, everything."""

  batch: dict[str, np.ndarray]  # prompt_tokens/prompt_mask [n, P], tokens/mask/old_logp [n, T], truncated [n]
  rewards_BxG: np.ndarray  # all B*G rewards (gathered from every process)
  valid_N: np.ndarray  # [N], gathered
  prompts: list[str]  # [n]
  completions: list[str]  # [n]
  reward_metrics: dict[str, float]  # over all N samples
  metrics: dict[str, float]  # over all N samples
  rows: slice | None = None  # this process's rows of the N (None: all of them)

  @property
  def num_rows(self) -> int:
    return self.valid_N.shape[0]


def gather_result(result: rewards_lib.RewardResult) -> rewards_lib.RewardResult:
  """Every process's `RewardResult` of its own rows -> the result over all rows, in process order (one
  all-gather of a `[F + 2, n]` float array and one of the failure counts; the identity on one process)."""
  if jax.process_count() == 1:
    return result
  names = sorted(result.per_fn)
  local = np.stack([np.asarray(result.total, np.float64), np.asarray(result.valid, np.float64)]
                   + [np.asarray(result.per_fn[k], np.float64) for k in names])
  full = shd.gather_rows(local.T).T  # rows are the leading axis of gather_rows
  fails = shd.gather_rows(np.asarray([[result.failures[k] for k in names]], np.int64)).sum(axis=0)
  return rewards_lib.RewardResult(
      total=full[0].astype(np.float32), valid=full[1].astype(bool),
      per_fn={k: full[2 + i] for i, k in enumerate(names)},
      failures={k: int(fails[i]) for i, k in enumerate(names)})


def rollout(generate_fn: Callable, params, examples: Sequence[dict], tokenizer, reward_runner, rng,
            *, group_size: int, prompt_len: int, fmt: PromptFormat, mesh=None) -> Rollout:
  """Samples G completions for each of the B examples and scores them.

  `generate_fn(params, prompt_tokens [N, P], prompt_mask [N, P], rng) -> SampleOutput` is the jitted
  sampler (`sampler.jit_generate`). With a `mesh` spanning several processes, each process encodes,
  decodes and scores only its rows of the N (`sharding.process_rows`); the sampler gets global arrays
  and the rewards and length statistics are all-gathered, so every process returns the same
  `rewards_BxG` and metrics.
  """
  n = len(examples) * group_size
  rows = slice(0, n) if mesh is None else shd.process_rows(n, mesh)
  first, last = rows.start // group_size, -(-rows.stop // group_size)  # the examples these rows sample
  mine = list(examples[first:last])
  texts, tokens, mask = encode_prompts(mine, tokenizer, prompt_len, fmt)
  tokens_NxP, mask_NxP = sampler_lib.repeat_for_group(tokens, mask, group_size)
  cut = slice(rows.start - first * group_size, rows.stop - first * group_size)
  tokens_NxP, mask_NxP = np.asarray(tokens_NxP)[cut], np.asarray(mask_NxP)[cut]
  if mesh is None:
    out = generate_fn(params, tokens_NxP, mask_NxP, rng)
    host = jax.device_get({"tokens": out.tokens, "mask": out.mask, "logprobs": out.logprobs,
                           "truncated": out.truncated, "lengths": out.lengths})
  else:
    rng = shd.global_replicated(rng, mesh) if jax.process_count() > 1 else rng
    out = generate_fn(params, shd.global_rows(tokens_NxP, mesh, n), shd.global_rows(mask_NxP, mesh, n), rng)
    host = {k: shd.local_rows(getattr(out, k))
            for k in ("tokens", "mask", "logprobs", "truncated", "lengths")}
  completions = decode_completions(tokenizer, host["tokens"], host["mask"])
  prompts = [t for t in texts for _ in range(group_size)][cut]
  columns = {k: v[cut] for k, v in reward_columns(mine, group_size).items()}
  columns["completion_lengths"] = [int(x) for x in host["lengths"]]
  result = gather_result(reward_runner(prompts, completions, **columns))
  lengths = shd.gather_rows(host["lengths"].astype(np.float32))
  metrics = {
      "completion_len/mean": float(lengths.mean()),
      "completion_len/min": float(lengths.min()),
      "completion_len/max": float(lengths.max()),
      "completion_len/truncated_frac": float(np.mean(shd.gather_rows(host["truncated"].astype(np.float32)))),
      "completion_tokens": float(lengths.sum()),
  }
  batch = {
      "prompt_tokens": np.asarray(tokens_NxP, np.int32),
      "prompt_mask": np.asarray(mask_NxP, np.int32),
      "tokens": host["tokens"].astype(np.int32),
      "mask": host["mask"].astype(np.int32),
      "old_logp": host["logprobs"].astype(np.float32),
      "truncated": host["truncated"].astype(bool),
  }
  rewards = np.asarray(result.total, np.float32).reshape(-1, group_size)
  return Rollout(batch=batch, rewards_BxG=rewards, valid_N=np.asarray(result.valid, bool),
                 prompts=prompts, completions=completions, reward_metrics=result.metrics(),
                 metrics=metrics, rows=None if mesh is None or jax.process_count() == 1 else rows)


def informative_groups(rewards_BxG: np.ndarray, valid_BxG: np.ndarray) -> np.ndarray:
  """bool [B]: groups with at least two valid samples whose rewards are not all equal — the groups with a
  learning signal (a group with equal rewards has zero group-relative advantages)."""
  r = np.where(valid_BxG, rewards_BxG, np.nan)
  with np.errstate(invalid="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no valid sample
    spread = np.nanmax(r, axis=1) - np.nanmin(r, axis=1)
  return (valid_BxG.sum(axis=1) >= 2) & (spread > 0)


def take_groups(parts: Sequence[Rollout], picks: Sequence[tuple[int, int]], group_size: int) -> Rollout:
  """The rollout made of groups `picks` = [(part, group), ...] of `parts`, in that order. Per-sample fields
  follow their groups; `reward_metrics` and `metrics` are those of `parts[0]` (the policy's plain sample,
  comparable to a run without refills), with `completion_tokens` summed over all parts (the tokens the
  sampler produced)."""
  rows = [(p, g * group_size + j) for p, g in picks for j in range(group_size)]
  batch = {k: np.stack([parts[p].batch[k][i] for p, i in rows]) for k in parts[0].batch}
  metrics = dict(parts[0].metrics)
  metrics["completion_tokens"] = float(sum(r.metrics["completion_tokens"] for r in parts))
  return Rollout(batch=batch,
                 rewards_BxG=np.stack([parts[p].rewards_BxG[g] for p, g in picks]),
                 valid_N=np.asarray([parts[p].valid_N[i] for p, i in rows], bool),
                 prompts=[parts[p].prompts[i] for p, i in rows],
                 completions=[parts[p].completions[i] for p, i in rows],
                 reward_metrics=dict(parts[0].reward_metrics), metrics=metrics)


def refill_rollout(draw: Callable[[int], Rollout], *, num_groups: int, group_size: int,
                   max_rounds: int) -> tuple[Rollout, dict[str, float]]:
  """DAPO dynamic sampling (Yu et al. 2025, §3.2): keep sampling until the batch holds `num_groups` groups
  whose rewards are not all equal, instead of training on (or masking) the uninformative ones.

  `draw(i)` returns the i-th rollout of this step (fresh prompts, its own key); up to `max_rounds` are drawn,
  stopping as soon as enough informative groups (`informative_groups`) are collected. The batch is the
  first `num_groups` of them, in sampling order; when the rounds run out first, it is filled with
  uninformative groups of the earliest rounds (their advantages are 0; `grpo.filter_zero_std` masks them).
  The shapes never change, so nothing recompiles.

  Returns `(rollout, metrics)`: dynamic_sampling/rounds (draws made), informative_frac (of all groups
  sampled), discarded_groups (sampled, not trained on) and short_groups (uninformative groups left in the
  batch: 0 when the refill succeeded).
  """
  if max_rounds < 1:
    raise ValueError(f"refill_rollout: max_rounds must be >= 1, got max_rounds={max_rounds!r}")
  parts, kept, spare = [], [], []
  for i in range(max_rounds):
    r = draw(i)
    parts.append(r)
    info = informative_groups(r.rewards_BxG, r.valid_N.reshape(r.rewards_BxG.shape))
    kept += [(i, g) for g in np.flatnonzero(info)]
    spare += [(i, g) for g in np.flatnonzero(~info)]
    if len(kept) >= num_groups:
      break
  picks = kept[:num_groups] + spare[:max(num_groups - len(kept), 0)]
  sampled = sum(r.rewards_BxG.shape[0] for r in parts)
  metrics = {
      "dynamic_sampling/rounds": float(len(parts)),
      "dynamic_sampling/informative_frac": len(kept) / sampled,
      "dynamic_sampling/discarded_groups": float(sampled - len(picks)),
      "dynamic_sampling/short_groups": float(max(num_groups - len(kept), 0)),
  }
  return take_groups(parts, picks, group_size), metrics


def sample_table(r: Rollout, n: int = 4) -> list[dict[str, Any]]:
  """A few (prompt, completion, reward) rows for logging."""
  flat = r.rewards_BxG.reshape(-1)[r.rows if r.rows is not None else slice(None)]  # this process's rows
  return [{"prompt": r.prompts[i], "completion": r.completions[i], "reward": float(flat[i])}
          for i in range(min(n, len(r.completions)))]
