"""Metrics output: JSON lines, TensorBoard event files, a console progress bar and a PNG plot.

Only process 0 writes. `metrics.jsonl` holds one object per step (`{"step": s, "<name>": value}`);
`samples.jsonl` holds logged completions; `events.out.tfevents.*` are for TensorBoard.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

CONSOLE_KEYS = ("reward/total/mean", "eval/accuracy", "kl", "loss", "completion_len/mean",
                "time/step_s")


def _scalar(v) -> float | None:
  try:
    x = float(np.asarray(jax.device_get(v)))
  except (TypeError, ValueError):
    return None
  return x


class MetricsWriter:
  """Writes metrics to `workdir` and shows a progress bar over `total_steps`."""

  def __init__(self, workdir: str, total_steps: int, *, initial_step: int = 0,
               keep_through: int | None = None, console: bool = True):
    """Rows (and samples) with a step after `keep_through` (default `initial_step`; -1 drops all) are
    removed first: the resumed run writes them again, so each step is logged exactly once. TensorBoard is
    told the same (`purge_step`): it hides the earlier run's events from that step on."""
    keep_through = initial_step if keep_through is None else keep_through
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _rewind(os.path.join(workdir, "metrics.jsonl"), keep_through)
    _rewind(os.path.join(workdir, "samples.jsonl"), keep_through)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._samples = open(os.path.join(workdir, "samples.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=keep_through + 1)
    except ImportError:  # TensorBoard output is optional
      self._tb = None
    if console:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=initial_step, desc="grpo", dynamic_ncols=True)

  def write(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
    """Logs scalar metrics for `step`; returns them as floats."""
    scalars = {k: x for k, v in metrics.items() if (x := _scalar(v)) is not None}
    if not self.enabled:
      return scalars
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k.replace("@", "_at_"), v, step)  # TensorBoard tags allow no "@"
    if self._bar is not None:
      shown = {k.split("/")[-2] if k.endswith("/mean") else k.split("/")[-1]: f"{scalars[k]:.3g}"
               for k in CONSOLE_KEYS if k in scalars}
      self._bar.set_postfix(shown, refresh=False)
    return scalars

  def advance(self, n: int = 1):
    if self._bar is not None:
      self._bar.update(n)

  def write_samples(self, step: int, rows: list[dict]):
    if not self.enabled:
      return
    for row in rows:
      self._samples.write(json.dumps({"step": step, **row}) + "\n")
    self._samples.flush()

  def close(self):
    if not self.enabled:
      return
    self._jsonl.close()
    self._samples.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


def _rewind(path: str, step: int):
  """Drops rows logged after `step`, and a torn last line (a kill mid-write): a resumed run recomputes them.
  The file is replaced atomically, so a kill during the rewind loses nothing."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if row.get("step", 0) <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_metrics(jsonl_path: str, png_path: str, keys=("reward/total/mean", "eval/accuracy")) -> str:
  """Plots `keys` over steps from a metrics.jsonl into a PNG (one panel per key)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_jsonl(jsonl_path)
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = sorted({r["step"]: r[key] for r in rows if key in r}.items())
    if pts:
      ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3)
    ax.set_title(key)
    ax.set_xlabel("GRPO step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png_path, dpi=110)
  plt.close(fig)
  return png_path
