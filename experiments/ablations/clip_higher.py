"""Clip-higher and mu > 1: entropy collapse under PPO clipping (DAPO), on T0 with several right answers.

  python -m grpo_jax.ablate --suite experiments/ablations/clip_higher.py
"""
import ml_collections as mc


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "clip_higher"  # results in OUT/clip_higher/, plot docs/ablations/clip_higher.png
  c.title = "Clip-higher and μ > 1: entropy collapse (T0, 4 right answers of 16)"  # plot and section title
  c.published = (  # the effect as the paper states it, with its source
      "DAPO (Yu et al. 2025, §3.1, Fig. 2): with the symmetric clip ε = 0.2 the upper bound 1 + ε caps how "
      "fast an unlikely token can gain probability, the policy's entropy collapses early and exploration "
      "stops; decoupling the bounds (ε_low = 0.2, ε_high = 0.28, 'clip-higher') keeps the entropy up and "
      "raises AIME accuracy.")
  c.design = (  # what we measure and why it isolates the effect
      "Clipping only acts when the policy moves between sampling and the update, so the comparison runs at "
      "μ = 4 gradient steps per rollout (μ = 1 is on-policy: the ratio is exactly 1 and clipping is "
      "inert). On T0 with 4 right answers out of 16 (unequal initial probabilities), GRPO concentrates on "
      "one right answer: the exact mean entropy of π_q and the success probability are measured. "
      "Calibration (baseline arm `mu4_clip_0.2` only): lr = 8 is the smallest tried (2, 8, 20) at which the "
      "clip is active on >= 5% of the tokens early in training; success saturates by mid-training there, "
      "so the accuracy claim uses the mean over training.")
  c.notes = (  # written AFTER the first full run; explains results, changes no rule or verdict
      "Averaged over training the clip binds on ~4% of the tokens (mostly the lower clip), and the final "
      "entropies differ by less than the noise; clip-higher halved the upper-clip fraction and sped learning "
      "up slightly.")
  c.toy = "bandit"  # T0 (grpo_jax.toys.bandit)
  c.toy_kwargs = mc.ConfigDict(dict(  # Bandit fields
      num_prompts=32, num_actions=16, num_correct=4, p_min=0.05, p_max=0.6, init_noise=0.5))
  c.seeds = 10  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=200, prompts_per_step=16, group_size=8, optimizer="sgd", lr=8.0, estimator="grpo",
      clip_low=0.2, clip_high=0.2))
  c.arms = (  # name + overrides of base
      mc.ConfigDict(dict(name="mu1", num_iterations=1)),  # on-policy: no clipping can happen
      mc.ConfigDict(dict(name="mu4_clip_0.2", num_iterations=4)),  # PPO/GRPO symmetric clip
      mc.ConfigDict(dict(name="mu4_clip_higher", num_iterations=4, clip_high=0.28)),  # DAPO
  )
  c.table = ("entropy:final", "success:mean", "clip_frac_high:mean", "clip_frac_low:mean")  # metric:at
  c.curves = ("entropy", "success", "clip_frac")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="entropy", text="clip-higher keeps the entropy higher", source="DAPO §3.1, Fig. 2b",
          metric="entropy", at="final", a="mu4_clip_higher", b="mu4_clip_0.2", direction=1)),
      mc.ConfigDict(dict(
          id="accuracy", text="clip-higher raises accuracy (mean over training)", source="DAPO §3.1, Fig. 2a",
          metric="success", at="mean", a="mu4_clip_higher", b="mu4_clip_0.2", direction=1)),
  )
  return c
