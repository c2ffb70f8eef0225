"""Metrics output: JSON lines, TensorBoard event files, a console progress bar and a PNG plot.

Only process 0 writes. `metrics.jsonl` holds one object per step (`{"step": s, "<name>": value}`);
`samples.jsonl` holds logged completions; `events.out.tfevents.*` are for TensorBoard.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
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


@dataclasses.dataclass(frozen=True)
class Panel:
  """One plot of `plot_metrics`: `series` are (metrics key, legend label) pairs; a key may hold `{k}`,
  filled with every k the log has (``eval/pass@{k}`` -> pass@4). `percent` plots fractions as %."""

  title: str
  ylabel: str
  series: tuple[tuple[str, str], ...]
  percent: bool = False
  ylim: tuple[float, float] | None = None
  zero_means_off: bool = False  # all values exactly 0 means "not computed" (KL with beta = 0): leave out


PANELS = (
    Panel("Reward", "reward per completion", (("reward/total/mean", "mean"),
                                               ("reward/total/std", "std over completions"))),
    Panel("Held-out accuracy", "% of eval prompts", (
        ("eval/accuracy", "greedy"), ("eval/pass@{k}", "pass@{k}"), ("eval/maj@{k}", "maj@{k}")),
          percent=True, ylim=(0, 100)),
    Panel("KL to the reference policy", "nats per token", (("kl", "KL estimate"),), zero_means_off=True),
    Panel("Policy entropy", "nats per token", (("entropy", "entropy"),)),
    Panel("Completion length", "tokens", (("completion_len/mean", "mean"), ("completion_len/max", "max"))),
    Panel("Clipped tokens", "% of completion tokens", (
        ("clip_frac", "all"), ("clip_frac_low", "low (A < 0)"), ("clip_frac_high", "high (A > 0)")),
          percent=True),
)


def _expand(key: str, label: str, keys: set[str]) -> list[tuple[str, str]]:
  if "{k}" not in key:
    return [(key, label)] if key in keys else []
  head, tail = key.split("{k}")
  ks = sorted(int(m.group(1)) for k in keys
              if (m := re.fullmatch(re.escape(head) + r"(\d+)" + re.escape(tail), k)))
  return [(key.format(k=k), label.format(k=k)) for k in ks]


def metrics_figure(rows: list[dict], panels: tuple[Panel, ...] = PANELS):
  """A matplotlib figure of metrics rows (`read_jsonl`) over GRPO steps: one panel per `Panel` whose
  metrics the rows hold, three to a row, integer steps on a shared x range; panels left out (not logged,
  or 0 at every step where that means "not computed") are named in a footer."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  keys = {k for r in rows for k in r}
  steps_logged = [r["step"] for r in rows if "step" in r] or [0]
  first, last = min(steps_logged), max(steps_logged)
  pad = max(1.0 if first == last else 0.5, 0.02 * (last - first))  # integer ticks even for one step

  def points(key):
    return sorted({r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))
                   and math.isfinite(r[key])}.items())

  drawn, left_out = [], []
  for panel in panels:
    series = [(label, pts) for key, label in panel.series for k, label in _expand(key, label, keys)
              if (pts := points(k))]
    if not series:
      left_out.append(f"{panel.title} (not logged)")
    elif panel.zero_means_off and all(v == 0 for _, pts in series for _, v in pts):
      left_out.append(f"{panel.title} (0 at every step: not computed)")
    else:
      drawn.append((panel, series))
  cols = max(1, min(3, len(drawn)))
  nrows = max(1, math.ceil(len(drawn) / cols))
  fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows), squeeze=False)
  for ax in axes.flat[len(drawn):]:
    ax.set_visible(False)
  if not drawn:
    axes[0][0].set_visible(True)
    axes[0][0].axis("off")
    axes[0][0].text(0.5, 0.5, "no plottable metrics", ha="center", va="center")
  for ax, (panel, series) in zip(axes.flat, drawn):
    scale = 100.0 if panel.percent else 1.0
    for label, pts in series:
      steps, values = zip(*pts)
      ax.plot(steps, [scale * v for v in values], marker="o" if len(pts) < 30 else None, markersize=3,
              label=label)
    if panel.ylim:
      ax.set_ylim(*panel.ylim)
    ax.set_title(panel.title)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(panel.ylabel)
    ax.set_xlim(first - pad, last + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize=8)
  fig.tight_layout()
  if left_out and drawn:
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.06 / nrows)
    fig.text(0.01, 0.01, "left out: " + "; ".join(left_out), fontsize=8, color="0.4")
  return fig


def plot_metrics(jsonl_path: str, png_path: str, panels: tuple[Panel, ...] = PANELS) -> str:
  """`metrics_figure` of a metrics.jsonl, written to a PNG; returns its path."""
  import matplotlib.pyplot as plt
  fig = metrics_figure(read_jsonl(jsonl_path), panels)
  fig.savefig(png_path, dpi=110)
  plt.close(fig)
  return png_path
