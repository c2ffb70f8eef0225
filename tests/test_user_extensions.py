"""Bring your own: reward functions by `module:function` / file path / `register_reward`, the `local` task
on your own JSONL/Parquet file, and the README's example run end to end through the CLI."""

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

from grpo_jax import config as config_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax.metrics import read_jsonl
from grpo_jax.rewards import get_reward_fn, register_reward
from grpo_jax.tasks import get_task, load_local_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def registry():
  """Restores the reward registry after a test that registers functions."""
  saved = dict(rewards_lib._REWARDS), dict(rewards_lib._FACTORIES)
  yield
  rewards_lib._REWARDS.clear()
  rewards_lib._REWARDS.update(saved[0])
  rewards_lib._FACTORIES.clear()
  rewards_lib._FACTORIES.update(saved[1])


def test_register_reward_spellings_and_conflicts(registry):
  def a(prompts, completions, *, bonus=1.0, **_):
    return [bonus * len(c) for c in completions]

  assert register_reward("length_a", a) is a
  assert get_reward_fn("length_a", bonus=2.0)(None, ["ab", "c"]) == [4.0, 2.0]

  @register_reward("length_b")
  def b(prompts, completions, **_):
    return [0.5] * len(completions)

  @register_reward
  def length_c(prompts, completions, **_):
    return [0.25] * len(completions)

  assert get_reward_fn("length_b")(None, ["x"]) == [0.5] and get_reward_fn("length_c")(None, ["x"]) == [0.25]
  assert get_reward_fn("length_c").__name__ == "length_c"
  assert "length_b" in rewards_lib.reward_names()
  with pytest.raises(ValueError, match="already registered"):
    register_reward("length_a", b)  # another function under a taken name
  register_reward("length_a", b, overwrite=True)
  assert get_reward_fn("length_a")(None, ["x"]) == [0.5]
  register_reward("length_b", b)  # the same function again (a module imported twice) is fine
  with pytest.raises(ValueError, match="without ':' or '.'"):
    register_reward("my.reward", a)
  with pytest.raises(TypeError, match="bonus"):
    get_reward_fn("length_c", bonus=1.0)  # length_c has no option: a typo is never swallowed by **_


def _write(path, text):
  path.write_text(textwrap.dedent(text))
  return str(path)


def test_module_and_file_rewards(tmp_path, monkeypatch, registry):
  body = """
      from grpo_jax.rewards import register_reward

      def shout(prompts, completions, answer, *, weight=1.0, **_):
        return [weight * float(c.upper() == a) for c, a in zip(completions, answer)]

      @register_reward("user_registered")
      def registered(prompts, completions, **_):
        return [7.0] * len(completions)

      NOT_A_FUNCTION = 3
  """
  _write(tmp_path / "user_rewards_mod.py", body)
  monkeypatch.syspath_prepend(str(tmp_path))
  fn = get_reward_fn("user_rewards_mod:shout", weight=0.5)
  assert fn(None, ["hi", "ho"], answer=["HI", "HA"]) == [0.5, 0.0] and fn.__name__ == "shout"
  assert get_reward_fn("user_registered")(None, ["x"]) == [7.0]  # registered on import
  # The same file imported again by its path defines the function anew: not a name conflict.
  assert get_reward_fn(str(tmp_path / "user_rewards_mod.py") + ":shout")(None, ["a"], answer=["A"]) == [1.0]

  file_body = """
      import math

      def shout(prompts, completions, answer, **_):
        return [float(c.upper() == a) for c, a in zip(completions, answer)]

      def _helper():
        return math.pi

      NOT_A_FUNCTION = 3
  """
  file_path = _write(tmp_path / "by_path.py", file_body)
  monkeypatch.chdir(tmp_path)
  for name in (file_path + ":shout", "by_path.py:shout", "./by_path.py:shout"):  # one module, loaded once
    assert get_reward_fn(name)(None, ["ok"], answer=["OK"]) == [1.0]
  assert len([m for m in sys.modules if m.startswith("_grpo_jax_rewards_by_path")]) == 1

  errors = {
      "missing.py:shout": "no file",
      "no_such_module_xyz:shout": "cannot import 'no_such_module_xyz'",
      "by_path.py:nope": r"has no 'nope'; it defines \['shout'\]",  # its own public functions
      "by_path.py:NOT_A_FUNCTION": "not a function",
      "by_path.py:": "expected 'module:function'",
  }
  for name, match in errors.items():
    with pytest.raises((ValueError, TypeError), match=match):
      get_reward_fn(name)
  _write(tmp_path / "broken.py", "import json\nraise RuntimeError('bad user module')\n")
  with pytest.raises(ValueError, match="importing 'broken.py' failed: RuntimeError: bad user module"):
    get_reward_fn("broken.py:f")
  _write(tmp_path / "needs_dep.py", "import no_such_dependency_xyz\n")
  with pytest.raises(ValueError, match="importing 'needs_dep' failed.*no_such_dependency_xyz"):
    get_reward_fn("needs_dep:f")  # the module exists: its own missing import is the message


def test_config_names_user_rewards_and_their_options(tmp_path, monkeypatch):
  _write(tmp_path / "opt_rewards.py", """
      def scaled(prompts, completions, *, scale=1.0, **_):
        return [scale] * len(completions)
  """)
  monkeypatch.chdir(tmp_path)
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  c.rewards.names = ("opt_rewards.py:scaled", "exact_match")
  c.rewards.weights = (1.0, 1.0)
  c.rewards.kwargs = {"scaled": {"scale": 3.0}}  # keyed by the function's name
  config_lib.validate(c, 1)
  assert config_lib.reward_fn(c, "opt_rewards.py:scaled")(None, ["a"]) == [3.0]
  c.rewards.kwargs = {"scaled": {"scael": 3.0}}
  with pytest.raises(config_lib.ConfigError, match=r"config\.rewards\.names: .*scael") as e:
    config_lib.validate(c, 1)
  assert e.value.key == "rewards.names"
  c.rewards.kwargs = {}
  c.rewards.names = ("opt_rewards.py:nope", "exact_match")
  with pytest.raises(config_lib.ConfigError, match=r"config\.rewards\.names: reward function "
                                                   r"'opt_rewards.py:nope': 'opt_rewards.py' has no"):
    config_lib.validate(c, 1)


ROWS = [
    {"q": "what is 1+1?", "a": 2, "tol": 0, "note": "x"},  # line 1: a number answer becomes "2"
    "not an object",  # line 2
    {"q": "what is 2+2?", "tol": 1},  # line 3: no answer field
    {"q": ["a list"], "a": "4", "tol": 0},  # line 4: the prompt is not text
    {"q": "what is 3+3?", "a": "6 ", "tol": 0},  # line 5
    {"q": "   ", "a": "1", "tol": 0},  # line 6: empty prompt
    {"q": "what is 4+4?", "a": "", "tol": 0},  # line 7: empty answer
    {"q": "what is 5+5?", "a": True, "tol": 0},  # line 8: a bool is not an answer
    {"q": "what is 6+6?", "a": 12.5, "tol": 2},  # line 9
]


def _jsonl(path, rows, bad_line_after=None):
  lines = [json.dumps(r) for r in rows]
  if bad_line_after is not None:
    lines.insert(bad_line_after, "{not json")
  path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is not a row
  return str(path)


def test_local_file_fields_columns_and_malformed_rows(tmp_path):
  path = _jsonl(tmp_path / "d.jsonl", ROWS, bad_line_after=9)  # line 10: invalid JSON
  examples, report = load_local_file(path, prompt_field="q", answer_field="a")
  assert examples == [
      {"tol": 0, "note": "x", "prompt": "what is 1+1?", "answer": "2"},
      {"tol": 0, "prompt": "what is 3+3?", "answer": "6"},
      {"tol": 2, "prompt": "what is 6+6?", "answer": "12.5"},
  ]
  assert (report.rows, report.kept) == (10, 3)
  assert report.dropped == {"not_an_object": 1, "missing_field": 1, "non_string_field": 2,
                            "empty_prompt": 1, "no_answer": 1, "invalid_json": 1}
  assert report.first_lines["non_string_field"] == [4, 8] and report.first_lines["invalid_json"] == [10]
  assert "kept 3/10 rows" in report.summary() and "missing_field=1 (lines 3)" in report.summary()

  examples, report = load_local_file(path, prompt_field="q", answer_field="a", columns="tol")
  assert [sorted(e) for e in examples] == [["answer", "prompt", "tol"]] * 3  # only the listed column
  examples, report = load_local_file(path, prompt_field="q", answer_field="a", columns=("tol", "note"))
  assert len(examples) == 1 and report.dropped["missing_field"] == 7  # a listed column is required
  with pytest.raises(ValueError, match="cannot be used"):
    load_local_file(path, columns="answer")
  with pytest.raises(ValueError, match="no usable rows"):
    load_local_file(path)  # no "prompt" field anywhere
  with pytest.raises(FileNotFoundError, match="data file not found"):
    load_local_file(tmp_path / "missing.jsonl")


def test_local_task_parquet_and_held_out_split(tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa
  rows = [{"question": f"what is {i}+1?", "sum": i + 1, "w": i} for i in range(20)]
  path = str(tmp_path / "d.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  train, held = get_task("local", train_path=path, num_eval=5, seed=3, prompt_field="question",
                         answer_field="sum")
  assert len(train) == 15 and len(held) == 5
  assert {e["prompt"] for e in train}.isdisjoint(e["prompt"] for e in held)
  by_prompt = {r["question"]: r for r in rows}
  for e in train + held:
    assert e["answer"] == str(by_prompt[e["prompt"]]["sum"]) and e["w"] == by_prompt[e["prompt"]]["w"]
  _, eval_rows = get_task("local", train_path=path, eval_path=path, prompt_field="question",
                          answer_field="sum")
  assert len(eval_rows) == 20


def _readme_example():
  """(my_rewards.py source, data.jsonl text, command argv) from the README's example section."""
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text[text.index("### Your own data and reward functions"):]
  section = section[:section.index("\n## ")]
  blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
  kinds = [k for k, _ in blocks]
  assert kinds[:3] == ["python", "json", "bash"], kinds
  command = shlex.split(blocks[2][1].replace("\\\n", " "))
  assert command[:3] == ["python", "-m", "grpo_jax.main"]
  return blocks[0][1], blocks[1][1], [sys.executable] + command[1:]


def _tiny_hf_model(path):
  """A random 1-layer Qwen2 checkpoint with the package's small byte-level BPE tokenizer and chat template."""
  import transformers
  from grpo_jax import testing
  from grpo_jax.tokenizer import make_tiny_hf_tokenizer
  tok = make_tiny_hf_tokenizer(path)
  cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
  testing.make_tiny_hf_checkpoint(cfg, path)
  return str(path)


def test_readme_example_runs_end_to_end(tmp_path):
  """The README's reward file, data file and command, as written, plus overrides that make it one short
  step on a tiny Hugging Face checkpoint (exported with its tokenizer at the end); then the run is resumed
  with one more step and a changed config."""
  import transformers
  source, data, command = _readme_example()
  (tmp_path / "my_rewards.py").write_text(source)
  (tmp_path / "data.jsonl").write_text(data)
  (tmp_path / "experiments").symlink_to(os.path.join(ROOT, "experiments"))
  model = _tiny_hf_model(tmp_path / "tiny_qwen2")
  workdir = str(tmp_path / "runs" / "mine")
  fast = ["--config.model.source=hf", f"--config.model.path={model}", "--config.tokenizer=",
          "--config.train.num_steps=1", "--config.train.progress_bar=False", "--config.eval.k=0",
          "--config.train.export_hf=True", f"--workdir={workdir}"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  proc = subprocess.run(command + fast, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [0, 1]
  step = rows[1]
  # The user's reward ran on every completion, with its column: no call failed (a missing `tolerance`
  # column or a TypeError would count 64 failures) and its mean is the total's (it is the only one).
  assert step["reward/close_enough/failures"] == 0
  assert step["reward/close_enough/mean"] == pytest.approx(step["reward/total/mean"])
  assert 0.0 <= rows[0]["eval/accuracy"] <= 1.0 and 0.0 <= rows[1]["eval/accuracy"] <= 1.0
  assert os.path.isfile(os.path.join(workdir, "metrics.png"))

  # The tokenizer was exported beside the weights: it encodes as the source did, with its chat template.
  source_tok = transformers.AutoTokenizer.from_pretrained(model)
  exported = transformers.AutoTokenizer.from_pretrained(os.path.join(workdir, "hf_export"))
  assert len(exported) == len(source_tok) > 1 and exported.eos_token == source_tok.eos_token
  for text in ("what is 12+7? 19", "<|im_start|>user\nUsing the numbers [3, 5]<|im_end|>", ""):
    assert exported(text)["input_ids"] == source_tok(text)["input_ids"], text
  assert exported.chat_template == source_tok.chat_template is not None
  messages = [{"role": "user", "content": "what is 8+8?"}]
  assert (exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
          == source_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
  exported_config = transformers.AutoConfig.from_pretrained(os.path.join(workdir, "hf_export"))
  assert exported_config.vocab_size == len(source_tok)

  # Resumed with a changed config (at its last step, so that it only re-evaluates and exports): a warning
  # names each changed key, config.json keeps the first config and config.1.json gets the new one.
  first = open(os.path.join(workdir, "config.json")).read()
  proc = subprocess.run(command + fast + ["--config.train.sample_every=1", "--config.checkpoint.keep=3"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warning = [line for line in proc.stderr.splitlines() if line.startswith("WARNING: resuming")]
  assert len(warning) == 1, proc.stderr[-3000:]
  assert "at step 1" in warning[0] and "config.json -> config.1.json" in warning[0]
  assert "train.sample_every: 10 -> 1" in warning[0] and "checkpoint.keep: 2 -> 3" in warning[0]
  assert warning[0].count(" -> ") == 3  # the file names and the two changed keys, nothing else
  assert open(os.path.join(workdir, "config.json")).read() == first
  assert json.load(open(os.path.join(workdir, "config.1.json")))["checkpoint"]["keep"] == 3
  assert json.loads(first)["checkpoint"]["keep"] == 2
  assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == [0, 1]
