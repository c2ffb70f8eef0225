"""Tasks: arithmetic and Countdown generators, GSM8K/MATH file loading, prompt formatting, the iterator."""
import json
import logging
import re
import sys

import pytest

from grpo_jax.rewards import countdown_reward
from grpo_jax.tasks import (PromptIterator, format_prompt, get_task, load_gsm8k, load_math, make_arithmetic,
              make_arithmetic_split, make_countdown, make_countdown_split)
from grpo_jax.tasks.arithmetic import evaluate_integer_expression
from grpo_jax.tasks.countdown import TINYZERO_BASE_TEMPLATE
from grpo_jax.tokenizer import CharTokenizer, load_tokenizer, make_tiny_hf_tokenizer


# ----------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("num_digits, num_operands, ops", [(1, 2, "+"), (2, 3, "+-"), (3, 4, "+-*"), (4, 2, "*")])
def test_arithmetic_answers_are_python_int_arithmetic(num_digits, num_operands, ops):
  examples = make_arithmetic(200, seed=3, num_digits=num_digits, num_operands=num_operands, ops=ops)
  for ex in examples:
    q = ex["question"]
    assert re.fullmatch(r"\d+([+\-*]\d+)*", q) and ex["prompt"] == q + "="
    assert int(ex["answer"]) == eval(q)  # the test's independent reference; q is digits and + - * only
    operands = re.split(r"[+\-*]", q)
    assert len(operands) == num_operands and set(re.findall(r"[+\-*]", q)) <= set(ops)
    assert all(len(x) == num_digits for x in operands) or num_digits == 1
  assert make_arithmetic(50, seed=3, num_digits=num_digits, num_operands=num_operands, ops=ops) == examples[:50]


def test_arithmetic_precedence_template_and_seeds():
  assert evaluate_integer_expression([2, 3, 4, 5], "+*-") == 2 + 3 * 4 - 5
  assert evaluate_integer_expression([7, 3, 2], "-*") == 1
  ex = make_arithmetic(1, seed=0, template="Q: {question}? A:")[0]
  assert ex["prompt"] == f"Q: {ex['question']}? A:"
  assert make_arithmetic(20, seed=0) != make_arithmetic(20, seed=1)
  with pytest.raises(ValueError, match="ops"):
    make_arithmetic(1, seed=0, ops="+/")


def test_arithmetic_split_is_disjoint():
  train, held = make_arithmetic_split(3000, 300, seed=0, num_digits=2, ops="+-")
  eval_questions = [e["question"] for e in held]
  assert len(train) == 3000 and len(set(eval_questions)) == 300
  assert not set(eval_questions) & {e["question"] for e in train}
  assert make_arithmetic_split(3000, 300, seed=0, num_digits=2, ops="+-") == (train, held)
  # 1-digit + 1-digit has exactly 100 distinct questions: 100 for eval leaves nothing for train.
  with pytest.raises(ValueError):
    make_arithmetic_split(10, 100, seed=0, num_digits=1)
  with pytest.raises(ValueError, match="too small"):
    make_arithmetic_split(10, 101, seed=0, num_digits=1)


# ------------------------------------------------------------------------------------------ countdown
def test_countdown_targets_are_reachable_by_the_stored_solution():
  examples = make_countdown(400, seed=0)
  scores = countdown_reward(None, [f"<answer>{e['solution']}</answer>" for e in examples],
               [e["nums"] for e in examples], [e["target"] for e in examples])
  assert scores == [1.0] * 400
  for ex in examples:
    assert 3 <= len(ex["nums"]) <= 4 and all(1 <= x <= 99 for x in ex["nums"]) and 1 <= ex["target"] <= 100
    assert f"Using the numbers {ex['nums']}, create an equation that equals {ex['target']}." in ex["prompt"]
    assert ex["answer"] == ex["solution"]
  assert {len(e["nums"]) for e in examples} == {3, 4}
  assert make_countdown(50, seed=0) == examples[:50]


def test_countdown_knobs_and_split():
  examples = make_countdown(100, seed=1, min_numbers=4, max_numbers=4, max_value=20, max_target=50)
  assert all(len(e["nums"]) == 4 and max(e["nums"]) <= 20 and e["target"] <= 50 for e in examples)
  train, held = make_countdown_split(500, 50, seed=0)
  key = lambda e: (tuple(sorted(e["nums"])), e["target"])  # noqa: E731
  assert len(held) == 50 and len({key(e) for e in held}) == 50
  assert not {key(e) for e in held} & {key(e) for e in train}


# ---------------------------------------------------------------------------------------------- files
def _write_lines(path, rows):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
  return path


def test_gsm8k_jsonl_with_malformed_rows(tmp_path, caplog):
  path = _write_lines(tmp_path / "gsm8k.jsonl", [
    {"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = 24.\n#### 72"},  # line 1: ok
    '{"question": "broken',  # 2: invalid json
    {"question": "How much?", "answer": "lots\n#### 1,234"},  # 3: ok, commas removed
    {"question": "No marker", "answer": "72"},  # 4: no answer
    {"answer": "#### 5"},  # 5: missing field
    {"question": 7, "answer": "#### 5"},  # 6: non-string
    "",  # 7: blank, not a row
    "[1, 2]",  # 8: not an object
    {"question": "Also missing", "solution": "#### 5"},  # 9: missing field
  ])
  with caplog.at_level(logging.WARNING):
    examples, report = load_gsm8k(path)
  assert [(e["prompt"], e["answer"]) for e in examples] == [("Natalia sold 48 clips...", "72"),
                                ("How much?", "1234")]
  assert examples[0]["solution"].endswith("#### 72")
  assert (report.rows, report.kept) == (8, 2)
  assert report.dropped == {"invalid_json": 1, "no_answer": 1, "missing_field": 2, "non_string_field": 1,
               "not_an_object": 1}
  assert report.first_lines["missing_field"] == [5, 9] and report.first_lines["invalid_json"] == [2]
  assert any("kept 2/8" in r.getMessage() and "missing_field=2 (lines 5, 9)" in r.getMessage()
        for r in caplog.records)


def test_math_jsonl_boxed_and_answer_field(tmp_path):
  path = _write_lines(tmp_path / "math.jsonl", [
    {"problem": "Half?", "solution": r"It is $\boxed{\frac{1}{2}}$.", "level": "Level 1"},
    {"problem": "Set?", "solution": r"so \boxed{\{1, 2\}} \text{and} \boxed{3}", "type": "Algebra"},
    {"problem": "500?", "solution": r"... \boxed{wrong}", "answer": "7"},
    {"problem": "None?", "solution": "no box here"},
  ])
  examples, report = load_math(path)
  assert [e["answer"] for e in examples] == [r"\frac{1}{2}", "3", "7"]
  assert examples[0]["level"] == "Level 1" and examples[0]["prompt"] == "Half?"
  assert report.dropped == {"no_answer": 1} and report.first_lines == {"no_answer": [4]}


def test_file_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nothing is fetched"):
    load_gsm8k(tmp_path / "missing.jsonl")
  bad = _write_lines(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker"}])
  with pytest.raises(ValueError, match="no usable rows.*no_answer=1"):
    load_gsm8k(bad)
  (tmp_path / "x.parquet").write_bytes(b"PAR1")
  for module in ("pyarrow", "pyarrow.parquet", "pandas"):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
  with pytest.raises(ImportError, match="pip install pyarrow"):
    load_gsm8k(tmp_path / "x.parquet")


def test_json_array_and_get_task_holdout(tmp_path):
  rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
  (tmp_path / "g.json").write_text(json.dumps(rows))
  train, held = get_task("gsm8k", train_path=str(tmp_path / "g.json"), num_eval=5, seed=1)
  assert len(train) == 15 and len(held) == 5
  assert {e["prompt"] for e in train} | {e["prompt"] for e in held} == {f"q{i}" for i in range(20)}
  assert all(e["answer"] == e["prompt"][1:] for e in train + held)
  train2, held2 = get_task("gsm8k", train_path=str(tmp_path / "g.json"), eval_path=str(tmp_path / "g.json"))
  assert len(train2) == len(held2) == 20
  with pytest.raises(ValueError, match="train_path"):
    get_task("math")
  with pytest.raises(KeyError, match="countdown"):
    get_task("sudoku")


def test_get_task_synthetic():
  train, held = get_task("arithmetic", num_train=100, num_eval=10, seed=0, num_digits=3, ops="+-*")
  assert len(train) == 100 and len(held) == 10 and all(int(e["answer"]) == eval(e["question"]) for e in train)
  train, held = get_task("countdown", num_train=20, num_eval=5, seed=0)
  assert len(train) == 20 and len(held) == 5 and "nums" in train[0]


# -------------------------------------------------------------------------------------------- prompts
def test_format_prompt_char_plain_and_hf_chat(tmp_path):
  char = CharTokenizer()
  assert format_prompt("12+34=", char) == "12+34="
  assert format_prompt("12+34", char, template="{question}=", system_prompt="add. ") == "add. 12+34="
  assert format_prompt("12+34=", char, system_prompt="add", use_chat_template=False) == "add\n12+34="
  make_tiny_hf_tokenizer(tmp_path)
  hf = load_tokenizer(str(tmp_path))
  assert format_prompt("1+1=", hf, system_prompt="sys") == (
    "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n")
  base = format_prompt("Using ...", hf, template=TINYZERO_BASE_TEMPLATE, use_chat_template=False)
  assert base.startswith("A conversation between User and Assistant.") and base.endswith("\n<think>")
  assert "User: Using ...\n" in base


# ------------------------------------------------------------------------------------------- iterator
def test_iterator_epochs_cover_examples_and_drop_only_the_remainder():
  it = PromptIterator(list(range(10)), 3, seed=0)
  assert it.batches_per_epoch == 3
  epochs = [[x for _ in range(3) for x in next(it)] for _ in range(4)]
  for epoch in epochs:
    assert len(set(epoch)) == 9  # 9 distinct examples, 1 remainder dropped
  assert len({tuple(e) for e in epochs}) == 4  # reshuffled every epoch
  assert [next(PromptIterator("abcdefg", 2, seed=0, shuffle=False)) for _ in range(1)] == [["a", "b"]]
  flat = PromptIterator("abcdefg", 2, seed=0, shuffle=False)
  assert [next(flat) for _ in range(4)] == [["a", "b"], ["c", "d"], ["e", "f"], ["a", "b"]]
  with pytest.raises(ValueError, match="batch_size"):
    PromptIterator([1, 2], 3, seed=0)


@pytest.mark.parametrize("k", [1, 3, 4, 7])  # before, at and after the epoch boundaries (3 batches/epoch)
def test_iterator_resume_is_exact(k):
  examples = [{"prompt": str(i)} for i in range(10)]
  reference = PromptIterator(examples, 3, seed=42)
  expected = [next(reference) for _ in range(12)]
  it = PromptIterator(examples, 3, seed=42)
  for _ in range(k):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  fresh = PromptIterator(examples, 3, seed=0)  # the seed comes from the state
  fresh.set_state(state)
  assert [next(fresh) for _ in range(12 - k)] == expected[k:]
  with pytest.raises(ValueError, match="saved for 10 examples"):
    PromptIterator(examples[:9], 3, seed=42).set_state(state)
