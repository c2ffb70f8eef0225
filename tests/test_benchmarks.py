"""Benchmarks: the FLOP formula against a hand count, the GPU benchmark's CPU smoke run, the peer report."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "peers"))

import common  # noqa: E402
import report  # noqa: E402
import roofline  # noqa: E402

# D=4, 1 layer, 2 query heads and 1 KV head of size 2, MLP 6, vocab 10.
TINY = roofline.Dims(vocab=10, hidden=4, layers=1, heads=2, kv_heads=1, head_dim=2, intermediate=6)


def test_layer_params_hand_count():
  q, k, v, o = 4 * 2 * 2, 4 * 1 * 2, 4 * 1 * 2, 2 * 2 * 4  # [D, N, H], [D, K, H] x2, [N, H, D]
  mlp = 4 * 6 + 4 * 6 + 6 * 4  # gate, up, down
  assert TINY.layer_matmul_params() == q + k + v + o + mlp == 120


def test_forward_flops_hand_count():
  # 3 tokens through the trunk: 2 FLOPs per MAC per weight; 6 causal (query, key) pairs: QK and PV over
  # 2 heads x 2 dims; logits at 2 positions against a 4 x 10 head.
  trunk = 2 * 120 * 3
  attn = 2 * (2 * 2) * 6 + 2 * (2 * 2) * 6
  head = 2 * 4 * 10 * 2
  assert roofline.forward_flops(TINY, 3, 6, 2) == trunk + attn + head == 976


def test_grpo_step_flops_hand_count():
  # N=2 sequences, P=2, T=2. Rollout: 3 tokens fed (P+T-1), causal pairs 1+2+3 = 6, logits at T=2.
  # Reference: 4 tokens, pairs 1+2+3+4 = 10, logits at 2. Update: forward + backward = 3 reference.
  rollout = 2 * (2 * 120 * 3 + 16 * 6 + 80 * 2)
  reference = 2 * (2 * 120 * 4 + 16 * 10 + 80 * 2)
  got = roofline.grpo_step_flops(TINY, num_seqs=2, prompt_len=2, completion_len=2)
  assert got == {"rollout": rollout, "reference": reference, "update": 3 * reference,
                 "step": rollout + 4 * reference}
  assert got["step"] == 12192


def test_decode_bytes_hand_count():
  # Weights 120 + tied LM head 40; KV: 2 (k, v) x 1 layer x 3 seqs x 5 positions x 1 head x 2 dims.
  assert roofline.decode_bytes_per_token_step(TINY, num_seqs=3, context=5, bytes_per_elem=2) == (
      (120 + 40) + 2 * 3 * 5 * 2) * 2


def test_gpu_benchmark_tiny_cpu_run():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device: compiles faster
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--tiny",
                         "--micro_batch", "8"], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  r = json.loads(line[len("RESULT "):])
  for key in ("decode_tokens_per_s", "decode_bound_tokens_per_s", "update_mfu", "reference_mfu",
              "step_mfu", "peak_tflops", "hbm_gbps", "first_step_s", "step_tflop"):
    assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
  for phase in ("rollout", "reference", "update", "step"):
    assert math.isfinite(r["median_phases_s"][phase]) and r["median_phases_s"][phase] > 0
  assert (r["B"], r["G"], r["T"]) == (2, 4, 8)


def test_exact_match_reward():
  assert common.exact_match_reward(["46 is it", "x 45", "", "-3"], ["46", "46", "1", "-3"]) == [
      1.0, 0.0, 0.0, 1.0]


def _row(tag, step, rnd):
  phases = {"rollout": step / 4, "reference": step / 4, "update": step / 2}
  return {"tag": tag, "round": rnd, "version": "0", "median_step_s": step, "first_step_s": 2 * step,
          "completion_tokens_per_s": 2048 / step, "peak_rss_mib": 100.0 * step, "median_phases_s": phases,
          "first_step_phases_s": phases, "steps_timed": 8, "min_step_s": step}


def test_report_table_ratios_and_roofline(tmp_path):
  rows = [_row("grpo_jax", s, i) for i, s in enumerate((1.0, 2.0, 1.5))]
  rows += [_row("trl", s, i) for i, s in enumerate((3.0, 3.0, 3.0))]
  rows.append({"tag": "tunix", "round": 1, "error": "ImportError: nope"})
  summary = report.summarize(rows)
  assert summary["grpo_jax"]["median_step_s"] == 1.5
  assert summary["grpo_jax"]["step_s_per_round"] == [1.0, 2.0, 1.5]
  flops = {"rollout": 1e9, "reference": 1e9, "update": 3e9, "step": 5e9}
  text = report.render(summary, flops, {"jax": 10.0, "torch": 5.0}, {"cpu": "x"}, "")
  grpo_line = next(l for l in text.splitlines() if l.startswith("| grpo_jax"))
  trl_line = next(l for l in text.splitlines() if l.startswith("| TRL"))
  assert "1.00×" in grpo_line and "33%" in grpo_line  # 5 GFLOP / (1.5 s x 10 GFLOP/s)
  assert "2.00×" in trl_line and "17%" in trl_line
  assert "failed: ImportError: nope" in text
  for r, load in zip(rows, (0.5, 1.0, 2.0, 0.7, 1.5, 3.0)):
    r["load"] = [load, load + 0.1]
  by_round = report.render(summary, flops, {"jax": 10.0}, {"cpu": "x"}, "", rows)
  round_lines = [l for l in by_round.splitlines() if l.startswith("| 1 |") or l.startswith("| 2 |")]
  assert round_lines == ["| 1 | 1.0–1.6 | 2.00 | 0.67 | — |", "| 2 | 2.0–3.1 | 1.50 | 0.50 | — |"]
  pytest.importorskip("matplotlib")
  report.plot(summary, flops, {"jax": 10.0}, str(tmp_path / "p.png"))
  assert (tmp_path / "p.png").stat().st_size > 1000
