"""The Colab walkthroughs: each executes top to bottom in a real Jupyter kernel (nbclient), in small mode
on CPU, and the committed files carry their outputs and links that agree with the README."""

import glob
import importlib.util
import json
import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("01_grpo_math.ipynb", "02_train_tiny.ipynb", "03_real_model.ipynb")
MAX_BYTES = 1_500_000  # stored outputs (PNG plots) stay small enough to view on the repository page

_spec = importlib.util.spec_from_file_location("relink", os.path.join(ROOT, "colab", "relink.py"))
relink = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relink)


def _read(name):
  return nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)


def _kernel_env(tmp_path):
  """The kernel's environment: small mode, CPU, one device (a Colab CPU runtime), this checkout's code."""
  env = dict(os.environ)
  env.update(GRPO_JAX_SMALL="1", GRPO_JAX_ROOT=ROOT, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             IPYTHONDIR=str(tmp_path / "ipython"),  # no IPython profile written to the user's home
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  return env


def _outputs(nb, kind):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == kind]


def _text(nb):
  return "".join(o.get("text", "") for o in _outputs(nb, "stream"))


def _images(nb):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_in_small_mode(name, tmp_path, monkeypatch):
  """Every cell executes without error (nbclient raises CellExecutionError with the cell's traceback)."""
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter"))  # the kernel's connection file
  nb = _read(name)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs = []  # judge this run's outputs, not the stored ones
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute(env=_kernel_env(tmp_path))
  text = _text(nb)
  assert not _outputs(nb, "error")
  if name == "01_grpo_math.ipynb":
    assert len(_images(nb)) >= 4  # advantages, clip regions, KL estimators, aggregation weights
    assert "update 2:" in text
  elif name == "02_train_tiny.ipynb":
    assert "mode: SMALL" in text and "resumed from" in text and len(_images(nb)) >= 2
    assert os.path.isfile(tmp_path / "runs" / "02_default" / "summary.json")
  else:
    assert "SMALL mode: GRPO_JAX_SMALL=1 is set" in text
    assert os.path.isfile(tmp_path / "runs" / "03_gsm8k" / "hf_export" / "config.json")
    assert "logit difference" in text and _images(nb)  # the live plot


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_outputs_and_fits(name):
  """Stored outputs from a real run: every code cell ran, in order, without an error; the file is small."""
  nb = _read(name)
  counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
  assert None not in counts and counts == sorted(counts), f"{name}: execute it top to bottom, then commit"
  assert not _outputs(nb, "error")
  assert _images(nb)
  assert os.path.getsize(os.path.join(ROOT, "colab", name)) < MAX_BYTES


def test_colab_links_follow_the_readme():
  """The README defines the repository path once; every badge and clone URL uses it."""
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  repo = relink.readme_repo(readme)
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "colab", "*.ipynb"))) == list(NOTEBOOKS)
  for name in NOTEBOOKS:
    url = f"https://colab.research.google.com/github/{repo}/blob/main/colab/{name}"
    nb = _read(name)
    assert nb.cells[0].cell_type == "markdown" and f"]({url})" in nb.cells[0].source, name
    assert f"]({url})" in readme, f"README's Colab section has no badge for {name}"
    setup = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'REPO = "{repo}"' in setup, name
  assert relink.relink_text(readme, repo) == readme  # no stray link to another repository


def test_relink_rewrites_every_link(tmp_path):
  """Changing the README's one line and running colab/relink.py moves every link to the new path."""
  shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
  shutil.copytree(os.path.join(ROOT, "colab"), tmp_path / "colab")
  readme = (tmp_path / "README.md").read_text(encoding="utf-8")
  old = relink.readme_repo(readme)
  (tmp_path / "README.md").write_text(readme.replace(f"**`{old}`**", "**`someone/fork`**"), encoding="utf-8")
  changed = relink.relink(str(tmp_path))
  assert len(changed) == 1 + len(NOTEBOOKS)
  for path in changed:
    text = open(path, encoding="utf-8").read()
    assert old not in text, path
    assert "colab.research.google.com/github/someone/fork/blob/main/colab/" in text
  for name in NOTEBOOKS:
    nb = json.load(open(tmp_path / "colab" / name))
    assert 'REPO = "someone/fork"' in "".join("".join(c["source"]) for c in nb["cells"])
