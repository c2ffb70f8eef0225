"""maj@k vs pass@k before and after GRPO on T2 (DeepSeekMath Fig. 7: RL raises maj@k, not pass@k).

  python -m grpo_jax.ablate --suite experiments/ablations/majk.py
"""
import ml_collections as mc

T2 = dict(num_operands=4, tail_len=16, stop_prob=0.235)  # as experiments/ablations/rft.py


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "majk"  # results in OUT/majk/, plot docs/ablations/majk.png
  c.title = "maj@k and pass@k before and after GRPO (T2)"  # plot and section title
  c.published = (  # the effect as the paper states it, with its source
      "DeepSeekMath (Shao et al. 2024, §5.2.2, Fig. 7): after RL, Maj@K improves but Pass@K does not — "
      "RL makes the output distribution more robust (boosts the correct answer among the top-K) rather "
      "than adding fundamental capability.")
  c.design = (  # what we measure and why it isolates the effect
      "The GRPO outcome arm of `rft` (same settings, its own runs). pass@k = 1 − (1 − p)^k is exact per "
      "prompt; maj@k is a majority vote over k draws from the exact answer distribution (25 votes per "
      "prompt and k, ties split uniformly, 'no answer' never wins), on 200 fixed prompts, before and after "
      "training with the same random draws (paired). The claim compares the gains at k = 64.")
  c.notes = (  # written AFTER the first full run; explains results, changes no rule or verdict
      "pass@64 starts at 0.996 (a ceiling): its 'contradicting' gain is +0.4 points, against +73 points for "
      "maj@64 — the contrast claim, which is DeepSeekMath's point, is reproduced.")
  c.toy = "scratchpad"  # T2 (grpo_jax.toys.scratchpad)
  c.toy_kwargs = mc.ConfigDict(T2)  # Scratchpad fields
  c.seeds = 6  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=200, prompts_per_step=32, group_size=8, optimizer="adam", lr=0.015, estimator="grpo"))
  c.arms = (  # name + overrides of base
      mc.ConfigDict(dict(name="grpo_outcome", supervision="outcome")),  # GRPO + OS
  )
  c.table = ("pass@1:gain", "pass@4:gain", "pass@16:gain", "pass@64:gain", "maj@4:gain", "maj@16:gain",
             "maj@64:gain", "pass@64:initial", "maj@64:initial")  # metric:at
  c.curves = ("accuracy",)  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="contrast", text="RL raises maj@64 more than pass@64", source="DeepSeekMath §5.2.2, Fig. 7",
          metric="maj@64", at="gain", a="grpo_outcome", b="grpo_outcome", metric_b="pass@64", direction=1)),
      mc.ConfigDict(dict(
          id="maj", text="RL raises maj@64", source="DeepSeekMath Fig. 7",
          metric="maj@64", at="gain", a="grpo_outcome", direction=1)),
      mc.ConfigDict(dict(
          id="pass", text="RL leaves pass@64 unchanged", source="DeepSeekMath Fig. 7",
          metric="pass@64", at="gain", a="grpo_outcome", direction=0)),
  )
  return c
