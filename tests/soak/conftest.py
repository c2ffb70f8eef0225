"""Soak fixtures: `soak_record` appends figures for `tests.soak.report` (a no-op unless GRPO_SOAK_RECORD
names a JSON-lines file). The full kill soak is marked `slow` and skipped unless selected with `-m`
(e.g. `-m slow`) or GRPO_SOAK_FULL=1: CI (`pytest -q`) runs everything else."""
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


def pytest_collection_modifyitems(config, items):
  if config.getoption("-m") or os.environ.get("GRPO_SOAK_FULL"):
    return
  skip = pytest.mark.skip(reason="full soak: select it with -m slow, or set GRPO_SOAK_FULL=1")
  here = os.path.dirname(os.path.abspath(__file__))
  for item in items:
    if "slow" in item.keywords and str(item.fspath).startswith(here):
      item.add_marker(skip)
