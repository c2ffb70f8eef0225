"""Zero-variance groups: no filter vs masking them vs DAPO dynamic sampling (oversample and refill), on T0.

  python -m grpo_jax.ablate --suite experiments/ablations/zero_var.py
"""
import ml_collections as mc


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "zero_var"  # results in OUT/zero_var/, plot docs/ablations/zero_var.png
  c.title = "Zero-variance filtering: dead groups and efficiency (T0)"  # plot and section title
  c.published = (  # the effect as the paper states it, with its source
      "DAPO (Yu et al. 2025, §3.2, Fig. 3b and Fig. 6): as training proceeds more prompts are answered "
      "correctly by every sample; their groups have zero advantage and no gradient, so the effective batch "
      "shrinks. Dynamic sampling over-samples and keeps only groups with mixed rewards, and reaches the "
      "same performance in fewer training steps.")
  c.design = (  # what we measure and why it isolates the effect
      "T0 with 64 prompts from very hard to almost solved and the token-mean loss (DAPO's). `mask_zero_std` "
      "is the trainer's `filter_zero_std` (the dead groups leave the loss mask, so the token mean is taken "
      "over the live ones); `dynamic` draws 3 × 16 groups and keeps the first 16 with mixed rewards (a "
      "static-shape version of DAPO's refill loop). `dead_groups` is the fraction of zero-variance groups "
      "among the GENERATED ones; `dynamic` generates 3× the samples per step, so the table also shows "
      "success after one third of the steps (`third`) for an equal-samples comparison. Calibration (baseline "
      "arm `none` only): lr = 2 leaves the success below 0.8 at mid-training while dead groups pass 50%.")
  c.notes = (  # written AFTER the first full run; explains results, changes no rule or verdict
      "Masking the dead groups out of a token-mean loss is as fast per step as dynamic sampling here: both "
      "renormalise the token mean over live samples only, which with SGD is a larger step; dynamic sampling "
      "additionally pays 3× the generated samples.")
  c.toy = "bandit"  # T0 (grpo_jax.toys.bandit)
  c.toy_kwargs = mc.ConfigDict(dict(  # Bandit fields
      num_prompts=64, num_actions=8, num_correct=1, p_min=0.05, p_max=0.95))
  c.seeds = 10  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=300, prompts_per_step=16, group_size=8, optimizer="sgd", lr=2.0, estimator="grpo",
      agg="token-mean"))
  c.arms = (  # name + overrides of base
      mc.ConfigDict(dict(name="none", filter="none")),  # every group stays
      mc.ConfigDict(dict(name="mask_zero_std", filter="mask_zero_std")),  # train.prepare_batch's filter
      mc.ConfigDict(dict(name="dynamic", filter="dynamic", oversample=3)),  # DAPO dynamic sampling
  )
  c.table = ("success:mid", "success:final", "success:third", "dead_groups:late", "informative_kept:late")
  c.curves = ("success", "dead_groups", "informative_kept")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="dead", text="the fraction of dead groups grows during training", source="DAPO §3.2, Fig. 3b",
          metric="dead_groups", at="late", a="none", b="none", at_b="early", direction=1)),
      mc.ConfigDict(dict(
          id="steps", text="dynamic sampling learns faster per step", source="DAPO §3.2, Fig. 6",
          metric="success", at="mid", a="dynamic", b="none", direction=1)),
  )
  return c
