"""Loss aggregation and the length of wrong answers: GRPO's 1/|o_i| vs DAPO's token mean vs Dr. GRPO, on T1.

  python -m grpo_jax.ablate --suite experiments/ablations/loss_agg.py
"""
import ml_collections as mc


def get_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.name = "loss_agg"  # results in OUT/loss_agg/, plot docs/ablations/loss_agg.png
  c.title = "Loss aggregation: length drift of wrong answers (T1)"  # plot and section title
  c.published = (  # the effect as the papers state it, with the sources
      "Dr. GRPO (Liu et al. 2025, §3.1 and Fig. 1 right): GRPO's per-response 1/|o_i| penalises a long "
      "wrong answer less per token than a short one, so the length of incorrect responses keeps growing; "
      "summing tokens over a constant (Dr. GRPO) removes the bias. DAPO (Yu et al. 2025, §3.3, Fig. 4): "
      "the token-level mean lets long samples weigh in proportion to their tokens and curbs the unhealthy "
      "growth of length (and entropy) seen with the sample-level loss.")
  c.design = (  # what we measure and why it isolates the effect
      "T1's reward looks only at the first token, and the stop probabilities after a right and after a wrong "
      "answer are separate table entries, so any drift of the expected length after a wrong answer "
      "(`len_wrong`, exact) comes from how the loss weighs tokens. All arms use the same \"grpo\" advantage "
      "and SGD at one learning rate; only `agg` changes (Dr. GRPO's `seq-mean-token-sum-norm` divides by "
      "the limit T = 16, so its steps are smaller). Calibration (baseline arm only): lr = 2 and 400 steps take "
      "the success from 0.25 to ~0.65, so wrong answers stay frequent throughout.")
  c.toy = "seqbandit"  # T1 (grpo_jax.toys.seqbandit)
  c.toy_kwargs = mc.ConfigDict(dict(  # SeqBandit fields
      num_prompts=64, num_answers=4, max_len=16, stop_prob=0.2))
  c.seeds = 10  # independent training runs per arm, vmapped
  c.base = mc.ConfigDict(dict(  # Spec fields and traced hyper-parameters shared by every arm
      steps=400, prompts_per_step=16, group_size=8, optimizer="sgd", lr=2.0, estimator="grpo"))
  c.arms = (  # name + overrides of base
      mc.ConfigDict(dict(name="seq_mean_token_mean", agg="seq-mean-token-mean")),  # GRPO (DeepSeekMath)
      mc.ConfigDict(dict(name="token_mean", agg="token-mean")),  # DAPO
      mc.ConfigDict(dict(name="seq_mean_token_sum_norm", agg="seq-mean-token-sum-norm")),  # Dr. GRPO
  )
  c.table = ("len_wrong:change", "len_correct:change", "success:final", "length:late")  # metric:at
  c.curves = ("len_wrong", "len_correct", "success")  # plotted per step
  c.claims = (  # fixed before any result existed; see grpo_jax.ablate_report for the verdict rule
      mc.ConfigDict(dict(
          id="dr_grpo", text="1/|o_i| lengthens wrong answers vs a constant normaliser",
          source="Dr. GRPO §3.1, Fig. 1", metric="len_wrong", at="change", a="seq_mean_token_mean",
          b="seq_mean_token_sum_norm", direction=1)),
      mc.ConfigDict(dict(
          id="dapo", text="1/|o_i| lengthens wrong answers vs the token mean", source="DAPO §3.3, Fig. 4",
          metric="len_wrong", at="change", a="seq_mean_token_mean", b="token_mean", direction=1)),
  )
  return c
