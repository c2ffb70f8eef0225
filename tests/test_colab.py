"""The Colab walkthroughs run top to bottom (code cells executed in order in one namespace)."""

import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, capsys):
  nb = json.load(open(path))
  namespace = {}
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      source = "".join(cell["source"])
      exec(compile(source, f"{os.path.basename(path)}:{cell['id']}", "exec"), namespace)  # noqa: S102
  out = capsys.readouterr().out
  assert "loss" in out and "Traceback" not in out


def test_there_is_a_walkthrough():
  assert NOTEBOOKS
