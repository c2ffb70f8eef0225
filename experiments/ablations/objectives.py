"""GRPO vs CISPO vs GMPO at mu = 1 (identical gradients) and mu = 4 (off-policy passes), on T1.

  python -m grpo_jax.ablate --suite experiments/ablations/objectives.py
"""
import ml_collections as mc

CLIPS = {"grpo": (0.2, 0.2),  # PPO/GRPO ratio clip
         "cispo": (1.0, 0.2),  # IS-weight clip: no lower bound (ε_low = 1), ε_high = 0.2 (as verl's example)
         "gmpo": (0.4, 0.4)}  # log-space token clip, ratios in (e^-0.4, e^0.4) (GMPO §4)


def _arm(loss_type, mu):
  low, high = CLIPS[loss_type]
  return mc.ConfigDict(dict(name=f"{loss_type}_mu{mu}", loss_type=loss_type, num_iterations=mu,
                            clip_low=low, clip_high=high))


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "objectives"  # results in OUT/objectives/, plot docs/ablations/objectives.png
  c.title = "Objectives: GRPO vs CISPO vs GMPO at μ = 1 and μ = 4 (T1)"  # plot and section title
  c.published = (  # the effects as the papers state them, with the sources
      "CISPO (MiniMax 2025, *MiniMax-M1*, arXiv 2506.13585, §3.1): PPO/GRPO's clip drops the gradient of "
      "tokens whose ratio left the trust region — often rare 'fork' tokens — so CISPO clips the detached "
      "importance weight instead, sg(clip(ρ, 1 − ε_low, 1 + ε_high))·Â·∇log π, keeping every token's "
      "gradient; in their controlled Qwen2.5-32B comparison it matches DAPO's AIME score with half the "
      "training steps. GMPO (Zhao et al. 2025, arXiv 2507.20673, Fig. 1, §3–4): GRPO's arithmetic mean of "
      "token ratios is sensitive to outliers and its ratios reach extreme values; the geometric mean "
      "(clipped per token in log space, e^±0.4) keeps the importance ratios in a narrower, more stable "
      "range and the entropy higher, and improves Pass@1 by up to 4.1 points. At ratio 1 both gradients "
      "are GRPO's (CISPO: 1·Â·∇log π; GMPO: Â·mean_t ∇log π_t).")
  c.design = (  # what we measure and why it isolates the effect
      "The objectives only differ where the ratio leaves 1, i.e. in the extra passes over a rollout: μ = 1 "
      "must reproduce GRPO step for step (the exact check is `tests/test_toys.py::"
      "test_objectives_agree_on_policy_and_differ_off_policy`), μ = 4 is where they differ. Each objective "
      "keeps its own clip range (GRPO 0.2; CISPO ε_low = 1 i.e. no lower bound, ε_high = 0.2; GMPO ±0.4 in "
      "log space) and all use the same aggregation, seq-mean-token-mean (GMPO's 1/G Σ_i; CISPO's paper "
      "also switches to a token mean, which the loss_agg axis covers), so the objective is the only "
      "difference. `ratio_max` is the largest token ratio π_θ/π_θold of the batch, averaged over the "
      "passes; `answer_entropy` the exact entropy of the answer token. Calibration: the toy and optimizer "
      "are the gspo axis's (Adam at lr = 0.05 clips 10–25% of GRPO's tokens at μ = 4 in the first half), "
      "with 8 seeds instead of 10; nothing was tuned on the CISPO or GMPO arms.")
  c.notes = (  # written AFTER the first full run; explains results, changes no rule or verdict
      "At μ = 1 the three objectives coincide to float precision (every curve within 1e-6). At μ = 4 CISPO and GMPO "
      "both learn faster than GRPO (+0.020 mean success each) and both stop fewer tokens (`clip_frac` 0.018 "
      "and 0.030 against GRPO's 0.10). GMPO's credited mechanism does not show: the largest token ratio of "
      "a batch is the same (1.24 vs 1.23) and the final answer entropy is lower, not higher. A table has "
      "no shared parameters through which one outlier token's ratio could drag the others, which is the "
      "instability the geometric mean damps; its gain here is plausibly its wider clip range (e^±0.4), "
      "which this axis does not separate from the mean.")
  c.toy = "seqbandit"  # T1 (grpo_jax.toys.seqbandit)
  c.toy_kwargs = mc.ConfigDict(dict(  # SeqBandit fields (as the gspo axis)
      num_prompts=256, num_answers=8, max_len=16, stop_prob=0.2))
  c.seeds = 8  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=200, prompts_per_step=16, group_size=8, optimizer="adam", lr=0.05, estimator="grpo",
      agg="seq-mean-token-mean"))
  c.arms = tuple(_arm(loss, mu) for mu in (1, 4) for loss in ("grpo", "cispo", "gmpo"))  # 3 programs
  c.table = ("success:mean", "ratio_max:mean", "answer_entropy:final", "success:final",
             "clip_frac:mean")  # metric:at
  c.curves = ("success", "ratio_max", "answer_entropy")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="cispo_mu1", text="on-policy (μ = 1) CISPO trains as GRPO", source="MiniMax-M1 Eq. 4 (ρ = 1)",
          metric="success", at="final", a="cispo_mu1", b="grpo_mu1", direction=0)),
      mc.ConfigDict(dict(
          id="gmpo_mu1", text="on-policy (μ = 1) GMPO trains as GRPO", source="GMPO §3 (ρ = 1)",
          metric="success", at="final", a="gmpo_mu1", b="grpo_mu1", direction=0)),
      mc.ConfigDict(dict(
          id="cispo_speed", text="CISPO learns faster than GRPO at μ = 4", source="MiniMax-M1 §3.1 (2× vs DAPO)",
          metric="success", at="mean", a="cispo_mu4", b="grpo_mu4", direction=1)),
      mc.ConfigDict(dict(
          id="gmpo_ratio", text="GMPO keeps the token ratios in a narrower range than GRPO",
          source="GMPO Fig. 1", metric="ratio_max", at="mean", a="gmpo_mu4", b="grpo_mu4", direction=-1)),
      mc.ConfigDict(dict(
          id="gmpo_entropy", text="GMPO keeps the entropy higher than GRPO", source="GMPO §4",
          metric="answer_entropy", at="final", a="gmpo_mu4", b="grpo_mu4", direction=1)),
  )
  return c
