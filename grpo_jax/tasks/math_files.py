"""GSM8K and MATH from files the user downloaded (JSON lines, a JSON array, or Parquet); nothing is fetched.

GSM8K rows ``{"question", "answer": "... #### 72"}`` become ``{"prompt": question, "answer": "72",
"solution": <the original answer text>}``. MATH rows ``{"problem", "solution": "... \\boxed{...}"}`` become
``{"prompt": problem, "answer": <boxed content>, ...}``, preferring a non-empty ``answer`` field when the file
has one (as MATH-500 does). Other fields (``level``, ``type``, ...) are kept as extra columns.

Rows that cannot be used are never dropped silently: `LoadReport` counts them per reason with the first few
line numbers, and a warning is logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from grpo_jax.math_grading import extract_boxed

logger = logging.getLogger(__name__)

_FIELDS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}
_MAX_EXAMPLE_LINES = 5


@dataclasses.dataclass
class LoadReport:
  """What happened to each row of one file. Line numbers are 1-based (Parquet/JSON array: row number)."""

  path: str
  kind: str
  rows: int = 0
  kept: int = 0
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  first_lines: dict[str, list[int]] = dataclasses.field(default_factory=dict)

  def drop(self, reason: str, line: int) -> None:
    self.dropped[reason] = self.dropped.get(reason, 0) + 1
    lines = self.first_lines.setdefault(reason, [])
    if len(lines) < _MAX_EXAMPLE_LINES:
      lines.append(line)

  def summary(self) -> str:
    """One line: kept/rows, then each drop reason with its count and first line numbers."""
    parts = []
    for reason, count in self.dropped.items():
      lines = ", ".join(map(str, self.first_lines[reason])) + (", ..." if count > _MAX_EXAMPLE_LINES else "")
      parts.append(f"{reason}={count} (lines {lines})")
    dropped = f"; dropped {'; '.join(parts)}" if parts else ""
    return f"{self.kind} {self.path}: kept {self.kept}/{self.rows} rows{dropped}"


def _read_parquet(path: str) -> list:
  try:
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()
  except ImportError:
    pass
  try:
    import pandas as pd
    return pd.read_parquet(path).to_dict("records")
  except ImportError:
    raise ImportError(f"reading the Parquet file {path} needs pyarrow (pip install pyarrow) or pandas "
             "with a Parquet engine; or convert it to JSON lines") from None


def _read_rows(path: str, report: LoadReport):
  """Yield (line number, row) for every non-blank record; unparseable lines go to the report.

  JSON lines are split on b"\n" and decoded one by one, so a bad byte costs its own row only
  ("invalid_utf8"); a UTF-8 byte-order mark at the start of the file is not part of row 1."""
  if path.endswith(".parquet"):
    try:
      rows = _read_parquet(path)
    except ImportError:
      raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own types for a damaged file
      raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    yield from enumerate(rows, start=1)
    return
  with open(path, "rb") as f:
    data = f.read()
  data = data.removeprefix(b"\xef\xbb\xbf")
  if path.endswith(".json") and data.lstrip().startswith(b"["):
    try:
      rows = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path} is not valid UTF-8 (byte {e.start}): {e.reason}") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} starts like a JSON array but is not valid JSON: {e}") from None
    yield from enumerate(rows, start=1)
    return
  for line_no, raw in enumerate(data.split(b"\n"), start=1):
    if not raw.strip():
      continue  # blank lines (e.g. a trailing newline) are not rows
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError:
      report.rows += 1
      report.drop("invalid_utf8", line_no)
      continue
    try:
      yield line_no, json.loads(line)
    except json.JSONDecodeError:
      report.rows += 1
      report.drop("invalid_json", line_no)


def _gsm8k_answer(text: str) -> str | None:
  if "####" not in text:
    return None
  answer = text[text.rfind("####") + 4:].strip().replace(",", "")
  return answer or None


def load_math_file(path: str | os.PathLike, kind: str) -> tuple[list[dict], LoadReport]:
  """Load ``kind`` ("gsm8k" or "math") examples from ``path``; returns (examples, report).

  Raises FileNotFoundError for a missing file, ValueError when no row survives (with the report's summary),
  ImportError for Parquet without pyarrow/pandas.
  """
  if kind not in _FIELDS:
    raise ValueError(f"kind must be one of {sorted(_FIELDS)}, got {kind!r}")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{kind} file not found: {path!r} (download it first; nothing is fetched)")
  question_field, answer_field = _FIELDS[kind]
  report, examples = LoadReport(path=path, kind=kind), []
  for line_no, row in _read_rows(path, report):
    report.rows += 1
    if not isinstance(row, dict):
      report.drop("not_an_object", line_no)
      continue
    if question_field not in row or answer_field not in row:
      report.drop("missing_field", line_no)
      continue
    question, raw = row[question_field], row[answer_field]
    if not isinstance(question, str) or not isinstance(raw, str):
      report.drop("non_string_field", line_no)
      continue
    if kind == "gsm8k":
      answer = _gsm8k_answer(raw)
    else:
      given = row.get("answer")
      answer = given.strip() if isinstance(given, str) and given.strip() else extract_boxed(raw)
    if not question.strip() or not answer:
      report.drop("no_answer" if question.strip() else "empty_question", line_no)
      continue
    extra = {k: v for k, v in row.items() if k not in (question_field, answer_field, "prompt", "answer")}
    examples.append({**extra, "prompt": question, "answer": answer,
             "solution": raw if kind == "gsm8k" else row["solution"]})
    report.kept += 1
  if report.dropped:
    logger.warning("%s", report.summary())
  if not examples:
    raise ValueError(f"no usable rows: {report.summary()}")
  return examples, report


def load_gsm8k(path: str | os.PathLike) -> tuple[list[dict], LoadReport]:
  """GSM8K (``{"question", "answer": "... #### n"}`` rows) from a local file."""
  return load_math_file(path, "gsm8k")


def load_math(path: str | os.PathLike) -> tuple[list[dict], LoadReport]:
  """Hendrycks MATH / MATH-500 (``{"problem", "solution"}`` rows) from a local file."""
  return load_math_file(path, "math")
