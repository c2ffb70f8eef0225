"""T1: a sequence bandit over K answer tokens plus EOS whose reward ignores the length.

A completion is `c, x_1, ..., x_m, EOS` (or no EOS within T tokens): the first token c is the answer
(reward 1 iff c equals the prompt's target, q mod K), the rest is filler whose length the reward never
looks at. The policy is a table: the first token from `first[q]` (EOS is not allowed there), token t ≥ 1
from `rest[q, c, t-1]`, i.e. it depends on the prompt, the answer already given and the position. So the
lengths of right and of wrong answers are separate parameters, and any drift of the length of wrong answers
comes from how the loss weighs tokens (Dr. GRPO §3.1: the 1/|o_i| of GRPO penalises long wrong answers
less), not from the reward. Expected lengths are exact (products of per-position stop probabilities).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.toys.program import Scores

NEG = -1e9  # structurally forbidden tokens (EOS as the answer): probability exactly 0 in float32


@dataclasses.dataclass(frozen=True)
class SeqBandit:
  """T1. The initial policy answers uniformly and stops with probability `stop_prob` per position."""

  num_prompts: int = 64  # Q
  num_answers: int = 4  # K answer tokens (ids 0..K-1); EOS is id K
  max_len: int = 16  # T, completion limit (tokens, EOS included)
  stop_prob: float = 0.2  # initial P(EOS) at every position t >= 1

  completion_len = property(lambda self: self.max_len)
  vocab_size = property(lambda self: self.num_answers + 1)
  eos_id = property(lambda self: self.num_answers)
  has_process = False

  def __post_init__(self):
    if self.num_answers < 2 or self.max_len < 2 or not 0 < self.stop_prob < 1:
      raise ValueError(f"SeqBandit: need num_answers >= 2, max_len >= 2, 0 < stop_prob < 1, got "
                       f"{self.num_answers}, {self.max_len}, {self.stop_prob}")

  def init_params(self):
    K, V, T = self.num_answers, self.vocab_size, self.max_len
    # EOS logit such that P(EOS) = stop_prob against K filler tokens at logit 0.
    eos = np.log(self.stop_prob * K / (1 - self.stop_prob))
    rest = np.zeros((self.num_prompts, V, T - 1, V))
    rest[..., K] = eos
    return {"first": jnp.zeros((self.num_prompts, V), jnp.float32), "rest": jnp.asarray(rest, jnp.float32)}

  def draw_prompts(self, key, n: int):
    if n > self.num_prompts:
      raise ValueError(f"SeqBandit: {n} prompts per step > num_prompts={self.num_prompts}")
    return jax.random.permutation(key, self.num_prompts)[:n]

  def _first_logits(self, params):
    return params["first"].at[:, self.eos_id].set(NEG)  # [Q, V]

  def logits(self, params, ctx_N, tokens_NxT):
    first_NxV = self._first_logits(params)[ctx_N]
    rest_NxT1xV = params["rest"][ctx_N, tokens_NxT[:, 0]]  # [N, T-1, V]
    return jnp.concatenate([first_NxV[:, None], rest_NxT1xV], axis=1)

  def step_logits(self, params, ctx_N, tokens_NxT, t):
    """`logits(...)[:, t]` for a traced position t, without the other T − 1 positions.  -> [N, V]."""
    first_NxV = self._first_logits(params)[ctx_N]
    rest_NxV = params["rest"][ctx_N, tokens_NxT[:, 0], jnp.maximum(t - 1, 0)]
    return jnp.where(t == 0, first_NxV, rest_NxV)

  def score(self, ctx_N, tokens_NxT, mask_NxT, truncated_N):
    correct_N = (tokens_NxT[:, 0] == ctx_N % self.num_answers).astype(jnp.float32)
    empty = jnp.zeros((correct_N.shape[0], 0))
    return Scores(correct_N, correct_N, empty, empty.astype(jnp.int32), empty)

  def expected_lengths(self, params):
    """Exact E[length | prompt q, answer c] [Q, V] and P(truncated | q, c) [Q, V]."""
    stop_QxVxT1 = jax.nn.softmax(params["rest"], axis=-1)[..., self.eos_id]
    alive = jnp.cumprod(1.0 - stop_QxVxT1, axis=-1)  # P(no EOS at positions 1..t)
    # Token 0 is always emitted; token t >= 1 is emitted iff no EOS at 1..t-1.
    emitted = jnp.concatenate([jnp.ones_like(alive[..., :1]), alive[..., :-1]], axis=-1)
    return 1.0 + jnp.sum(emitted, axis=-1), alive[..., -1]

  def exact_metrics(self, params, ref_params, params0):
    K = self.num_answers
    pi_QxV = jax.nn.softmax(self._first_logits(params), axis=-1)
    target_Q = jnp.arange(self.num_prompts) % K
    is_target_QxV = jax.nn.one_hot(target_Q, self.vocab_size)
    p_Q = jnp.sum(pi_QxV * is_target_QxV, -1)
    length_QxV, trunc_QxV = self.expected_lengths(params)
    wrong_QxV = pi_QxV * (1 - is_target_QxV)
    logp = jnp.where(pi_QxV > 0, jnp.log(jnp.maximum(pi_QxV, 1e-30)), 0.0)
    return {
        "success": jnp.mean(p_Q),
        "len_correct": jnp.mean(jnp.sum(length_QxV * is_target_QxV, -1)),
        "len_wrong": jnp.mean(jnp.sum(length_QxV * wrong_QxV, -1) / jnp.maximum(1 - p_Q, 1e-12)),
        "answer_entropy": jnp.mean(-jnp.sum(pi_QxV * logp, -1)),
        "truncated_exact": jnp.mean(jnp.sum(pi_QxV * trunc_QxV, -1)),
    }

  def diagnostics(self, spec, knobs, params, ref_params, grads, ctx_N, rewards_BxG):
    return {}

  def final_metrics(self, params, key):
    return {}
