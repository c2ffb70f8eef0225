"""The toy tasks and the exact paper checks: 1/σ_q difficulty weights, KL estimator gradients vs the exact
∇KL, token vs sequence ratios at μ = 1, and many seeds in one vmapped program vs one at a time."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import advantages as adv_lib
from grpo_jax import losses, rewards
from grpo_jax.sampler import SamplingParams
from grpo_jax.toys import Bandit, Scratchpad, SeqBandit
from grpo_jax.toys import bandit as bandit_lib
from grpo_jax.toys import program


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def bandit_row_grads(toy, params, ctx_N, tokens, rewards_BxG, estimator):
  """∇_θ of the GRPO policy loss (on-policy, T = 1) for a batch, with `estimator` advantages."""
  @jax.jit
  def grads(params, rewards_BxG):
    adv = adv_lib.group_advantages(rewards_BxG, estimator).reshape(-1)

    def loss(p):
      logp = program.completion_logprobs(toy, p, ctx_N, tokens, 1.0)
      return losses.policy_loss(logp, jax.lax.stop_gradient(logp), adv, jnp.ones_like(logp))[0]
    return jax.grad(loss)(params)["logits"]
  return np.asarray(grads(params, rewards_BxG), np.float64)


def test_grpo_gradient_is_dr_grpo_over_sigma():
  """Dr. GRPO's difficulty bias, exactly: on T0 the "grpo" gradient of prompt q's row equals the
  "dr_grpo" one divided by (σ̂_q + eps), σ̂_q the unbiased std of its group's rewards (numpy)."""
  toy = Bandit(num_prompts=12, num_actions=6, p_min=0.1, p_max=0.9)
  params = toy.init_params()
  B, G = 12, 8
  ctx_B = toy.draw_prompts(jax.random.key(0), B)
  ctx_N = jnp.repeat(ctx_B, G)
  ro = jax.jit(lambda p, k: program.sample(toy, p, ctx_N, k, SamplingParams()))(params, jax.random.key(1))
  r_BxG = toy.score(ctx_N, ro.tokens_NxT, ro.mask_NxT, ro.truncated_N).rewards_N.reshape(B, G)
  g_grpo = bandit_row_grads(toy, params, ctx_N, ro.tokens_NxT, r_BxG, "grpo")[np.asarray(ctx_B)]
  g_dr = bandit_row_grads(toy, params, ctx_N, ro.tokens_NxT, r_BxG, "dr_grpo")[np.asarray(ctx_B)]
  sigma_B = np.std(np.asarray(r_BxG, np.float64), axis=1, ddof=1)
  live = sigma_B > 0
  assert 3 <= live.sum() < B  # the batch mixes informative and dead groups
  np.testing.assert_allclose(g_grpo[live] * (sigma_B[live, None] + 1e-6), g_dr[live], rtol=1e-4, atol=1e-7)
  assert np.all(g_grpo[~live] == 0) and np.all(g_dr[~live] == 0)


def _binomial_expected_grad_scale(p, G, eps=1e-6):
  """E[∇ loss] = −c · ∇p for the "grpo" estimator on one prompt with success probability p (numpy):
  given k successes, a success's score has mean ∇p/p and a failure's −∇p/(1−p)."""
  from math import comb
  c = 0.0
  for k in range(1, G):
    s_k = np.sqrt(k * (G - k) / (G * (G - 1)))
    c += comb(G, k) * p**k * (1 - p) ** (G - k) * (k * (G - k) / G) / (s_k + eps) / (p * (1 - p))
  return c / G


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_expected_bandit_gradient_by_enumeration(estimator):
  """The expectation over ALL G-sample outcomes of one prompt (enumerated, through the package's
  advantages and loss) is −c·∇p: c = 1 for RLOO (unbiased), (G−1)/G for Dr. GRPO, and the binomial
  formula for GRPO, which approaches 1/σ_q = 1/sqrt(p(1−p)) for large G."""
  A, G = 3, 5
  toy = Bandit(num_prompts=1, num_actions=A, num_correct=1, p_min=0.3, p_max=0.3)
  params = {"logits": jnp.asarray([[0.4, -0.3, 0.8]], jnp.float32)}
  pi = np_softmax(np.asarray(params["logits"][0]))
  p = pi[0]
  outcomes = np.asarray(list(itertools.product(range(A), repeat=G)), np.int32)  # [A^G, G]
  prob = np.prod(pi[outcomes], axis=1)

  def grad_of(tokens_G):
    r = (tokens_G == 0).astype(jnp.float32)[None]
    adv = adv_lib.group_advantages(r, estimator).reshape(-1)

    def loss(p_):
      logp = program.completion_logprobs(toy, p_, jnp.zeros(G, jnp.int32), tokens_G[:, None], 1.0)
      return losses.policy_loss(logp, jax.lax.stop_gradient(logp), adv, jnp.ones_like(logp))[0]
    return jax.grad(loss)(params)["logits"][0]

  grads = jax.jit(jax.vmap(grad_of))(jnp.asarray(outcomes))
  expected = np.einsum("o,oa->a", prob, np.asarray(grads, np.float64))
  grad_p = pi * ((np.arange(A) == 0) - p)  # ∇_θ p for a softmax row
  c = {"rloo": 1.0, "dr_grpo": (G - 1) / G, "grpo": _binomial_expected_grad_scale(p, G)}[estimator]
  np.testing.assert_allclose(expected, -c * grad_p, rtol=2e-4, atol=1e-6)
  if estimator == "grpo":  # the 1/σ_q scaling of the population gradient, at large G
    for q in (0.2, 0.5, 0.8):
      assert _binomial_expected_grad_scale(q, 400) * np.sqrt(q * (1 - q)) == pytest.approx(1.0, abs=0.01)


def test_kl_estimator_gradients_are_exact():
  """E_{a~π}[∇k(a)] for the package's kl_penalty, against ∇KL of a softmax computed in numpy:
  k1 in the loss → 0, k2 in the loss → ∇KL(π‖π_ref), k3 in the loss → ∇KL(π_ref‖π) = π − π_ref,
  k1 as a reward (score function) → ∇KL(π‖π_ref); k3 in the loss is therefore biased."""
  rng = np.random.default_rng(0)
  theta = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  pi, pr = np_softmax(theta), np_softmax(ref)
  kl = np.sum(pi * np.log(pi / pr), -1, keepdims=True)
  grad_kl = pi * (np.log(pi / pr) - kl)  # ∇_θ KL(π_θ‖π_ref)
  grad_reverse = pi - pr  # ∇_θ KL(π_ref‖π_θ) = ∇ −Σ π_ref log π_θ
  got = lambda kind, place: np.asarray(bandit_lib.expected_kl_estimator_grad(theta, ref, kind, place))  # noqa: E731
  np.testing.assert_allclose(got("k1", "loss"), 0.0, atol=1e-6)
  np.testing.assert_allclose(got("k2", "loss"), grad_kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got("k3", "loss"), grad_reverse, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got("k1", "reward"), grad_kl, rtol=1e-4, atol=1e-6)
  assert np.linalg.norm(got("k3", "loss") - grad_kl) > 0.1 * np.linalg.norm(grad_kl)
  np.testing.assert_allclose(np.asarray(bandit_lib.softmax_kl_grad(theta, ref)), grad_kl, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(bandit_lib.softmax_kl(theta, ref)), kl[:, 0], rtol=1e-5)


def _seq_batch(toy, n=64, seed=0):
  params = toy.init_params()
  ctx_N = jnp.arange(n) % toy.num_prompts
  ro = jax.jit(lambda p, k: program.sample(toy, p, ctx_N, k, SamplingParams()))(params, jax.random.key(seed))
  return params, ctx_N, ro


def test_token_and_sequence_ratios_agree_on_policy():
  """GSPO vs GRPO at μ = 1: with the sampler's own log-probs as the old policy the two ratio levels give
  the same loss and gradient; one update later (μ = 2) they differ."""
  toy = SeqBandit(num_prompts=8, max_len=8)
  params, ctx_N, ro = _seq_batch(toy)
  adv_N = jnp.asarray(np.random.default_rng(1).normal(size=ctx_N.shape[0]), jnp.float32)

  def loss(p, level):
    logp = program.completion_logprobs(toy, p, ctx_N, ro.tokens_NxT, 1.0)
    return losses.policy_loss(logp, ro.logp_NxT, adv_N, ro.mask_NxT, ratio_level=level, clip_low=0.2,
                              clip_high=0.2)[0]

  @jax.jit
  def both(p):  # (value, grad) at both ratio levels
    return [jax.value_and_grad(loss)(p, level) for level in ("token", "sequence")]

  logp = program.completion_logprobs(toy, params, ctx_N, ro.tokens_NxT, 1.0)
  assert float(jnp.max(jnp.abs(logp * ro.mask_NxT - ro.logp_NxT))) < 1e-5  # sampler = trainer log-probs
  (v_tok, g_tok), (v_seq, g_seq) = both(params)
  assert float(v_tok) == pytest.approx(float(v_seq), abs=1e-6)
  for k in g_tok:
    np.testing.assert_allclose(g_tok[k], g_seq[k], atol=1e-6)
  moved = jax.tree.map(lambda p, g: p - 200.0 * g, params, g_tok)  # ratios now far from 1
  (_, g_tok), (_, g_seq) = both(moved)
  g_tok, g_seq = g_tok["rest"], g_seq["rest"]
  assert float(jnp.linalg.norm(g_tok - g_seq)) > 0.05 * float(jnp.linalg.norm(g_tok))


def test_vmapped_seeds_match_one_at_a_time():
  """Three seeds in one vmapped program give the curves of the same seeds run one by one."""
  toy = SeqBandit(num_prompts=16, max_len=6)
  spec, knobs = program.arm_program(steps=6, prompts_per_step=8, group_size=4, lr=2.0, num_iterations=2)
  knobs = {k: jnp.float32(v) for k, v in knobs.items()}
  train = program.make_train(toy, spec)
  keys = jax.vmap(jax.random.key)(jnp.arange(3))
  curves, final, _ = jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, knobs)
  single = jax.jit(train)
  for s in range(3):
    c1, f1, _ = single(keys[s], knobs)
    for name in ("success", "len_wrong", "reward", "clip_frac"):
      np.testing.assert_allclose(curves[name][s], c1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(final["success"][s], f1["success"], rtol=1e-5)
  assert float(jnp.std(curves["reward"][:, 1:], axis=0).max()) > 0  # the seeds do differ


def test_bandit_initial_success_is_the_design():
  toy = Bandit(num_prompts=5, num_actions=8, num_correct=2, p_min=0.05, p_max=0.8)
  want = 1 / (1 + np.exp(-np.linspace(np.log(0.05 / 0.95), np.log(0.8 / 0.2), 5)))
  np.testing.assert_allclose(np.asarray(toy.success(toy.init_params())), want, rtol=1e-5)


def test_seqbandit_exact_lengths_match_closed_form_and_samples():
  toy = SeqBandit(num_prompts=4, num_answers=3, max_len=10, stop_prob=0.3)
  params = toy.init_params()
  length_QxV, trunc_QxV = toy.expected_lengths(params)
  closed = 1 + sum(0.7 ** (t - 1) for t in range(1, 10))  # token t >= 1 emitted iff no EOS at 1..t-1
  np.testing.assert_allclose(np.asarray(length_QxV), closed, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(trunc_QxV), 0.7**9, rtol=1e-5)
  _, _, ro = _seq_batch(toy, n=4000, seed=3)
  lengths = np.asarray(ro.mask_NxT.sum(-1))
  assert abs(lengths.mean() - closed) < 4 * lengths.std() / np.sqrt(lengths.size)
  assert np.asarray(ro.truncated_N).mean() == pytest.approx(0.7**9, abs=0.02)


def test_scratchpad_score_hand_cases():
  toy = Scratchpad(num_operands=4, tail_len=3)
  ops = jnp.asarray([[3, 5, 9, 1]] * 3)
  # right chain 3, 8, 7, 8 then EOS; a wrong step (9) whose later steps are locally right; no EOS.
  tokens = jnp.asarray([[3, 8, 7, 8, 11, 0, 0], [3, 9, 8, 9, 10, 11, 0], [3, 8, 7, 8, 10, 10, 10]])
  mask = jnp.asarray([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1] * 7], jnp.float32)
  truncated = jnp.asarray([False, False, True])
  s = toy.score(ops, tokens, mask, truncated)
  np.testing.assert_array_equal(np.asarray(s.correct_N), [1, 0, 0])
  np.testing.assert_array_equal(np.asarray(s.step_rewards_NxK), [[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(np.asarray(s.step_end_NxK), [[0, 1, 2, 3, 4], [0, 1, 2, 3, 5], [0, 1, 2, 3, 6]])


def test_scratchpad_exact_accuracy_matches_brute_force():
  """The (written digit, true sum) dynamic programme against enumerating every prompt and chain (K = 2)."""
  toy = Scratchpad(num_operands=2, tail_len=2, digit_noise=1.5)
  params = toy.init_params()
  pi = np_softmax(np.asarray(params["digits"])[..., :10])
  want = 0.0
  for a1, a2, s1, s2 in itertools.product(range(10), repeat=4):
    if s2 == (a1 + a2) % 10:
      want += pi[0, a1, s1] * pi[s1, a2, s2] / 100
  assert float(toy.answer_accuracy(params)) == pytest.approx(want, rel=1e-5)
  stop = 1 / (1 + np.exp(-np.log(0.235 / 0.765)))
  assert float(toy.finish_prob(params)[0]) == pytest.approx(1 - (1 - stop) ** 2, rel=1e-5)


def test_pass_and_maj_at_k():
  """A perfect policy scores 1 everywhere; a uniform digit policy that always finishes has pass@1 = 0.1,
  pass@k = 1 − 0.9^k, and maj@64 near 0.1 (the vote is a fair lottery among ten equally likely answers)."""
  toy = Scratchpad(num_operands=3, tail_len=2, eval_prompts=100, maj_reps=20)
  s, a = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
  perfect = np.full((10, 10, 12), -30.0)
  perfect[s, a, (s + a) % 10] = 30.0
  tail = np.zeros((2, 12))
  tail[:, 11] = 30.0  # always EOS right away
  metrics = jax.jit(toy.final_metrics)
  tail = jnp.asarray(tail, jnp.float32)
  m = metrics({"digits": jnp.asarray(perfect, jnp.float32), "tail": tail}, jax.random.key(0))
  assert all(float(v) == pytest.approx(1.0) for v in m.values())
  uniform = {"digits": jnp.zeros((10, 10, 12), jnp.float32), "tail": tail}
  m = metrics(uniform, jax.random.key(0))
  for k in toy.ks:
    assert float(m[f"pass@{k}"]) == pytest.approx(1 - 0.9**k, abs=1e-5)
  assert 0.05 < float(m["maj@64"]) < 0.15


def test_soft_overlong_penalty_matches_the_reward_function():
  T, cache = 10, 3
  lengths = np.arange(1, T + 1)
  want = rewards.soft_overlong_penalty(T, cache)([""] * T, [""] * T, completion_lengths=list(lengths))
  got = program.soft_overlong_penalty(jnp.asarray(lengths), jnp.zeros(T, bool), T, cache)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  over = rewards.soft_overlong_penalty(T, cache)([""], [""], completion_lengths=[T + 1])[0]
  assert float(program.soft_overlong_penalty(jnp.asarray([T]), jnp.asarray([True]), T, cache)[0]) == over


@pytest.mark.parametrize("toy", [Bandit(num_prompts=4), SeqBandit(num_prompts=4, max_len=5),
                                 Scratchpad(num_operands=3, tail_len=3, digit_noise=1.0)],
                         ids=["T0", "T1", "T2"])
def test_sampler_step_logits_equal_the_teacher_forced_ones(toy):
  """The sampler reads `step_logits(t)`, the trainer `logits(...)[:, t]`: they must agree everywhere."""
  params = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(5), x.shape), toy.init_params())
  ctx_N = jnp.repeat(toy.draw_prompts(jax.random.key(6), 4), 8, axis=0)
  ro = jax.jit(lambda p, k: program.sample(toy, p, ctx_N, k, SamplingParams()))(params, jax.random.key(7))
  full = jax.jit(toy.logits)(params, ctx_N, ro.tokens_NxT)
  step = jax.jit(lambda p, c, x: jnp.stack([toy.step_logits(p, c, x, t) for t in range(toy.completion_len)], 1))
  np.testing.assert_array_equal(np.asarray(step(params, ctx_N, ro.tokens_NxT)), np.asarray(full))


def _train_rows(toy, spec, rows, seeds=2):
  """Curves [R, S, steps] of `make_train(toy, spec)` for knob rows `rows` (as the ablation runner)."""
  train = jax.vmap(jax.vmap(program.make_train(toy, spec), in_axes=(0, None)), in_axes=(None, 0))
  keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
  return jax.jit(train)(keys, program.stack_knobs(rows))[0]


def test_sampler_mismatch_and_rollout_correction_in_the_toy_program():
  """The mismatch path with neutral knobs is the plain program; without a mismatch the rollout
  correction is a no-op (weights 1); with a hotter sampler (temperature 3) it reports μ's log-probs, the
  corrections change the run and the exact mismatch KL is positive."""
  toy = SeqBandit(num_prompts=16, num_answers=8, max_len=12)  # long enough for sequence ratios out of [1/2, 2]
  settings = dict(steps=5, prompts_per_step=8, group_size=4, optimizer="sgd", lr=4.0)  # SGD: weights scale steps
  plain_spec, plain = program.arm_program(**settings)
  spec, _ = program.arm_program(**settings, sampler_temperature=3.0, old_logp="rescore", rollout_is="tis")
  assert spec.mismatch and not plain_spec.mismatch and program.merge_specs([plain_spec, spec]) == spec
  rows = [plain] + [program.arm_program(**settings, **kw)[1] for kw in (
      dict(old_logp="rescore"), dict(old_logp="rescore", rollout_is="tis"),
      dict(old_logp="rescore", rollout_is="mis", rollout_is_level="sequence"),
      dict(sampler_temperature=3.0, old_logp="rescore"),
      dict(sampler_temperature=3.0, old_logp="rescore", rollout_is="tis"),
      dict(sampler_temperature=3.0, old_logp="rescore", rollout_is="mis", rollout_is_level="sequence"))]
  c = _train_rows(toy, spec, rows)
  ref = _train_rows(toy, plain_spec, [plain])
  for name in ref:  # neutral knobs in the mismatch program: the plain program (up to XLA's fusion order)
    np.testing.assert_allclose(c[name][0], ref[name][0], rtol=1e-6, atol=1e-9, err_msg=name)
  for r in (1, 2, 3):  # no mismatch: re-score and weights are 1 up to float error
    np.testing.assert_allclose(c["success"][r], c["success"][0], rtol=1e-5)
    assert float(jnp.max(jnp.abs(c["is_weight_mean"][r] - 1))) < 1e-5
    assert float(jnp.max(c["mismatch_kl"][r])) < 1e-9
  assert float(jnp.min(c["mismatch_kl"][4])) > 1e-3  # the hotter sampler is visibly another policy
  for r in (5, 6):  # the corrections reweight: a different run from the uncorrected one
    assert float(jnp.max(jnp.abs(c["len_wrong"][r] - c["len_wrong"][4]))) > 5e-5, r  # float noise: < 1e-6
    assert float(jnp.max(jnp.abs(c["is_weight_mean"][r] - 1))) > 1e-3
  assert float(jnp.max(c["is_masked_frac"][6])) > 0 and float(jnp.max(c["is_masked_frac"][5])) == 0
  # The sampler reports the log-probs of the distribution it samples from, softmax(logits / 1.5).
  params, ctx_N = toy.init_params(), jnp.arange(16)
  params = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(3), x.shape), params)
  ro = program.sample(toy, params, ctx_N, jax.random.key(4), SamplingParams(), jnp.float32(1.5))
  mu = losses.token_logprobs(toy.logits(params, ctx_N, ro.tokens_NxT) / 1.5, ro.tokens_NxT)
  np.testing.assert_allclose(ro.logp_NxT, mu * ro.mask_NxT, atol=1e-5)
  pi = program.completion_logprobs(toy, params, ctx_N, ro.tokens_NxT, 1.0)
  assert float(jnp.max(jnp.abs((pi - mu) * ro.mask_NxT))) > 0.05


def test_objectives_agree_on_policy_and_differ_off_policy():
  """CISPO and GMPO have GRPO's gradient at ratio 1: at μ = 1 the three runs coincide; at μ = 3 the extra
  passes move the ratios (past GRPO's clip) and the objectives give different runs."""
  toy = SeqBandit(num_prompts=16, max_len=6)
  # SGD: Adam's first steps are ~sign(g) and would blow float noise on near-zero gradients up to lr.
  settings = dict(steps=4, prompts_per_step=8, group_size=4, optimizer="sgd", lr=20.0)
  curves = {}
  for loss_type, clip in (("grpo", (0.2, 0.2)), ("cispo", (1.0, 0.2)), ("gmpo", (0.4, 0.4))):
    rows = [program.arm_program(**settings, loss_type=loss_type, clip_low=clip[0], clip_high=clip[1],
                                num_iterations=mu) for mu in (1, 3)]
    assert rows[0][0].loss_type == loss_type
    curves[loss_type] = _train_rows(toy, rows[1][0], [r[1] for r in rows])
  for name in ("success", "len_wrong", "reward"):
    for other in ("cispo", "gmpo"):
      np.testing.assert_allclose(curves[other][name][0], curves["grpo"][name][0], rtol=2e-5, atol=1e-6,
                                 err_msg=f"{other} {name} at mu = 1")
  for other in ("cispo", "gmpo"):
    assert float(jnp.max(jnp.abs(curves[other]["success"][1] - curves["grpo"]["success"][1]))) > 1e-3, other
  assert float(jnp.max(curves["grpo"]["clip_frac"][1])) > 0.01  # the extra passes did leave the trust region
  with pytest.raises(ValueError, match="rollout_is='tis'.*old_logp='rescore'"):
    program.arm_program(rollout_is="tis")
  with pytest.raises(ValueError, match="loss_type='ppo'"):
    program.arm_program(loss_type="ppo")
