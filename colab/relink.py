"""Points every Colab link at the repository path that README.md defines.

The README's Colab section names the GitHub path once (`Repository path for the Colab links: **`owner/name`**`).
After changing it there, run `python colab/relink.py`: it rewrites the "Open in Colab" URLs in README.md and
in colab/*.ipynb, and the `REPO = "owner/name"` line of each notebook's setup cell (used to clone and pip
install the repository in Colab). tests/test_colab.py fails while any of them disagrees with the README.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

REPO_LINE = re.compile(r"Repository path for the Colab links: \*\*`([\w.-]+/[\w.-]+)`\*\*")
COLAB_URL = re.compile(r"(https://colab\.research\.google\.com/github/)[\w.-]+/[\w.-]+(/blob/)")
REPO_ASSIGN = re.compile(r'^(REPO = ")[\w.-]+/[\w.-]+(")', re.MULTILINE)


def readme_repo(readme_text: str) -> str:
  """The `owner/name` the README defines; ValueError naming the expected line if it is missing."""
  m = REPO_LINE.search(readme_text)
  if m is None:
    raise ValueError("README.md has no line 'Repository path for the Colab links: **`owner/name`**' "
                     "(its Colab section defines the path the links use)")
  return m.group(1)


def relink_text(text: str, repo: str) -> str:
  text = COLAB_URL.sub(lambda m: f"{m.group(1)}{repo}{m.group(2)}", text)
  return REPO_ASSIGN.sub(lambda m: f"{m.group(1)}{repo}{m.group(2)}", text)


def relink(root: str) -> list[str]:
  """Rewrites the links under `root` (a checkout); returns the files that changed."""
  readme = os.path.join(root, "README.md")
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  repo = readme_repo(text)
  changed = []
  if relink_text(text, repo) != text:
    with open(readme, "w", encoding="utf-8") as f:
      f.write(relink_text(text, repo))
    changed.append(readme)
  for path in sorted(glob.glob(os.path.join(root, "colab", "*.ipynb"))):
    with open(path, encoding="utf-8") as f:
      nb = json.load(f)
    before = json.dumps(nb)
    for cell in nb["cells"]:
      source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
      new = relink_text(source, repo)
      if new != source:
        cell["source"] = new.splitlines(keepends=True)
    if json.dumps(nb) != before:
      with open(path, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, sort_keys=True, ensure_ascii=False)  # as nbformat writes
        f.write("\n")
      changed.append(path)
  return changed


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      help="the repository checkout (default: the one holding this script)")
  for p in relink(parser.parse_args().root) or ["(nothing to change)"]:
    print(p)
