"""Statistics, verdicts, plots and the markdown report of an ablation suite (see `grpo_jax.ablate`).

Every number is a mean over seeds with a 95% confidence interval from Student's t (n − 1 degrees of
freedom). A claim compares two (arm, metric) values seed by seed (the arms share seeds, hence prompts and
sampling keys: paired differences), and its verdict follows the rule fixed in the axis config before any
result existed (`verdict`):
  direction +1 / −1: "reproduced" if the CI of the difference lies entirely on the published side of 0,
                     "contradicted" if entirely on the other side, else "not visible at this scale";
  direction 0 (the paper says "no effect"): "reproduced" if the CI contains 0, else "contradicted".
A claim with `all_of` is reproduced if all its parts are, contradicted if any part is, else not visible.
"""
from __future__ import annotations

import datetime
import json
import os
import warnings

import numpy as np
from scipy import stats

REPRODUCED, NOT_VISIBLE, CONTRADICTED = "reproduced", "not visible at this scale", "contradicted"
AT_MODES = ("final", "initial", "gain", "change", "mid", "third", "mean", "early", "late", "start")


def ci95(x_S) -> tuple[float, float]:
  """(mean, half-width of the 95% t interval) over the finite entries; half-width inf for n < 2."""
  x = np.asarray(x_S, np.float64)
  x = x[np.isfinite(x)]
  if x.size == 0:
    return float("nan"), float("nan")
  if x.size < 2:
    return float(x.mean()), float("inf")
  return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def verdict(mean: float, half: float, direction: int) -> str:
  """The pre-registered rule (module docstring) applied to a CI."""
  lo, hi = mean - half, mean + half
  if not np.isfinite(mean):
    return NOT_VISIBLE
  if direction == 0:
    return REPRODUCED if lo <= 0 <= hi else CONTRADICTED
  if direction * lo > 0 and direction * hi > 0:
    return REPRODUCED
  if direction * lo < 0 and direction * hi < 0:
    return CONTRADICTED
  return NOT_VISIBLE


def _late(curve_SxT):
  n = curve_SxT.shape[-1]
  return np.nanmean(curve_SxT[:, n - max(n // 10, 1):], axis=-1)


def per_seed(arrays: dict, metric: str, at: str, v: int) -> np.ndarray:
  with warnings.catch_warnings():  # all-NaN curves (a diagnostic an arm does not have) give NaN quietly
    warnings.simplefilter("ignore", RuntimeWarning)
    return _per_seed(arrays, metric, at, v)


def _per_seed(arrays: dict, metric: str, at: str, v: int) -> np.ndarray:
  """[S] value of `metric` for sweep value v. `at`: final (exact metric after training, else the mean of
  the last 10% of steps), initial / gain (evaluations before / after − before), change (final − value at
  step 0), mid / third (step steps//2 / steps//3), mean (all steps), early / late (first / last 10% of
  steps), start (step 0)."""
  if at not in AT_MODES:
    raise ValueError(f"unknown at={at!r}; expected one of {AT_MODES}")
  curve = arrays.get(f"curve/{metric}")
  curve = None if curve is None else curve[v]
  if at in ("initial", "gain"):
    if f"initial/{metric}" not in arrays:
      raise KeyError(f"metric {metric!r} has no before/after evaluation (initial/{metric})")
    init = arrays[f"initial/{metric}"][v]
    return init if at == "initial" else arrays[f"final/{metric}"][v] - init
  if at in ("final", "change"):
    final = arrays[f"final/{metric}"][v] if f"final/{metric}" in arrays else None
    if final is None:
      if curve is None:
        raise KeyError(f"no curve or final value for metric {metric!r}")
      final = _late(curve)
    return final if at == "final" else final - curve[:, 0]
  if curve is None:
    raise KeyError(f"no curve for metric {metric!r} (at={at!r} needs one)")
  if at in ("mid", "third"):
    return curve[:, curve.shape[-1] // (2 if at == "mid" else 3)]
  if at == "early":
    return np.nanmean(curve[:, :max(curve.shape[-1] // 10, 1)], axis=-1)
  if at == "start":
    return curve[:, 0]
  return np.nanmean(curve, axis=-1) if at == "mean" else _late(curve)


def sub_arm_table(axis_result) -> dict[str, tuple[dict, int]]:
  """{report name: (arrays, sweep index)} over the arms of an axis, sweeps expanded."""
  out = {}
  for _, (settings, arrays, _) in axis_result["arms"].items():
    for v, name in enumerate(settings.sub_arms()):
      out[name] = (arrays, v)
  return out


def evaluate_claims(axis_result) -> list[dict]:
  """Each claim of the axis with its measured difference, CI and verdict."""
  table = sub_arm_table(axis_result)
  done: dict[str, dict] = {}
  out = []
  for claim in axis_result["config"].claims:
    row = {"id": claim.id, "text": claim.text, "source": claim.source}
    if claim.get("all_of"):
      parts = [done[i]["verdict"] for i in claim.all_of]
      row["verdict"] = (REPRODUCED if all(p == REPRODUCED for p in parts) else
                        CONTRADICTED if CONTRADICTED in parts else NOT_VISIBLE)
      row["measured"] = "parts: " + ", ".join(f"{i}: {done[i]['verdict']}" for i in claim.all_of)
      row["rule"] = "all parts reproduced"
    else:
      metric_b, at_b = claim.get("metric_b", "") or claim.metric, claim.get("at_b", "") or claim.at
      arrays_a, va = table[claim.a]
      a = per_seed(arrays_a, claim.metric, claim.at, va)
      desc_a = f"{claim.metric}@{claim.at}({claim.a})"
      if claim.get("b", ""):
        arrays_b, vb = table[claim.b]
        d = a - per_seed(arrays_b, metric_b, at_b, vb)
        desc = f"{desc_a} − {metric_b}@{at_b}({claim.b})"
      else:
        d, desc = a, desc_a
      mean, half = ci95(d)
      row.update(mean=mean, half=half, verdict=verdict(mean, half, int(claim.direction)),
                 measured=f"{mean:+.4g} ± {half:.2g}",
                 rule=f"{desc} {'> 0' if claim.direction > 0 else '< 0' if claim.direction < 0 else '= 0'}")
    done[claim.id] = row
    out.append(row)
  return out


def _cell(text: str) -> str:
  """A markdown table cell: a literal | would end the cell."""
  return str(text).replace("|", "\\|")


def _fmt(mean, half):
  if not np.isfinite(mean):
    return "—"
  return f"{mean:.3g} ± {half:.2g}" if np.isfinite(half) else f"{mean:.3g}"


def results_table(axis_result) -> str:
  """Markdown table: one row per (sub-)arm, one column per `metric:at` of `config.table`."""
  cols = list(axis_result["config"].table)
  lines = ["| arm | " + " | ".join(c.replace(":", " @ ") for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
  for name, (arrays, v) in sub_arm_table(axis_result).items():
    cells = []
    for col in cols:
      metric, at = col.split(":")
      try:
        cells.append(_fmt(*ci95(per_seed(arrays, metric, at, v))))
      except KeyError:
        cells.append("—")
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_axis(axis_result, path: str) -> None:
  """Curves (mean and 95% CI band over seeds) of `config.curves` above bars of the first table columns."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = axis_result["config"]
  curves, bars = list(config.curves)[:3], list(config.table)[:3]
  n = max(len(curves), len(bars))
  fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.4), squeeze=False)
  table = sub_arm_table(axis_result)
  palette = plt.cm.tab10 if len(table) <= 10 else plt.cm.tab20
  colors = palette(np.arange(palette.N) % palette.N)
  for j, metric in enumerate(curves):
    ax = axes[0, j]
    for i, (name, (arrays, v)) in enumerate(table.items()):
      if f"curve/{metric}" not in arrays:
        continue
      c = arrays[f"curve/{metric}"][v]
      x = np.arange(c.shape[-1])
      stride = max(c.shape[-1] // 200, 1)  # keeps the PNG small
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(c, 0)
      half = np.array([ci95(c[:, t])[1] for t in range(c.shape[-1])])
      half = np.where(np.isfinite(half), half, 0.0)
      ax.plot(x[::stride], mean[::stride], color=colors[i % len(colors)], lw=1.2, label=name)
      ax.fill_between(x[::stride], (mean - half)[::stride], (mean + half)[::stride], color=colors[i % len(colors)],
                      alpha=0.2, lw=0)
    ax.set_title(metric, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for j in range(len(curves), n):
    axes[0, j].axis("off")
  for j, col in enumerate(bars):
    ax = axes[1, j]
    metric, at = col.split(":")
    names, means, halves = [], [], []
    for name, (arrays, v) in table.items():
      try:
        m, h = ci95(per_seed(arrays, metric, at, v))
      except KeyError:
        continue
      names.append(name)
      means.append(m)
      halves.append(h if np.isfinite(h) else 0.0)
    ax.bar(range(len(names)), means, yerr=halves, color=[colors[i % len(colors)] for i in range(len(names))],
           capsize=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=6.5)
    ax.set_title(f"{metric} @ {at}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
  for j in range(len(bars), n):
    axes[1, j].axis("off")
  axes[0, 0].legend(fontsize=6, loc="best")
  fig.suptitle(config.title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=72)
  plt.close(fig)


def _settings_line(axis_result) -> str:
  """Toy and training settings; a setting that differs between arms reads "per arm"."""
  settings = [s for s, _, _ in axis_result["arms"].values()]
  first = settings[0]

  def value(get):
    values = {get(s) for s in settings}
    return f"{values.pop():g}" if len(values) == 1 else "per arm"
  return (f"toy `{first.toy_name}` ({', '.join(f'{k}={v}' for k, v in first.toy_kwargs) or 'defaults'}); "
          f"{first.seeds} seeds; {value(lambda s: s.spec.steps)} steps of B = "
          f"{value(lambda s: s.spec.prompts_per_step)} prompts × G = {value(lambda s: s.spec.group_size)}; "
          f"optimizer {first.spec.optimizer}; lr = {value(lambda s: dict(s.knob_rows[0])['lr'])}")


def write_report(results: dict, path: str, run_info: dict) -> None:
  """Writes the markdown report at `path` and one PNG per axis under `<dir>/ablations/`."""
  from grpo_jax import ablate_text

  out_dir = os.path.dirname(path) or "."
  plot_dir = os.path.join(out_dir, "ablations")
  arm_minutes = sum(m["wall_s"] for r in results.values() for _, _, m in r["arms"].values()) / 60
  full_run = run_info.get("full_run")
  lines = [ablate_text.HEADER.format(
      date=datetime.date.today().isoformat(), command=run_info["command"],
      timing=ablate_text.timing_line(run_info, full_run, arm_minutes),
      smoke=" (SMOKE RUN: 3 steps, 2 seeds — the numbers mean nothing)" if run_info["smoke"] else "")]
  lines.append(ablate_text.METHOD)
  speedup = os.path.join(plot_dir, "speedup.json")
  if os.path.exists(speedup):
    with open(speedup) as f:
      lines.append(ablate_text.speedup_section(json.load(f)))
  summary = ["## Summary", "", "| axis | claim | source | measured (95% CI) | verdict |", "|---|---|---|---|---|"]
  sections = []
  for name, axis_result in results.items():
    config = axis_result["config"]
    claims = evaluate_claims(axis_result)
    for c in claims:
      summary.append(f"| [{name}](#{name}) | {_cell(c['text'])} | {_cell(c['source'])} | {c['measured']} | "
                     f"**{c['verdict']}** |")
    png = os.path.join(plot_dir, f"{name}.png")
    plot_axis(axis_result, png)
    claim_rows = "\n".join(f"| {c['id']} | {_cell(c['text'])} | `{_cell(c['rule'])}` | {c['measured']} | "
                           f"**{c['verdict']}** |" for c in claims)
    sections.append(ablate_text.AXIS.format(
        name=name, title=config.title, published=config.published, design=config.design,
        settings=_settings_line(axis_result), table=results_table(axis_result), claims=claim_rows,
        notes=(f"\n**After the results** (written once the first full run was in; explains, changes no rule "
               f"or verdict). {config.notes}\n" if config.get("notes") else ""),
        png=os.path.relpath(png, out_dir)))
  lines += ["\n".join(summary), *sections]
  with open(path, "w") as f:
    f.write("\n\n".join(lines) + "\n")
