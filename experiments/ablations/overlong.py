"""Overlong filtering vs soft overlong punishment vs penalising truncation, on T3 (~20% truncated at start).

  python -m grpo_jax.ablate --suite experiments/ablations/overlong.py
"""
import ml_collections as mc

T3 = dict(num_operands=4, tail_len=6, stop_prob=0.235)  # T2 under a limit of 4 + 6 tokens


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "overlong"  # results in OUT/overlong/, plot docs/ablations/overlong.png
  c.title = "Overlong filtering vs soft overlong punishment (T3)"  # plot and section title
  c.published = (  # the effect as the paper states it, with its source
      "DAPO (Yu et al. 2025, §3.4, Fig. 5, Table 1): giving truncated samples the reward of a wrong answer "
      "injects reward noise (a sound but long reasoning is punished for its length only). Masking the loss "
      "of truncated samples (overlong filtering) stabilises training and raises AIME accuracy (30 → 36 in "
      "Table 1); the soft overlong punishment (Eq. 13: a penalty ramping to −1 over the last L_cache "
      "tokens before the limit) adds to it (38 → 41).")
  c.design = (  # what we measure and why it isolates the effect
      "T3 is T2 (4 digit steps, then THINK tokens, then EOS) under a limit of 10 tokens: the initial "
      "policy's THINK habit runs past the limit in 20% of rollouts, independently of whether the digits "
      "are right. `accuracy` is the exact probability of a right answer within the limit; "
      "`answer_accuracy` ignores the limit. Arms: truncated = wrong (reward 0, in the loss); "
      "`filter` = the trainer's `mask_truncated`; `soft` = reward + DAPO Eq. 13 with L_cache = 3; "
      "`filter_soft` = both (DAPO's recipe). Adam. Calibration (baseline arm only): lr = 0.015 and 200 steps "
      "take its accuracy from 0.11 to ~0.67 (a target of 0.6–0.85: not saturated).")
  c.notes = (  # written AFTER the first full run; explains results, changes no rule or verdict
      "In T3 truncation is independent of whether the digits are right, so scoring truncated samples as wrong is "
      "a clean signal to stop thinking (truncation falls to ~0.2%), and filtering removes exactly that signal (a "
      "few % stay truncated) while leaving the digit accuracy (`answer_accuracy`) unchanged; the soft penalty "
      "slows the digits (presumably: it adds length-driven variance to the group-normalised advantages). "
      "DAPO's premise — "
      "that truncation punishes sound but long reasoning — is absent from this toy by construction.")
  c.toy = "scratchpad"  # T3 (grpo_jax.toys.scratchpad with a short tail)
  c.toy_kwargs = mc.ConfigDict(T3)  # Scratchpad fields
  c.seeds = 6  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=200, prompts_per_step=32, group_size=8, optimizer="adam", lr=0.015, estimator="grpo",
      soft_cache=3))
  c.arms = (  # name + overrides of base
      mc.ConfigDict(dict(name="truncated_is_wrong", overlong="none")),  # default reward, in the loss
      mc.ConfigDict(dict(name="filter", overlong="mask")),  # DAPO overlong filtering
      mc.ConfigDict(dict(name="soft", overlong="soft")),  # DAPO Eq. 13 added to the reward
      mc.ConfigDict(dict(name="filter_soft", overlong="mask_soft")),  # DAPO: filtering + soft punishment
  )
  c.table = ("accuracy:final", "answer_accuracy:final", "truncated_exact:final", "length_exact:final")
  c.curves = ("accuracy", "truncated_exact", "answer_accuracy")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="filter", text="overlong filtering beats scoring truncation as wrong", source="DAPO Table 1, Fig. 5",
          metric="accuracy", at="final", a="filter", b="truncated_is_wrong", direction=1)),
      mc.ConfigDict(dict(
          id="soft", text="soft overlong punishment adds to filtering", source="DAPO Table 1, Eq. 13",
          metric="accuracy", at="final", a="filter_soft", b="filter", direction=1)),
  )
  return c
