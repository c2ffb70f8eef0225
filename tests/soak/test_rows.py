"""Malformed dataset rows are counted by reason and line, never abort the file (issue 16: one non-UTF-8
byte, a UTF-8 BOM), and a property test over random files of good and bad rows, JSON lines and Parquet."""
import json

import hypothesis
import pytest
from hypothesis import strategies as st

from grpo_jax.tasks import load_math_file

GOOD = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


def _write_lines(path, lines: list[bytes]):
  path.write_bytes(b"\n".join(lines) + b"\n")
  return str(path)


def test_one_non_utf8_byte_drops_only_that_row(tmp_path):
  good = json.dumps(GOOD).encode()
  bad = json.dumps({"question": "caf_", "answer": "#### 1"}).encode().replace(b"caf_", b"caf\xe9")
  path = _write_lines(tmp_path / "train.jsonl", [good, bad, good])
  examples, report = load_math_file(path, "gsm8k")
  assert [e["answer"] for e in examples] == ["5", "5"]
  assert report.rows == 3 and report.kept == 2
  assert report.dropped == {"invalid_utf8": 1} and report.first_lines == {"invalid_utf8": [2]}
  assert path in report.summary() and "invalid_utf8=1 (lines 2)" in report.summary()


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_utf8_bom_keeps_row_one(tmp_path, suffix):
  path = tmp_path / f"train{suffix}"
  path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(json.dumps(dict(GOOD, question=f"q{i}")).encode()
                                                for i in range(3)) + b"\n")
  examples, report = load_math_file(str(path), "gsm8k")
  assert [e["prompt"] for e in examples] == ["q0", "q1", "q2"] and report.dropped == {}


def test_bom_json_array_and_non_utf8_json_array(tmp_path):
  path = tmp_path / "train.json"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD, GOOD]).encode())
  assert load_math_file(str(path), "gsm8k")[1].kept == 2
  path.write_bytes(json.dumps([GOOD, GOOD]).encode()[:-3] + b"\xff\"}]")
  with pytest.raises(ValueError, match=r"train\.json.*UTF-8.*byte \d+"):
    load_math_file(str(path), "gsm8k")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file_is_an_error_naming_the_path(tmp_path, content):
  path = tmp_path / "empty.jsonl"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=r"empty\.jsonl: kept 0/0 rows"):
    load_math_file(str(path), "gsm8k")


# -------------------------------------------------------------------------------------------- property
# A row kind -> (the bytes of one JSON line, the reason it must be dropped for, or None if it is kept).
ROW_KINDS = {
    "good": (json.dumps(GOOD).encode(), None),
    "bom_inside": (b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "invalid_json"),  # a BOM past line 1
    "invalid_json": (b'{"question": "a", "answer": ', "invalid_json"),
    "non_utf8": (json.dumps(GOOD).encode().replace(b"What", b"Wh\xffat"), "invalid_utf8"),
    "truncated_utf8": (json.dumps(GOOD).encode().replace(b"What", b"Wh\xc3"), "invalid_utf8"),
    "array": (b"[1, 2]", "not_an_object"),
    "null": (b"null", "not_an_object"),
    "missing_answer": (json.dumps({"question": "q"}).encode(), "missing_field"),
    "missing_question": (json.dumps({"answer": "#### 3"}).encode(), "missing_field"),
    "int_answer": (json.dumps({"question": "q", "answer": 5}).encode(), "non_string_field"),
    "list_question": (json.dumps({"question": ["q"], "answer": "#### 5"}).encode(), "non_string_field"),
    "no_hashes": (json.dumps({"question": "q", "answer": "five"}).encode(), "no_answer"),
    "empty_question": (json.dumps({"question": "  ", "answer": "#### 5"}).encode(), "empty_question"),
    "unicode_ok": (json.dumps({"question": "Combien font 2 + 3 ? é ü 中", "answer": "#### 5"},
                              ensure_ascii=False).encode(), None),
}


def _expected(kinds, bom):
  kept, dropped = 0, {}
  for line, kind in enumerate(kinds, start=1):
    reason = ROW_KINDS[kind][1]
    if line == 1 and kind == "bom_inside" and not bom:
      reason = None  # then it is the file's own BOM
    if reason is None:
      kept += 1
    else:
      dropped.setdefault(reason, []).append(line)
  return kept, dropped


ROWS_TRIED = []


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(kinds=st.lists(st.sampled_from(sorted(ROW_KINDS)), min_size=1, max_size=12),
                  bom=st.booleans())
def test_jsonl_rows_are_counted_by_reason_and_line(tmp_path, kinds, bom):
  path = tmp_path / "rows.jsonl"
  data = b"\n".join(ROW_KINDS[k][0] for k in kinds) + b"\n"
  path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
  ROWS_TRIED.append(len(kinds))
  kept, dropped = _expected(kinds, bom)
  if not kept:
    with pytest.raises(ValueError, match="no usable rows"):
      load_math_file(str(path), "gsm8k")
    return
  examples, report = load_math_file(str(path), "gsm8k")
  assert report.rows == len(kinds) and report.kept == kept == len(examples)
  assert report.dropped == {r: len(lines) for r, lines in dropped.items()}
  assert report.first_lines == {r: lines[:5] for r, lines in dropped.items()}


PARQUET_ROWS = {
    "good": (GOOD, None), "missing": ({"question": "q", "answer": None}, "non_string_field"),
    "no_hashes": ({"question": "q", "answer": "five"}, "no_answer"),
    "empty_question": ({"question": "", "answer": "#### 1"}, "empty_question"),
}


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(kinds=st.lists(st.sampled_from(sorted(PARQUET_ROWS)), min_size=1, max_size=8))
def test_parquet_rows_are_counted_by_reason_and_row(tmp_path, kinds):
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa
  path = tmp_path / "rows.parquet"
  pq.write_table(pa.Table.from_pylist([PARQUET_ROWS[k][0] for k in kinds]), str(path))
  ROWS_TRIED.append(len(kinds))
  expected = {}
  for row, kind in enumerate(kinds, start=1):
    if PARQUET_ROWS[kind][1]:
      expected.setdefault(PARQUET_ROWS[kind][1], []).append(row)
  kept = kinds.count("good")
  if not kept:
    with pytest.raises(ValueError, match="no usable rows"):
      load_math_file(str(path), "gsm8k")
    return
  _, report = load_math_file(str(path), "gsm8k")
  assert report.kept == kept and report.first_lines == {r: v[:5] for r, v in expected.items()}


def test_truncated_parquet_file_is_an_error_naming_the_path(tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa
  path = tmp_path / "rows.parquet"
  pq.write_table(pa.Table.from_pylist([GOOD] * 4), str(path))
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(ValueError, match=r"rows\.parquet"):
    load_math_file(str(path), "gsm8k")


def test_rows_count(soak_record):
  """Runs last in this file: the number of rows the property tests wrote (for docs/reliability.md)."""
  assert sum(ROWS_TRIED) > 500
  soak_record("rows", tried=sum(ROWS_TRIED), files=len(ROWS_TRIED), uncontrolled=0)
