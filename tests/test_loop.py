"""End to end: rollout -> reward -> update -> checkpoint -> resume, CLI and config errors. SIGKILL/SIGTERM
recovery is tests/soak/test_kill_soak.py (a chain of kills compared step by step with this run)."""

import json
import os
import subprocess
import sys

import pytest

from grpo_jax import config as config_lib
from grpo_jax.metrics import read_jsonl
from soak.harness import TINY  # the flags of the shared tiny run (tests/conftest.py: tiny_run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "experiments", "default.py")


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "grpo_jax.main", f"--config={DEFAULT}", f"--workdir={workdir}",
          *TINY, *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_run):
  return tiny_run  # the same TINY run, made once per session for this file and tests/soak (conftest.py)


def test_end_to_end_run_writes_everything(uninterrupted):
  workdir, proc = uninterrupted
  for name in ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "metrics.png"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  steps = [r["step"] for r in rows]
  assert steps == [0, 1, 2, 3, 4, 5, 6]
  for key in ("reward/total/mean", "reward/total/std", "reward/exact_match/mean", "kl", "entropy",
              "clip_frac_low", "clip_frac_high", "grad_norm", "learning_rate", "frac_zero_std_groups",
              "completion_len/mean", "completion_len/truncated_frac", "time/rollout_s",
              "time/train_s", "throughput/completion_tokens_per_s"):
    assert key in rows[1], key
  assert "eval/accuracy" in rows[3] and "eval/pass@2" in rows[3] and "eval/maj@2" in rows[3]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert 0.0 <= summary["eval_after"]["eval/accuracy"] <= 1.0
  assert "held-out greedy accuracy" in proc.stdout
  steps_saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps_saved[-1] == 6


def test_corrupt_latest_checkpoint_falls_back(uninterrupted, tmp_path):
  import shutil
  full_dir, _ = uninterrupted
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(full_dir, workdir)
  latest = os.path.join(workdir, "checkpoints", "6", "state")
  for root, _, files in os.walk(latest):
    for f in files:
      path = os.path.join(root, f)
      if os.path.getsize(path) > 256:
        with open(path, "r+b") as fh:
          fh.truncate(64)
  proc = subprocess.run(_cmd(workdir, "--config.train.num_steps=7"), env=_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint at step 6" in proc.stderr and "unusable" in proc.stderr
  assert "resumed from" in proc.stderr and "at step 4" in proc.stderr
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt", "6"))  # kept, not deleted
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(8))  # steps 5-7 logged once, after the rewind


def test_bad_config_names_the_key(tmp_path):
  proc = subprocess.run(_cmd(str(tmp_path), "--config.grpo.num_minibatches=3"), env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "config.grpo.num_minibatches" in proc.stderr
  proc = subprocess.run(_cmd(str(tmp_path), "--config.grpo.no_such_key=1"), env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "no_such_key" in proc.stderr


@pytest.mark.parametrize("key,value,named", [
    ("grpo.estimator", "ppo", "grpo.estimator"),
    ("grpo.group_size", 1, "grpo.group_size"),
    ("rewards.weights", (1.0, 2.0), "rewards.weights"),
    ("mesh", (3, 1, 1), "mesh"),
    ("eval.batch_size", 6, "eval.batch_size"),
])
def test_validate_rejects(key, value, named):
  c = config_lib.load_config(DEFAULT)
  c.unlock()
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=named.replace(".", r"\.")):
    config_lib.validate(c, 8)


def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  from grpo_jax import loop
  monkeypatch.chdir(tmp_path)
  c = config_lib.load_config(DEFAULT)
  with pytest.raises(config_lib.ConfigError, match=r"gs://bkt/run: a URL is not supported.*gcsfuse"):
    loop.train(c, "gs://bkt/run")
  assert os.listdir(tmp_path) == []  # no local "gs:" directory
