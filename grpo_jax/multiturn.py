"""Multi-turn / tool-use rollouts: the jitted sampler takes a turn, the host environment answers.

Per turn, every sequence's context (prompt + the turns and observations so far) is left-padded to one
static bucket and `generate_fn` (`sampler.jit_generate`, max_new_tokens = the turn budget) samples a model
turn; the host cuts it at the environment's first stop string, decodes it and calls `env.step`; the
observation's tokens (at most `max_obs_tokens`) are appended, and the loop repeats up to `max_turns` turns
or until every episode is done. Shapes never change, so the sampler compiles once.

The training sequence is the episode's tokens packed from the left: model turns and observations, right-
padded to T = `EnvSpec.completion_len`. `mask` [N, T] is 1 on all of them (the trainer attends to the
observations as context, at the positions the sampler saw them), `action_mask` [N, T] only on the
model's tokens: `train.prepare_batch` builds the loss mask from it, so environment tokens get no loss, no
KL and no gradient. `old_logp` is the sampler's log-prob on model tokens, 0 on environment tokens.

Shapes: B prompts, G group size, N = B·G, P prompt length, T the multi-turn completion length.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import jax
import numpy as np

from grpo_jax import rollout as rollout_lib
from grpo_jax import sampler as sampler_lib
from grpo_jax.env import EnvSpec
from grpo_jax.tasks import format_prompt

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Episode:
  """One sequence: its tokens in order, which of them the policy produced, and the text of each part."""

  tokens: list[int] = dataclasses.field(default_factory=list)
  logp: list[float] = dataclasses.field(default_factory=list)
  action: list[int] = dataclasses.field(default_factory=list)  # 1: a model token, 0: an environment token
  texts: list[str] = dataclasses.field(default_factory=list)  # turn, observation, turn, ...
  reward: float = 0.0
  turns: int = 0
  finished: bool = False
  done: bool = False  # the environment ended the episode (not the turn limit)
  truncated: bool = False  # not done by the environment, or the last turn ran out of tokens
  env_error: bool = False
  obs_cut: int = 0  # observations longer than max_obs_tokens

  def add(self, ids, logp, text: str, *, action: bool):
    self.tokens += [int(t) for t in ids]
    self.logp += [float(x) for x in logp] if action else [0.0] * len(ids)
    self.action += [int(action)] * len(ids)
    self.texts.append(text)

  @property
  def transcript(self) -> str:
    return "".join(self.texts)

  @property
  def model_tokens(self) -> int:
    return sum(self.action)


def stop_cut(tokenizer, ids: Sequence[int], stop_strings: Sequence[str]) -> int:
  """How many of `ids` a turn keeps: the shortest prefix whose text contains a stop string (bisection
  over prefixes: log2(len) decodes), else all of them."""
  if not stop_strings or not any(s in tokenizer.decode(ids) for s in stop_strings):
    return len(ids)
  lo, hi = 1, len(ids)  # the answer is in [lo, hi]
  while lo < hi:
    mid = (lo + hi) // 2
    if any(s in tokenizer.decode(ids[:mid]) for s in stop_strings):
      hi = mid
    else:
      lo = mid + 1
  return lo


def pack(episodes: Sequence[Episode], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """Episodes -> right-padded `tokens` int32, `mask` int32, `action_mask` int32, `old_logp` float32,
  all `[N, length]`."""
  n = len(episodes)
  out = {"tokens": np.full((n, length), pad_id, np.int32), "mask": np.zeros((n, length), np.int32),
         "action_mask": np.zeros((n, length), np.int32), "old_logp": np.zeros((n, length), np.float32)}
  for i, ep in enumerate(episodes):
    k = len(ep.tokens)
    if k > length:
      raise ValueError(f"episode {i} has {k} tokens, more than the completion length {length}")
    out["tokens"][i, :k], out["mask"][i, :k] = ep.tokens, 1
    out["action_mask"][i, :k], out["old_logp"][i, :k] = ep.action, ep.logp
  return out


def _step(env, text: str, ep: Episode):
  """`env.step(text)`, with an exception ending the episode (reward 0) instead of the run."""
  try:
    obs, reward, done = env.step(text)
    return str(obs), float(reward), bool(done)
  except Exception as e:  # noqa: BLE001 - a broken environment must not kill training
    log.warning("environment step failed (episode ended, reward 0): %s: %s", type(e).__name__, e)
    ep.env_error = True
    return "", 0.0, True


def run_episodes(generate_fn: Callable, params, examples: Sequence[dict], tokenizer, rng, *,
                 prompt_len: int, fmt: rollout_lib.PromptFormat, spec: EnvSpec):
  """Plays one episode per example (N of them: repeat the examples for groups).

  `generate_fn(params, tokens [N, C], mask [N, C], rng) -> SampleOutput` samples one turn of
  `spec.turn_tokens` tokens, C = `spec.context_len(prompt_len)`; turn k uses `fold_in(rng, k)`.
  Returns `(prompt_texts [N], prompt_tokens [N, P], prompt_mask [N, P], episodes [N])`.
  """
  envs = [spec.factory() for _ in examples]
  texts = [format_prompt(env.reset(ex), tokenizer, system_prompt=fmt.system_prompt, template=fmt.template,
                         use_chat_template=fmt.use_chat_template) for env, ex in zip(envs, examples)]
  prompt_tokens, prompt_mask = tokenizer.batch_encode_left_padded(texts, prompt_len)
  prompt_ids = [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(prompt_tokens, prompt_mask)]
  episodes = [Episode() for _ in examples]
  context_len = spec.context_len(prompt_len)
  for turn in range(spec.max_turns):
    active = [i for i, ep in enumerate(episodes) if not ep.finished]
    if not active:
      break
    tokens, mask = sampler_lib.left_pad([p + ep.tokens for p, ep in zip(prompt_ids, episodes)],
                                        [context_len], tokenizer.pad_id)
    out = jax.device_get(generate_fn(params, tokens, mask, jax.random.fold_in(rng, turn)))
    if out.tokens.shape[1] != spec.turn_tokens:
      raise ValueError(f"generate_fn samples {out.tokens.shape[1]} tokens per turn; the EnvSpec expects "
                       f"{spec.turn_tokens} (rollout.max_new_tokens)")
    last = turn == spec.max_turns - 1
    for i in active:
      ep, env = episodes[i], envs[i]
      length = int(out.lengths[i])
      ids = [int(t) for t in out.tokens[i, :length]]
      stops = tuple(getattr(env, "stop_strings", ()))
      keep = stop_cut(tokenizer, ids, stops)
      text = tokenizer.decode(ids[:keep])
      stopped = bool(ids) and ids[keep - 1] == tokenizer.eos_id or any(s in text for s in stops)
      ep.add(ids[:keep], out.logprobs[i, :keep], text, action=True)
      ep.turns += 1
      obs, reward, done = _step(env, text, ep)
      ep.reward += reward
      if done or last:
        ep.finished, ep.done = True, done
        ep.truncated = not done or not stopped
        continue
      obs_ids = list(tokenizer.encode(obs))
      if len(obs_ids) > spec.max_obs_tokens:
        obs_ids, ep.obs_cut = obs_ids[:spec.max_obs_tokens], ep.obs_cut + 1
        obs = tokenizer.decode(obs_ids)
      ep.add(obs_ids, (), obs, action=False)
  return texts, np.asarray(prompt_tokens, np.int32), np.asarray(prompt_mask, np.int32), episodes


def episode_metrics(episodes: Sequence[Episode], prefix: str = "multiturn/") -> dict[str, float]:
  turns = np.asarray([ep.turns for ep in episodes], np.float32)
  env_tokens = np.asarray([len(ep.tokens) - ep.model_tokens for ep in episodes], np.float32)
  return {f"{prefix}turns_mean": float(turns.mean()), f"{prefix}turns_max": float(turns.max()),
          f"{prefix}done_frac": float(np.mean([ep.done for ep in episodes])),
          f"{prefix}env_reward_mean": float(np.mean([ep.reward for ep in episodes])),
          f"{prefix}env_tokens_mean": float(env_tokens.mean()),
          f"{prefix}env_errors": float(sum(ep.env_error for ep in episodes)),
          f"{prefix}obs_cut": float(sum(ep.obs_cut for ep in episodes))}


def _columns(examples, episodes, group_size):
  columns = rollout_lib.reward_columns(examples, group_size)
  columns["env_reward"] = [ep.reward for ep in episodes]
  columns["completion_lengths"] = [ep.model_tokens for ep in episodes]
  columns["num_turns"] = [ep.turns for ep in episodes]
  return columns


def rollout(generate_fn: Callable, params, examples: Sequence[dict], tokenizer, reward_runner, rng, *,
            group_size: int, prompt_len: int, fmt: rollout_lib.PromptFormat, spec: EnvSpec,
            mesh=None) -> rollout_lib.Rollout:
  """`rollout.rollout` for episodes: G episodes per example, scored by `reward_runner` on the transcripts
  (model turns and observations, as text) with the columns `env_reward` (the episode's summed step
  rewards), `completion_lengths` (model tokens) and `num_turns`. The batch adds `action_mask` [N, T]."""
  del mesh  # the batch is sharded by the trainer
  repeated = [ex for ex in examples for _ in range(group_size)]
  texts, prompt_tokens, prompt_mask, episodes = run_episodes(
      generate_fn, params, repeated, tokenizer, rng, prompt_len=prompt_len, fmt=fmt, spec=spec)
  completions = [ep.transcript for ep in episodes]
  result = reward_runner(texts, completions, **_columns(examples, episodes, group_size))
  lengths = np.asarray([ep.model_tokens for ep in episodes], np.float32)
  truncated = np.asarray([ep.truncated for ep in episodes], bool)
  metrics = {
      "completion_len/mean": float(lengths.mean()), "completion_len/min": float(lengths.min()),
      "completion_len/max": float(lengths.max()), "completion_len/truncated_frac": float(truncated.mean()),
      "completion_tokens": float(lengths.sum()), **episode_metrics(episodes)}
  batch = {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
           **pack(episodes, spec.completion_len, tokenizer.pad_id), "truncated": truncated}
  rewards = np.asarray(result.total, np.float32).reshape(-1, group_size)
  return rollout_lib.Rollout(batch=batch, rewards_BxG=rewards, valid_N=np.asarray(result.valid, bool),
                             prompts=texts, completions=completions, reward_metrics=result.metrics(),
                             metrics=metrics)


def evaluate(greedy_fn: Callable, params, examples: Sequence[dict], tokenizer, correct_fn: Callable, rng, *,
             batch_size: int, prompt_len: int, fmt: rollout_lib.PromptFormat, spec: EnvSpec) -> dict:
  """Greedy episodes on `examples` in chunks of `batch_size` (the last one padded by repetition, so the
  sampler compiles once): `eval/accuracy` (the correctness reward ≥ 0.5 on the transcript, as in
  `evaluation.evaluate`) and the episode metrics under `eval/` (`eval/turns_mean`, ...)."""
  correct, total, episodes = 0, 0, []
  for start in range(0, len(examples), batch_size):
    chunk = list(examples[start:start + batch_size])
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)
    texts, _, _, eps = run_episodes(greedy_fn, params, chunk, tokenizer, jax.random.fold_in(rng, start),
                                    prompt_len=prompt_len, fmt=fmt, spec=spec)
    scores = correct_fn(texts, [ep.transcript for ep in eps], **_columns(chunk, eps, 1))
    correct += sum(s is not None and s >= 0.5 for s in scores[:real])
    total += real
    episodes += eps[:real]
  return {"eval/accuracy": correct / max(total, 1), **episode_metrics(episodes, "eval/")}
