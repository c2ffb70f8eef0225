"""Each real experiment config runs one GRPO step on a tiny random checkpoint and tiny local data."""

import json
import os

import pytest

from grpo_jax import config as config_lib
from grpo_jax import loop, testing
from grpo_jax.tokenizer import make_tiny_hf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
  """A random Qwen2 checkpoint with a small local byte-level tokenizer and chat template."""
  import transformers
  path = str(tmp_path_factory.mktemp("tiny_qwen2"))
  make_tiny_hf_tokenizer(path)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
  testing.make_tiny_hf_checkpoint(cfg, path)
  return path


def _gsm8k_file(path):
  rows = [{"question": f"Tom has {a} apples and buys {b} more. How many now?",
           "answer": f"He has {a}+{b}={a + b}.\n#### {a + b}"} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8),
                                                                          (2, 9), (4, 4), (6, 1), (3, 3)]]
  rows.append({"question": "a malformed row without an answer"})
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


def _shrink(c, model_path, workdir):
  c.model.path = model_path
  c.model.dtype = "float32"
  c.rollout.prompts_per_step = 4
  c.rollout.prompt_len = 320
  c.rollout.max_new_tokens = 8
  c.grpo.group_size = 2
  c.grpo.num_minibatches = 1
  c.grpo.grad_accum = 1
  c.train.num_steps = 1
  c.train.progress_bar = False
  c.train.export_hf = True
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.eval.k = 2
  c.checkpoint.every = 1
  return loop.train(c, str(workdir))


def _check_run(workdir, summary):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [0, 1]
  assert "reward/total/mean" in rows[1] and "kl" in rows[1]
  assert 0.0 <= summary["eval_after"]["eval/accuracy"] <= 1.0
  assert os.path.isfile(os.path.join(workdir, "hf_export", "config.json"))


def test_qwen2_5_gsm8k_config_runs_one_step(tiny_qwen2, tmp_path):
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "qwen2_5_0_5b_gsm8k.py"))
  c.task.kwargs.train_path = _gsm8k_file(tmp_path / "gsm8k.jsonl")
  c.task.kwargs.num_eval = 0
  c.task.kwargs.eval_path = c.task.kwargs.train_path
  summary = _shrink(c, tiny_qwen2, tmp_path / "run")
  _check_run(str(tmp_path / "run"), summary)


def test_countdown_config_runs_one_step(tiny_qwen2, tmp_path):
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "countdown.py"))
  c.task.kwargs.num_train = 64
  c.task.kwargs.num_eval = 8
  summary = _shrink(c, tiny_qwen2, tmp_path / "run")
  _check_run(str(tmp_path / "run"), summary)


def test_real_configs_require_their_paths():
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "qwen2_5_0_5b_gsm8k.py"))
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.path"):
    config_lib.validate(c, 8)
  c.model.path = ROOT  # a directory, so validation moves on to the data file
  with pytest.raises(config_lib.ConfigError, match=r"config\.task\.kwargs\.train_path"):
    config_lib.validate(c, 8)
