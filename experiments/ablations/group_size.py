"""Group size G at a fixed number of prompts per step, on T2.

  python -m grpo_jax.ablate --suite experiments/ablations/group_size.py
"""
import ml_collections as mc

T2 = dict(num_operands=4, tail_len=16, stop_prob=0.235)  # as experiments/ablations/rft.py


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "group_size"  # results in OUT/group_size/, plot docs/ablations/group_size.png
  c.title = "Group size G (T2, 32 prompts per step)"  # plot and section title
  c.published = (  # the effect as the papers state it, with the sources
      "RLOO (Ahmadian et al. 2024, *Back to Basics*, §5): more samples per prompt give a better "
      "leave-one-out baseline and a better policy (k = 4 above k = 2 at the same number of prompts); "
      "DeepSeekMath samples G = 64. DAPO (§3.2): a group whose samples all agree carries no gradient — "
      "with success probability p that happens with probability p^G + (1 − p)^G, which falls with G.")
  c.design = (  # what we measure and why it isolates the effect
      "Same prompts per step, so a larger G means more samples per step (the per-sample view is the "
      "`third` column read against the G = 2/4 arms). `accuracy` is exact; `dead_groups` is the fraction "
      "of zero-variance groups among the sampled ones. Settings as `rft`, not re-calibrated.")
  c.toy = "scratchpad"  # T2 (grpo_jax.toys.scratchpad)
  c.toy_kwargs = mc.ConfigDict(T2)  # Scratchpad fields
  c.seeds = 6  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=200, prompts_per_step=32, optimizer="adam", lr=0.015, estimator="grpo"))
  c.arms = tuple(mc.ConfigDict(dict(name=f"G{g}", group_size=g)) for g in (2, 4, 8, 16))  # name + G
  c.table = ("accuracy:mean", "accuracy:final", "accuracy:third", "dead_groups:mean")  # metric:at
  c.curves = ("accuracy", "dead_groups", "digit_entropy")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="rloo", text="G = 4 beats G = 2", source="RLOO §5", metric="accuracy", at="mean", a="G4",
          b="G2", direction=1)),
      mc.ConfigDict(dict(
          id="large", text="G = 16 beats G = 4", source="RLOO §5; DeepSeekMath G = 64", metric="accuracy",
          at="mean", a="G16", b="G4", direction=1)),
      mc.ConfigDict(dict(
          id="dead", text="fewer dead groups with larger G", source="DAPO §3.2", metric="dead_groups",
          at="mean", a="G2", b="G16", direction=1)),
  )
  return c
