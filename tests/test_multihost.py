"""One code path from one device to several hosts: the CLI as 2 processes x 4 CPU devices
(`jax.distributed` on 127.0.0.1, gloo collectives) against 1 process x 8 devices and 1 process x 1 device,
a SIGKILL of the 2-process run and its resume, and checkpoints restored onto other meshes.

Each run is the tiny default experiment (a 5-step warm start, 4 GRPO steps with mu = 2 passes of 2
minibatches, a KL reference, evaluation with pass@2 at steps 0, 2 and 4, checkpoints at 2 and 4) with a
reward that varies inside every group (tests/multihost_rewards.py), so losses and gradients are not zero.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWARD = os.path.join(ROOT, "tests", "multihost_rewards.py") + ":distinct_chars"
ARGS = [
    f"--config={os.path.join(ROOT, 'experiments', 'default.py')}",
    "--config.model.tiny.hidden_size=32", "--config.model.tiny.intermediate_size=64",
    "--config.model.tiny.num_layers=2", "--config.model.tiny.head_dim=8",
    "--config.task.kwargs.num_train=512", "--config.task.kwargs.num_eval=16",
    "--config.rollout.prompts_per_step=4", "--config.grpo.group_size=4", "--config.sft.steps=5",
    "--config.sft.batch_size=16", "--config.train.num_steps=4", "--config.eval.every=2",
    "--config.eval.num_examples=16", "--config.eval.batch_size=16", "--config.eval.k=2",
    "--config.checkpoint.every=2", "--config.train.progress_bar=False", "--config.grpo.beta=0.04",
    "--config.grpo.agg=seq-mean-token-sum", "--config.grpo.num_iterations=2",
    "--config.grpo.num_minibatches=2",
    f"--config.rewards.names=('exact_match','{REWARD}')", "--config.rewards.weights=(1.0,1.0)",
]
COMPARED = ("loss", "pg_loss", "grad_norm", "reward/total/mean", "reward/distinct_chars/mean", "kl",
            "entropy", "eval/accuracy")
VOLATILE = ("time/", "throughput/")


def _env(devices: int) -> dict:
  e = dict(os.environ)
  e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
           PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
  return e


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, *, processes=1, devices=8, extra=(), log_prefix=None):
  """Starts the CLI as `processes` processes of `devices` CPU devices each; returns (procs, log paths)."""
  port = _free_port()
  procs, logs = [], []
  for i in range(processes):
    cmd = [sys.executable, "-m", "grpo_jax.main", *ARGS, f"--workdir={workdir}", *extra]
    if processes > 1:
      cmd += [f"--coordinator=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
    path = f"{log_prefix or workdir}.{i}.log"
    logs.append(path)
    procs.append(subprocess.Popen(cmd, env=_env(devices), cwd=ROOT, stdout=open(path, "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True))
  return procs, logs


def _run(workdir, **kw):
  procs, logs = _start(workdir, **kw)
  for p, log in zip(procs, logs):
    try:
      p.wait(timeout=900)
    except subprocess.TimeoutExpired:
      for q in procs:
        os.killpg(q.pid, signal.SIGKILL)
      raise
    assert p.returncode == 0, open(log).read()[-3000:]
  return logs


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _committed(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= 1e-3 * max(abs(a), abs(b), 1e-3)  # relative, with a floor for values near zero


def _differences(want, got, steps=None):
  """(step, key, want, got) for every compared metric that is not within the relative tolerance."""
  want = {r["step"]: r for r in want}
  got = {r["step"]: r for r in got}
  steps = sorted(want) if steps is None else steps
  assert sorted(got) == sorted(want), (sorted(got), sorted(want))
  bad = []
  for s in steps:
    for k in COMPARED:
      if k in want[s] or k in got[s]:
        if k not in want[s] or k not in got[s] or not _close(want[s][k], got[s][k]):
          bad.append((s, k, want[s].get(k), got[s].get(k)))
  return bad


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multihost")
  out = {}
  for name, kw in {"1x8": dict(devices=8), "2x4": dict(processes=2, devices=4), "1x1": dict(devices=1)}.items():
    out[name] = str(base / name)
    out[name + "_logs"] = _run(out[name], **kw)
  return out


def test_two_processes_match_one_process_of_eight_and_one_device(runs):
  one_by_eight, two_by_four, one_by_one = (_rows(runs[k]) for k in ("1x8", "2x4", "1x1"))
  assert [r["step"] for r in two_by_four] == [0, 1, 2, 3, 4]
  trained = [r for r in two_by_four if "loss" in r]
  assert all(abs(r["grad_norm"]) > 1e-2 and abs(r["loss"]) > 1e-3 for r in trained)  # a real signal
  assert _differences(one_by_eight, two_by_four) == []
  assert _differences(one_by_eight, one_by_one) == []


def test_only_process_zero_writes_logs_and_every_process_finishes(runs):
  workdir = runs["2x4"]
  log0, log1 = (open(p).read() for p in runs["2x4_logs"])
  assert "process 0 of 2" in log0 and "process 1 of 2" in log1 and "8 global devices" in log1
  assert "held-out greedy accuracy" in log0 and "held-out greedy accuracy" in log1
  names = set(os.listdir(workdir))
  assert {"metrics.jsonl", "summary.json", "metrics.png", "config.json", "checkpoints"} <= names
  assert _committed(workdir) == [2, 4]
  # one writer: every row once, in order (a second writer would duplicate or interleave rows)
  assert [r["step"] for r in _rows(workdir)] == [0, 1, 2, 3, 4]


def test_sigkill_of_the_two_process_run_resumes_identically(runs, tmp_path):
  workdir = str(tmp_path / "killed")
  procs, logs = _start(workdir, processes=2, devices=4)
  deadline = time.time() + 900
  while 2 not in _committed(workdir) and time.time() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.02)
  for p in procs:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
  assert _committed(workdir) == [2], (_committed(workdir), open(logs[0]).read()[-2000:])
  _run(workdir, processes=2, devices=4, log_prefix=workdir + ".resumed")
  assert "resumed from" in open(workdir + ".resumed.0.log").read()
  strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]  # noqa: E731
  assert strip(_rows(workdir)) == strip(_rows(runs["2x4"]))  # the same process layout: bit-identical


@pytest.mark.parametrize("mesh,devices", [("(2,2,2)", 8), ("(-1,1,1)", 1)])
def test_a_checkpoint_of_an_8_1_1_mesh_continues_on_another_mesh(runs, tmp_path, mesh, devices):
  workdir = str(tmp_path / "moved")
  shutil.copytree(runs["1x8"], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # resume from step 2, written on (8, 1, 1)
  logs = _run(workdir, devices=devices, extra=[f"--config.mesh={mesh}"])
  assert "resumed from" in open(logs[0]).read()
  assert _differences(_rows(runs["1x8"]), _rows(workdir), steps=[3, 4]) == []
