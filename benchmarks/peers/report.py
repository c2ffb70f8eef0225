"""Collects the runners' JSON lines (results.jsonl from run.sh) into the markdown table and the plot.

Per implementation, each round (one process) gives a median step time; the table reports the median over
rounds and the spread (min–max over rounds), the roofline fraction = step FLOPs / (median step time ·
measured f32 matmul peak), and the step-time ratio to grpo_jax (> 1: grpo_jax is faster).

Usage: python benchmarks/peers/report.py results.jsonl [more.jsonl ...] --data DATA_DIR [--markdown out.md]
       [--plot out.png]   (several files: their rounds are pooled)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import roofline  # noqa: E402

ORDER = ("grpo_jax", "grpo_jax-before", "grpo_jax-warm-cache", "grpo_jax-bf16", "grpo_jax-off-policy", "grpo_jax-scan-decode", "tunix", "trl", "trl-no-gc")
LABELS = {"grpo_jax": "grpo_jax", "grpo_jax-warm-cache": "grpo_jax, warm JAX compilation cache",
          "grpo_jax-bf16": "grpo_jax, bf16 matmuls (f32 accumulation)",
          "grpo_jax-scan-decode": "grpo_jax, decode scanned over layers",
          "grpo_jax-off-policy": "grpo_jax, one-step-off-policy rollouts (async)",
          "grpo_jax-before": "grpo_jax before issue 10 (9bfd665)",
          "tunix": "Tunix (vanilla rollout)", "trl": "TRL GRPOTrainer (defaults)",
          "trl-no-gc": "TRL, gradient_checkpointing=False"}
SHORT = {"grpo_jax": "grpo_jax", "grpo_jax-warm-cache": "grpo_jax\n(warm cache)", "grpo_jax-bf16": "grpo_jax\n(bf16)",
         "grpo_jax-scan-decode": "grpo_jax\n(scan decode)", "grpo_jax-off-policy": "grpo_jax\n(off-policy)", "grpo_jax-before": "grpo_jax\n(before)", "tunix": "Tunix", "trl": "TRL\n(defaults)", "trl-no-gc": "TRL\n(no grad ckpt)"}
PHASES = ("rollout", "reference", "update")


def machine_info() -> dict:
  info = {"python": platform.python_version(), "cores": os.cpu_count()}
  try:
    with open("/proc/cpuinfo") as f:
      lines = f.read().splitlines()
    info["cpu"] = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    info["simd"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    with open("/proc/meminfo") as f:
      kib = int(f.readline().split()[1])
    info["ram_gib"] = round(kib / 2**20, 1)
  except OSError:
    pass
  return info


def dims_from_hf(path: str) -> roofline.Dims:
  with open(os.path.join(path, "config.json")) as f:
    c = json.load(f)
  return roofline.Dims(vocab=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                       heads=c["num_attention_heads"], kv_heads=c["num_key_value_heads"],
                       head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                       intermediate=c["intermediate_size"])


def summarize(rows: list[dict]) -> dict:
  """Per tag: the per-round values and their medians."""
  out = {}
  for tag in ORDER:
    runs = [r for r in rows if r.get("tag") == tag and "median_step_s" in r]
    errors = [r["error"] for r in rows if r.get("tag") == tag and "error" in r]
    if not runs:
      if errors:
        out[tag] = {"errors": errors}
      continue
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    out[tag] = {
        "rounds": len(runs), "errors": errors, "version": runs[0].get("version"),
        "median_step_s": med("median_step_s"),
        "step_s_per_round": [r["median_step_s"] for r in runs],
        "best_step_s": min(r["min_step_s"] for r in runs),
        "first_step_s": med("first_step_s"),
        "first_step_s_per_round": [r["first_step_s"] for r in runs],
        "completion_tokens_per_s": med("completion_tokens_per_s"),
        "peak_rss_mib": med("peak_rss_mib"),
        "rss_per_round": [r["peak_rss_mib"] for r in runs],
        "cpu_s_per_step": (statistics.median(r["median_step_cpu_s"] for r in runs)
                           if all("median_step_cpu_s" in r for r in runs) else None),
        "first_step_cpu_s": (statistics.median(r["first_step_cpu_s"] for r in runs)
                             if all("first_step_cpu_s" in r for r in runs) else None),
        "phases_s": {p: statistics.median(r["median_phases_s"][p] for r in runs) for p in PHASES},
        "first_phases_s": {p: statistics.median(r["first_step_phases_s"][p] for r in runs) for p in PHASES},
    }
  return out


def fmt_spread(values, digits=2):
  return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def render(summary: dict, flops: dict, peak: dict, machine: dict, steps_note: str,
           rows_by_round: list[dict] | None = None) -> str:
  peak_flops = max(peak.values()) * 1e9
  base = summary.get("grpo_jax", {}).get("median_step_s")
  lines = [
      f"Step FLOPs (matmul, benchmarks/roofline.py): rollout {flops['rollout'] / 1e9:.1f} G + reference "
      f"{flops['reference'] / 1e9:.1f} G + update {flops['update'] / 1e9:.1f} G = **{flops['step'] / 1e9:.1f} "
      f"GFLOP**. Measured float32 matmul peak (best of 20, 2048², 2 threads): "
      + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items())
      + f"; the roofline uses the best, {peak_flops / 1e9:.1f} GFLOP/s → a step takes ≥ "
      f"{flops['step'] / peak_flops:.2f} s.",
      "",
      f"Machine: {machine.get('cpu')} ({machine.get('simd')}), {machine.get('cores')} cores, "
      f"{machine.get('ram_gib')} GiB RAM, Python {machine.get('python')}. {steps_note}",
      "",
      "| implementation | version | median s/step (spread over rounds) | best step s | first step s (spread) | "
      "completion tok/s | peak RSS MiB | s/step ÷ grpo_jax | % of f32 roofline | rollout / reference / "
      "update s | CPU-s/step (first) |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for tag in ORDER:
    s = summary.get(tag)
    if s is None:
      continue
    if "median_step_s" not in s:
      lines.append(f"| {LABELS[tag]} | — | failed: {s['errors'][0][:120]} | | | | | | | | |")
      continue
    ratio = f"{s['median_step_s'] / base:.2f}×" if base else "—"
    frac = 100 * flops["step"] / (s["median_step_s"] * peak_flops)
    ph = " / ".join(f"{s['phases_s'][p]:.2f}" for p in PHASES)
    cpu = (f"{s['cpu_s_per_step']:.1f} ({s['first_step_cpu_s']:.0f})" if s.get("cpu_s_per_step")
           else "—")
    lines.append(
        f"| {LABELS[tag]} | {s['version']} | **{s['median_step_s']:.2f}** ({fmt_spread(s['step_s_per_round'])})"
        f" | {s['best_step_s']:.2f} | {s['first_step_s']:.1f} ({fmt_spread(s['first_step_s_per_round'], 1)}) | "
        f"{s['completion_tokens_per_s']:.0f} | {s['peak_rss_mib']:.0f} | {ratio} | {frac:.0f}% | {ph} | {cpu} |")
  lines += ["", *per_round(rows_by_round)] if rows_by_round else []
  return "\n".join(lines) + "\n"


def per_round(rows: list[dict]) -> list[str]:
  """Per round: grpo_jax's median s/step divided by each peer's in the same round (< 1: grpo_jax is
  faster), and the 1-minute load average at the start and end of each run of the round."""
  peers = [t for t in ("trl-no-gc", "trl", "tunix") if any(r.get("tag") == t for r in rows)]
  out = ["Per round (grpo_jax median s/step ÷ the peer's in the same round; load = 1-min load average at "
         "the start–end of the round's runs):", "",
         "| round | load | grpo_jax s/step | " + " | ".join(f"÷ {LABELS[p]}" for p in peers) + " |",
         "|---|---|---|" + "---|" * len(peers)]
  for rnd in sorted({r["round"] for r in rows if r.get("tag") == "grpo_jax" and "median_step_s" in r}):
    here = {r["tag"]: r for r in rows if r.get("round") == rnd and "median_step_s" in r}
    loads = [x for r in here.values() for x in r.get("load", [])]
    load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "—"
    g = here["grpo_jax"]["median_step_s"]
    ratios = [f"{g / here[p]['median_step_s']:.2f}" if p in here else "—" for p in peers]
    out.append(f"| {rnd} | {load} | {g:.2f} | " + " | ".join(ratios) + " |")
  return out


def plot(summary: dict, flops: dict, peak: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tags = [t for t in ORDER if "median_step_s" in summary.get(t, {})]
  names = [SHORT[t] for t in tags]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
  ax = axes[0]
  bottom = [0.0] * len(tags)
  colors = {"rollout": "#4c72b0", "reference": "#dd8452", "update": "#55a868"}
  for p in PHASES:
    vals = [summary[t]["phases_s"][p] for t in tags]
    ax.bar(names, vals, bottom=bottom, label=p, color=colors[p])
    bottom = [b + v for b, v in zip(bottom, vals)]
  for i, t in enumerate(tags):
    s = summary[t]
    lo, hi = min(s["step_s_per_round"]), max(s["step_s_per_round"])
    ax.errorbar(i, s["median_step_s"], yerr=[[s["median_step_s"] - lo], [hi - s["median_step_s"]]],
                fmt="k_", capsize=6, markersize=18)
  ax.scatter(range(len(tags)), [summary[t]["best_step_s"] for t in tags], marker="D", color="w",
             edgecolors="k", zorder=5, label="best step (least disturbed)")
  best = flops["step"] / (max(peak.values()) * 1e9)
  ax.axhline(best, color="k", ls="--", lw=1, label=f"f32 roofline ({best:.2f} s)")
  ax.axhline(best / 0.7, color="r", ls=":", lw=1, label="70% of roofline (target)")
  ax.set_ylabel("seconds per GRPO step")
  ax.set_title("median step (bars: phases; whisker: spread over rounds)")
  ax.legend(fontsize=8)
  ax.tick_params(axis="x", labelsize=8)
  for ax, key, title, target in ((axes[1], "first_step_s", "first step incl. compile (s)", 5.0),
                                 (axes[2], "peak_rss_mib", "peak RSS (MiB)", None)):
    ax.bar(names, [summary[t][key] for t in tags], color="#8172b2")
    if target:
      ax.axhline(target, color="r", ls=":", lw=1, label=f"target {target:g} s")
      ax.legend(fontsize=8)
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=7)
  fig.suptitle(f"GRPO step on this CPU: tiny Qwen2 (3.05 M params), {common.PROMPTS_PER_STEP} prompts × "
               f"G={common.GROUP_SIZE}, P={common.PROMPT_LEN}, T={common.COMPLETION_LEN}, float32")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("results", nargs="+")
  ap.add_argument("--data", required=True)
  ap.add_argument("--markdown", default="")
  ap.add_argument("--plot", default="")
  ap.add_argument("--machine", default="")
  args = ap.parse_args()
  rows = []
  for path in args.results:
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  peak = {}
  for r in rows:
    if r.get("tag", "").startswith("peak-") and "peak_gflops" in r:
      key = r["tag"][5:]
      peak[key] = max(peak.get(key, 0.0), r["peak_gflops"])
  dims = dims_from_hf(os.path.join(args.data, "model"))
  flops = roofline.grpo_step_flops(dims, common.PROMPTS_PER_STEP * common.GROUP_SIZE, common.PROMPT_LEN,
                                   common.COMPLETION_LEN)
  summary = summarize(rows)
  steps = {r.get("steps_timed") for r in rows if "steps_timed" in r}
  note = (f"Each process: 1 warm-up step (the first-step column) then {', '.join(map(str, steps))} timed "
          f"steps; {max((s.get('rounds', 0) for s in summary.values()), default=0)} interleaved rounds "
          f"(processes) per implementation.")
  machine = machine_info()
  text = render(summary, flops, peak, machine, note, rows)
  print(text)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text)
  if args.machine:
    with open(args.machine, "w") as f:
      json.dump({"machine": machine, "peak_gflops": peak, "flops": flops, "summary": summary}, f, indent=1)
  if args.plot:
    plot(summary, flops, peak, args.plot)


if __name__ == "__main__":
  main()
