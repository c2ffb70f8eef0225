"""metrics.jsonl after a kill: a torn last line is dropped, rows after the resumed step are removed, and the
rewrite is atomic (a crash during it leaves the old file whole)."""
import json

import pytest

from grpo_jax import metrics as metrics_lib


def _write(path, steps, torn=False):
  with open(path, "w") as f:
    f.writelines(json.dumps({"step": s, "loss": 0.5 * s}) + "\n" for s in steps)
    if torn:
      f.write('{"step": %d, "lo' % (steps[-1] + 1))  # SIGKILL in the middle of a row


@pytest.mark.parametrize("keep_through,expected", [(3, [0, 1, 2, 3]), (-1, []), (9, [0, 1, 2, 3, 4, 5])])
def test_rewind_keeps_rows_through_the_resumed_step_and_drops_a_torn_line(tmp_path, keep_through, expected):
  path = tmp_path / "metrics.jsonl"
  _write(path, range(6), torn=True)
  writer = metrics_lib.MetricsWriter(str(tmp_path), 10, initial_step=max(keep_through, 0),
                                     keep_through=keep_through, console=False)
  writer.write(max(keep_through, 0) + 1, {"loss": 1.0})
  writer.close()
  steps = [r["step"] for r in metrics_lib.read_jsonl(str(path))]
  assert steps == expected + [max(keep_through, 0) + 1]


class _Crash(OSError):
  pass


def test_a_crash_during_the_rewind_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  _write(path, range(6))
  before = path.read_text()

  class HalfWriter:
    def __init__(self, f):
      self.f = f

    def writelines(self, lines):
      self.f.write(next(iter(lines)))
      raise _Crash("killed mid-rewrite")

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

  real_open = open
  monkeypatch.setattr(metrics_lib, "open", lambda p, mode="r", *a, **k: HalfWriter(real_open(p, mode))
                      if "w" in mode else real_open(p, mode, *a, **k), raising=False)
  with pytest.raises(_Crash):
    metrics_lib._rewind(str(path), 2)
  assert path.read_text() == before
