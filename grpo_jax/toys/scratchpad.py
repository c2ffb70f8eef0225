"""T2 / T3: modular addition with a scratchpad whose every step is checkable, so an exact process reward exists.

A prompt is K operands a_1..a_K in 0..9. The completion writes the running sums mod 10, one digit per step,
`s_1 .. s_K` (step j is right iff s_j = (s_{j-1} + a_j) mod 10, with s_0 = 0), then any number of THINK
tokens, then EOS; the answer is s_K. The outcome reward is 1 iff the completion FINISHED (EOS within the
limit) and s_K = (a_1 + ... + a_K) mod 10. The process reward (DeepSeekMath §4.1.3) scores each of the K
digit steps plus a last "termination" step (EOS within the limit), each ending at its own token.

The policy is a table: a digit step draws s_j from `digits[s_{j-1}, a_j]` (the 100 cells are shared by
every position and prompt, as the weights of a language model are), a tail slot draws THINK or EOS from
`tail[slot]`. The initial table is a noisy "SFT model": each cell prefers the right digit by a margin
`digit_skill` plus fixed Gaussian noise, so some cells are reliably wrong and RL has something to fix.

T3 is the same task and the same initial policy with fewer tail slots (`tail_len`): the initial THINK
habit (stop probability `stop_prob` per slot) then runs past the limit in ~20% of rollouts
((1 − 0.235)^6 ≈ 0.2), which is where DAPO's overlong filtering and soft overlong punishment act.

All evaluation metrics are exact except maj@k (a Monte-Carlo vote over draws from the exact answer
distribution): accuracy over the whole prompt distribution is a dynamic programme over (written digit,
true running sum) pairs.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.toys.program import Scores

THINK, EOS = 10, 11
V = 12
NEG = -1e9  # structurally forbidden tokens: digits in the tail, THINK/EOS in a digit step


@dataclasses.dataclass(frozen=True)
class Scratchpad:
  """T2 (tail_len=16: ~1% truncated) / T3 (tail_len=6: ~20% truncated)."""

  num_operands: int = 4  # K digit steps
  tail_len: int = 16  # THINK/EOS slots after the digits; the completion limit is K + tail_len
  stop_prob: float = 0.235  # initial P(EOS) in each tail slot
  digit_skill: float = 2.6  # initial logit margin of the right digit (≈ 60% per step without noise)
  digit_noise: float = 1.0  # std of the fixed noise on the initial digit logits
  eval_prompts: int = 200  # prompts of the pass@k / maj@k evaluation (a fixed set)
  maj_reps: int = 25  # Monte-Carlo votes per prompt and k for maj@k
  ks: tuple = (1, 4, 16, 64)  # k of pass@k and maj@k
  layout_seed: int = 0  # seeds the initial table's noise and the eval prompts, not the training runs

  vocab_size = V
  eos_id = EOS
  has_process = True
  completion_len = property(lambda self: self.num_operands + self.tail_len)

  def __post_init__(self):
    if self.num_operands < 1 or self.tail_len < 1 or not 0 < self.stop_prob < 1:
      raise ValueError(f"Scratchpad: need num_operands >= 1, tail_len >= 1, 0 < stop_prob < 1, got "
                       f"{self.num_operands}, {self.tail_len}, {self.stop_prob}")

  def init_params(self):
    rng = np.random.default_rng(self.layout_seed)
    s, a = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    digits = np.zeros((10, 10, V))
    digits[s, a, (s + a) % 10] = self.digit_skill
    digits[..., :10] += rng.normal(size=(10, 10, 10)) * self.digit_noise
    tail = np.zeros((self.tail_len, V))
    tail[:, EOS] = np.log(self.stop_prob / (1 - self.stop_prob))
    return {"digits": jnp.asarray(digits, jnp.float32), "tail": jnp.asarray(tail, jnp.float32)}

  def draw_prompts(self, key, n: int):
    return jax.random.randint(key, (n * self.num_operands,), 0, 10).reshape(n, self.num_operands)

  def _digit_logits(self, params):  # [10, 10, V]: THINK and EOS are not allowed in a digit step
    return params["digits"].at[..., 10:].set(NEG)

  def _tail_logits(self, params):  # [tail_len, V]: only THINK or EOS after the digits
    return params["tail"].at[:, :10].set(NEG)

  def logits(self, params, ctx_N, tokens_NxT):
    K = self.num_operands
    prev_NxK = jnp.concatenate([jnp.zeros_like(tokens_NxT[:, :1]), tokens_NxT[:, :K - 1]], axis=1)
    digit_NxKxV = self._digit_logits(params)[jnp.clip(prev_NxK, 0, 9), ctx_N]
    tail_NxLxV = jnp.broadcast_to(self._tail_logits(params), (ctx_N.shape[0], self.tail_len, V))
    return jnp.concatenate([digit_NxKxV, tail_NxLxV], axis=1)

  def step_logits(self, params, ctx_N, tokens_NxT, t):
    """`logits(...)[:, t]` for a traced position t, without the other T − 1 positions.  -> [N, V]."""
    K = self.num_operands
    j = jnp.minimum(t, K - 1)
    prev_N = jnp.where(t == 0, 0, tokens_NxT[:, jnp.maximum(j - 1, 0)])
    digit_NxV = self._digit_logits(params)[jnp.clip(prev_N, 0, 9), ctx_N[:, j]]
    tail_V = self._tail_logits(params)[jnp.clip(t - K, 0, self.tail_len - 1)]
    return jnp.where(t < K, digit_NxV, tail_V[None, :])

  def score(self, ctx_N, tokens_NxT, mask_NxT, truncated_N):
    K = self.num_operands
    s_NxK = tokens_NxT[:, :K]
    prev_NxK = jnp.concatenate([jnp.zeros_like(s_NxK[:, :1]), s_NxK[:, :-1]], axis=1)
    step_ok_NxK = (s_NxK == (prev_NxK + ctx_N) % 10).astype(jnp.float32)
    finished_N = (~truncated_N).astype(jnp.float32)
    correct_N = finished_N * (s_NxK[:, -1] == jnp.sum(ctx_N, -1) % 10)
    length_N = jnp.sum(mask_NxT, -1)
    n = tokens_NxT.shape[0]
    step_rewards = jnp.concatenate([step_ok_NxK, finished_N[:, None]], axis=1)
    step_end = jnp.concatenate([jnp.broadcast_to(jnp.arange(K), (n, K)),
                                (length_N - 1).astype(jnp.int32)[:, None]], axis=1).astype(jnp.int32)
    return Scores(correct_N, correct_N, step_rewards, step_end, jnp.ones_like(step_rewards))

  def finish_prob(self, params):
    """Exact P(EOS within the limit) and E[tail tokens emitted] (the tail ignores prompt and digits)."""
    stop_L = jax.nn.softmax(self._tail_logits(params), -1)[:, EOS]
    alive_L = jnp.cumprod(1.0 - stop_L)  # no EOS in slots 0..l
    emitted_L = jnp.concatenate([jnp.ones((1,)), alive_L[:-1]])
    return 1.0 - alive_L[-1], jnp.sum(emitted_L)

  def answer_accuracy(self, params):
    """Exact P(s_K = true sum mod 10) over uniform prompts: DP over (written s, true sum t) pairs."""
    pi_SxAxD = jax.nn.softmax(self._digit_logits(params), -1)[..., :10]
    t, a = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    shift_AxTxU = np.zeros((10, 10, 10), np.float32)
    shift_AxTxU[a, t, (t + a) % 10] = 1.0
    joint_SxT = jnp.zeros((10, 10)).at[0, 0].set(1.0)
    for _ in range(self.num_operands):
      joint_SxT = jnp.einsum("st,sad,atu->du", joint_SxT, pi_SxAxD, shift_AxTxU) / 10.0
    return jnp.trace(joint_SxT)

  def exact_metrics(self, params, ref_params, params0):
    finished, tail_tokens = self.finish_prob(params)
    answer = self.answer_accuracy(params)
    pi = jax.nn.softmax(self._digit_logits(params), -1)[..., :10]
    s, a = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    logp = jnp.log(jnp.maximum(pi, 1e-30))
    return {
        "accuracy": answer * finished,  # a correct answer within the completion limit
        "answer_accuracy": answer,  # s_K right, whether or not the completion finished
        "truncated_exact": 1.0 - finished,
        "length_exact": self.num_operands + tail_tokens,
        "step_accuracy": jnp.mean(pi[s, a, (s + a) % 10]),
        "digit_entropy": jnp.mean(-jnp.sum(pi * logp, -1)),
    }

  def diagnostics(self, spec, knobs, params, ref_params, grads, ctx_N, rewards_BxG):
    return {}

  def answer_distribution(self, params, ops_PxK):
    """[P, 11] exact distribution of the answer: digits 0..9 (finished) and 10 = no answer (truncated)."""
    pi = jax.nn.softmax(self._digit_logits(params), -1)[..., :10]
    p_PxS = jax.nn.one_hot(jnp.zeros(ops_PxK.shape[0], jnp.int32), 10)
    for j in range(self.num_operands):
      p_PxS = jnp.einsum("ps,psd->pd", p_PxS, pi[:, ops_PxK[:, j]].transpose(1, 0, 2))
    finished, _ = self.finish_prob(params)
    return jnp.concatenate([p_PxS * finished, jnp.full((ops_PxK.shape[0], 1), 1.0 - finished)], -1)

  def final_metrics(self, params, key):
    """pass@k (exact, 1 − (1 − p)^k) and maj@k (majority vote over k draws, ties split uniformly; all
    "no answer" is wrong) on a fixed set of prompts, DeepSeekMath Fig. 7's two metrics."""
    ops_PxK = self.draw_prompts(jax.random.PRNGKey(self.layout_seed + 1), self.eval_prompts)
    target_P = jnp.sum(ops_PxK, -1) % 10
    dist_PxC = self.answer_distribution(params, ops_PxK)
    p_P = jnp.take_along_axis(dist_PxC, target_P[:, None], -1)[:, 0]
    out = {}
    for i, k in enumerate(self.ks):
      out[f"pass@{k}"] = jnp.mean(1.0 - (1.0 - p_P) ** k)
      k_draw, k_tie = jax.random.split(jax.random.fold_in(key, i))
      shape = (self.eval_prompts, self.maj_reps, k)
      # Inverse-CDF draws from 1-D uniforms (multi-dimensional random shapes compile very slowly on CPU).
      u = jax.random.uniform(k_draw, (int(np.prod(shape)),)).reshape(shape)
      cdf_PxC = jnp.cumsum(dist_PxC, -1)
      draws = jnp.sum(u[..., None] > cdf_PxC[:, None, None, :-1], -1)  # class 0..10
      counts = jnp.sum(draws[..., None] == jnp.arange(10), axis=-2).astype(jnp.float32)  # [P, R, 10]
      tie = jax.random.uniform(k_tie, (int(np.prod(counts.shape)),), maxval=0.5).reshape(counts.shape)
      noisy = counts + tie  # < 1: breaks ties only, uniformly
      winner = jnp.argmax(noisy, -1)
      ok = (winner == target_P[:, None]) & (jnp.max(counts, -1) > 0)
      out[f"maj@{k}"] = jnp.mean(ok.astype(jnp.float32))
    return out
