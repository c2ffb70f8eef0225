"""metrics.png: labelled panels for the metrics a run logged, integer steps, the others left out by name."""

import json

import numpy as np

from grpo_jax import metrics as metrics_lib

ROWS = [
    {"step": 0, "eval/accuracy": 0.25, "eval/pass@4": 0.5, "eval/maj@4": 0.375},
    *[{"step": s, "reward/total/mean": 0.1 * s, "reward/total/std": 0.4, "kl": 0.0,
       "completion_len/mean": 3.0 + s, "completion_len/max": 8.0, "clip_frac": 0.01 * s,
       "clip_frac_low": 0.0, "clip_frac_high": 0.01 * s} for s in range(1, 8)],
    {"step": 7, "eval/accuracy": 0.75, "eval/pass@4": 1.0, "eval/maj@4": float("nan")},
]


def _visible(fig):
  return [ax for ax in fig.axes if ax.get_visible()]


def _integer_ticks(ax):
  lo, hi = ax.get_xlim()
  ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
  return bool(ticks) and all(float(t).is_integer() for t in ticks)


def test_panels_labels_units_and_integer_steps():
  fig = metrics_lib.metrics_figure(ROWS)
  fig.canvas.draw()
  axes = {ax.get_title(): ax for ax in _visible(fig)}
  # KL is 0 at every step (beta = 0) and entropy was not logged: both left out, and said so.
  assert list(axes) == ["Reward", "Held-out accuracy", "Completion length", "Clipped tokens"]
  footer = " ".join(t.get_text() for t in fig.texts)
  assert "KL to the reference policy (0 at every step" in footer and "Policy entropy (not logged)" in footer
  for ax in axes.values():
    assert ax.get_xlabel() == "GRPO step" and ax.get_ylabel()
    assert _integer_ticks(ax), ax.get_title()
  acc = {line.get_label(): line for line in axes["Held-out accuracy"].get_lines()}
  assert list(acc) == ["greedy", "pass@4", "maj@4"]
  np.testing.assert_allclose(acc["greedy"].get_ydata(), [25.0, 75.0])  # fractions drawn as %
  np.testing.assert_allclose(acc["maj@4"].get_xdata(), [0])  # a NaN is not a point
  assert "%" in axes["Held-out accuracy"].get_ylabel() and axes["Held-out accuracy"].get_ylim() == (0, 100)
  clip = {line.get_label(): line for line in axes["Clipped tokens"].get_lines()}
  np.testing.assert_allclose(clip["all"].get_ydata(), [1.0 * s for s in range(1, 8)])
  assert axes["Completion length"].get_ylabel() == "tokens"


def test_single_step_and_empty_logs(tmp_path):
  fig = metrics_lib.metrics_figure([{"step": 1, "reward/total/mean": 0.5}])
  fig.canvas.draw()
  (ax,) = _visible(fig)
  assert ax.get_title() == "Reward" and _integer_ticks(ax)
  fig = metrics_lib.metrics_figure([])  # a run that logged nothing yet still gets a picture
  assert "no plottable metrics" in " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  png = metrics_lib.plot_metrics(str(path), str(tmp_path / "metrics.png"))
  import matplotlib.pyplot as plt
  h, w, _ = plt.imread(png).shape
  assert w > h > 300  # two rows of three panels
