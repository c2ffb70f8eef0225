"""Token vs sequence importance ratios (GRPO vs GSPO) at mu = 1 (identical) and mu = 4, on T1.

  python -m grpo_jax.ablate --suite experiments/ablations/gspo.py
"""
import ml_collections as mc


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "gspo"  # results in OUT/gspo/, plot docs/ablations/gspo.png
  c.title = "Token vs sequence ratios: GRPO vs GSPO (T1)"  # plot and section title
  c.published = (  # the effect as the paper states it, with its source
      "GSPO (Zheng et al. 2025, *Group Sequence Policy Optimization*, Eq. 7/13, Fig. 1): clipping the "
      "length-normalised sequence ratio s_i = (π_θ(y_i)/π_old(y_i))^{1/|y_i|} with tiny ranges "
      "(3e-4, 4e-4) instead of every token's ratio trains more stably and more efficiently than GRPO "
      "(higher training reward at equal compute). On-policy (one gradient step per rollout) the two "
      "objectives have the same value and gradient.")
  c.design = (  # what we measure and why it isolates the effect
      "T1 sequences have 2–16 tokens. At μ = 1 the runs must coincide step for step (the exact check is "
      "`tests/test_toys.py::test_token_and_sequence_ratios_agree_on_policy`); at μ = 4 the token-level "
      "arm uses the PPO clip (0.2, 0.2) and the sequence-level arm GSPO's (3e-4, 4e-4). Calibration (baseline "
      "arm `token_mu4` only): with SGD the token clip never bound (lr 2–20); Adam at lr = 0.05 clips 10–25% of "
      "the tokens in the first half, and 256 prompts x 8 answers keep the success below 0.9 until mid-training.")
  c.notes = (  # written AFTER the first full run; explains results, changes no rule or verdict
      "GSPO's clip range (3e-4, 4e-4) clips most sequences after the first of the four passes (see `clip_frac`), "
      "so most of its extra gradient steps are masked, while the token-level clip (0.2) lets them through — and "
      "on this toy the extra passes are what speeds learning (compare `token_mu4` with `token_mu1`). GSPO's "
      "reported gain is stability at scale (long sequences, MoE routing), which a table cannot exhibit.")
  c.toy = "seqbandit"  # T1 (grpo_jax.toys.seqbandit)
  c.toy_kwargs = mc.ConfigDict(dict(  # SeqBandit fields
      num_prompts=256, num_answers=8, max_len=16, stop_prob=0.2))
  c.seeds = 10  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=200, prompts_per_step=16, group_size=8, optimizer="adam", lr=0.05, estimator="grpo",
      agg="seq-mean-token-mean"))
  c.arms = (  # name + overrides of base
      mc.ConfigDict(dict(name="token_mu1", ratio_level="token", num_iterations=1)),  # GRPO on-policy
      mc.ConfigDict(dict(name="sequence_mu1", ratio_level="sequence", num_iterations=1,
                         clip_low=3e-4, clip_high=4e-4)),  # GSPO on-policy
      mc.ConfigDict(dict(name="token_mu4", ratio_level="token", num_iterations=4)),  # GRPO, 4 passes
      mc.ConfigDict(dict(name="sequence_mu4", ratio_level="sequence", num_iterations=4,
                         clip_low=3e-4, clip_high=4e-4)),  # GSPO, 4 passes
  )
  c.table = ("success:final", "success:mean", "clip_frac:mean", "len_wrong:change")  # metric:at
  c.curves = ("success", "clip_frac", "answer_entropy")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="mu1", text="on-policy (μ = 1) the two ratios train identically", source="GSPO Eq. 13 (μ = 1)",
          metric="success", at="final", a="sequence_mu1", b="token_mu1", direction=0)),
      mc.ConfigDict(dict(
          id="mu4", text="GSPO trains faster than GRPO at μ = 4", source="GSPO Fig. 1",
          metric="success", at="mean", a="sequence_mu4", b="token_mu4", direction=1)),
  )
  return c
