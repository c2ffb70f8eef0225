"""Your own dataset: a local JSON-lines, JSON-array or Parquet file with field names you choose.

Each row becomes an example ``{"prompt": row[prompt_field], "answer": row[answer_field], **columns}``:
the prompt is formatted like every task's (the config's system prompt, ``{question}`` template or chat
template), the answer feeds the correctness reward and maj@k, and the columns (every other field, or the
ones listed in ``columns``) are handed to the reward functions by name, aligned with the completions.

Rows that cannot be used are counted per reason with their line numbers (`math_files.LoadReport`, the
reader the GSM8K and MATH loaders use), logged as one warning, and never dropped silently.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from grpo_jax.tasks.math_files import LoadReport, _read_rows

logger = logging.getLogger(__name__)

_RESERVED = ("prompt", "answer")  # the example keys this loader fills itself


def _column_list(columns: str | Sequence[str] | None) -> list[str] | None:
  """``None`` / ``""``: every other field; ``"a,b"`` or ``("a", "b")``: those fields."""
  if columns is None or columns == "":
    return None
  names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else [str(c) for c in columns]
  if bad := [c for c in names if c in _RESERVED or not c]:
    raise ValueError(f"columns {bad} cannot be used: 'prompt' and 'answer' are filled from prompt_field "
                     "and answer_field")
  return names


def load_local_file(path: str | os.PathLike, *, prompt_field: str = "prompt", answer_field: str = "answer",
                    columns: str | Sequence[str] | None = None) -> tuple[list[dict], LoadReport]:
  """Examples from one local file; returns (examples, report).

  ``answer`` may be text or a number (written as text: 42 -> "42"). A row is dropped, and counted, when
  it is not an object (``not_an_object``), lacks the prompt, answer or a listed column
  (``missing_field``), has a prompt that is not text or an answer that is neither text nor a number
  (``non_string_field``), or an empty prompt (``empty_prompt``) or answer (``no_answer``).
  Raises FileNotFoundError for a missing file and ValueError when no row survives.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file not found: {path!r} (task 'local' reads a local .jsonl, .json "
                            "or .parquet file)")
  wanted = _column_list(columns)
  report, examples = LoadReport(path=path, kind="local"), []
  for line_no, row in _read_rows(path, report):
    report.rows += 1
    if not isinstance(row, dict):
      report.drop("not_an_object", line_no)
      continue
    if any(f not in row for f in (prompt_field, answer_field, *(wanted or ()))):
      report.drop("missing_field", line_no)
      continue
    prompt, answer = row[prompt_field], row[answer_field]
    if (not isinstance(prompt, str) or isinstance(answer, bool)
        or not isinstance(answer, (str, int, float))):
      report.drop("non_string_field", line_no)
      continue
    answer = answer.strip() if isinstance(answer, str) else str(answer)
    if not prompt.strip() or not answer:
      report.drop("no_answer" if prompt.strip() else "empty_prompt", line_no)
      continue
    names = wanted if wanted is not None else [
        k for k in row if k not in (prompt_field, answer_field, *_RESERVED)]
    examples.append({**{k: row[k] for k in names}, "prompt": prompt, "answer": answer})
    report.kept += 1
  if report.dropped:
    logger.warning("%s", report.summary())
  if not examples:
    raise ValueError(f"no usable rows (fields prompt_field={prompt_field!r}, answer_field="
                     f"{answer_field!r}): {report.summary()}")
  return examples, report
