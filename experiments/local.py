"""GRPO on your own data and reward functions: a local JSON-lines / JSON / Parquet file, no package edits.

  python -m grpo_jax.main --config experiments/local.py \
      --config.task.kwargs.train_path=data.jsonl \
      --config.rewards.names='("my_rewards.py:close_enough",)' --workdir runs/mine

The README's "Your own data and rewards" section has a complete example (data file, reward file,
command). Out of the box this trains the default experiment's tiny character-level decoder from scratch;
point `model.source="hf"`, `model.path` and `tokenizer` (or "" for the model's own) at a local Hugging
Face model for real work. Every field not set here is documented in `default.py`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402  (every other field is documented there)


def get_config():
  c = default.get_config()
  c.task.name = "local"  # grpo_jax.tasks.load_local_file
  c.task.kwargs = dict(  # passed to get_task("local", ...)
      train_path="",  # required: a local .jsonl, .json (array) or .parquet file
      eval_path="",  # held-out file; "": hold out num_eval rows of the train file
      num_eval=0,  # rows held out of the train file when eval_path is ""
      seed=0,  # which rows are held out
      prompt_field="prompt",  # the field holding the question text
      answer_field="answer",  # the field holding the reference answer (text or a number)
      columns="")  # comma-separated fields passed to the reward functions; "": every other field
  c.prompt.template = ""  # e.g. "question: {question}\nanswer: "; "" uses the prompt text as is
  c.rewards.names = ("exact_match",)  # registered names or "module:function" / "path/file.py:function"
  c.rewards.weights = (1.0,)  # one weight per reward function
  c.rewards.correctness = "exact_match"  # the reward that defines "correct" in evaluation
  c.rollout.prompts_per_step = 8  # B prompts per GRPO step (at most the number of training rows)
  c.rollout.prompt_len = 64  # prompt bucket in tokens (characters for the char tokenizer)
  c.rollout.max_new_tokens = 8  # T: completion length in tokens
  c.sft.steps = 0  # no warm start: the default's is specific to its arithmetic task
  c.train.num_steps = 20  # GRPO steps
  c.eval.every = 10  # held-out evaluation every N steps (and at the start and the end)
  c.eval.num_examples = 64  # at most this many eval rows
  c.eval.batch_size = 64  # eval prompts per sampler call
  c.checkpoint.every = 10  # save every N GRPO steps (and at the end)
  return c
