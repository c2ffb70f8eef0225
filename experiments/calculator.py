"""Tool use: a tiny decoder learns, from the reward alone, to call a calculator for two-digit products.

Episodes are multi-turn (grpo_jax.multiturn): the model may write `<calc>37*48</calc>` (its turn ends
there), the calculator environment (grpo_jax.tasks.calculator) answers `<result>1776</result>`, and the
next turn is the final answer, rewarded 1 when it equals the product. The environment's tokens are
context for the model but masked out of the loss. The warm start imitates a teacher who uses the
calculator in 30% of its demonstrations and otherwise writes a mental estimate (the product to two
significant digits, `1800`): a model this small cannot multiply, so only more calls raise the reward.
Runs in a few minutes on 2 CPU cores:

  python -m grpo_jax.main --config experiments/calculator.py --workdir /tmp/grpo_calculator

One run of this command (2 CPU cores shared with other jobs: 388 s of CPU time, 15.6 min wall, 12.2 of
them the warm start): held-out greedy accuracy 18.8% after the warm start -> 94.5% after 10 GRPO steps ->
93.0% after 30; the training reward rose from 0.20 (step 1) to 0.77-0.98 (steps 7-30) as calculator
calls per episode went from 0.21 to 0.95 (step 10) and 0.97-1.00 from step 11 on.

Every field not set here is documented in `default.py`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402  (every other field is documented there)


def get_config():
  c = default.get_config()
  c.task.name = "calculator"  # grpo_jax.tasks.calculator.make_calculator_split
  c.task.kwargs = dict(  # passed to get_task("calculator", ...)
      num_train=20000,  # training questions
      num_eval=128,  # held-out questions, never in the training set
      num_digits=2,  # digits per factor
      tool_frac=0.3,  # fraction of warm-start demonstrations in which the teacher calls the calculator
      seed=0)  # which questions are drawn
  c.env.name = "calculator"  # grpo_jax.tasks.calculator.CalculatorEnv
  c.env.kwargs = dict(  # CalculatorEnv options
      correct_reward=1.0,  # reward of a correct final answer
      call_cost=0.0)  # reward subtracted per calculator call
  c.env.max_turns = 2  # a call and the answer
  c.env.max_obs_tokens = 24  # "<result>9801</result>" is 21 characters; longer error messages are cut
  c.rewards.names = ("env_reward",)  # the episode reward the environment returns
  c.rewards.weights = (1.0,)  # one weight per reward function
  c.rewards.correctness = "env_reward"  # evaluation: an episode is correct when its reward is >= 0.5
  c.rollout.prompts_per_step = 16  # B prompts per GRPO step
  c.rollout.prompt_len = 8  # "37*48=" is 6 characters
  c.rollout.max_new_tokens = 48  # tokens per model turn (and the warm start's demonstration length)
  c.sft.steps = 300  # supervised warm-start steps on the teacher's demonstrations
  c.sft.target_key = "demo"  # the calculator task's demonstration column
  c.sft.noise_frac = 0.0  # the teacher's mistakes are in the demonstrations already
  c.train.num_steps = 30  # GRPO steps
  c.eval.every = 10  # held-out evaluation every N steps (and at the start and the end)
  c.eval.num_examples = 128  # held-out questions evaluated
  c.eval.batch_size = 64  # questions per sampler call
  c.eval.k = 0  # pass@k / maj@k are single-turn
  c.checkpoint.every = 20  # save every N GRPO steps (and at the end)
  return c
