"""Shared soak fixtures: `soak_record` appends figures for `tests.soak.report` (a no-op unless
GRPO_SOAK_RECORD names a JSON-lines file)."""
import json
import os

import pytest


@pytest.fixture
def soak_record(request):
  path = os.environ.get("GRPO_SOAK_RECORD")

  def record(figure: str, **values):
    if path:
      with open(path, "a") as f:
        f.write(json.dumps({"test": request.node.nodeid, "figure": figure, **values}) + "\n")
  return record
