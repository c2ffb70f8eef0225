"""`python -m tests.soak.driver <grpo_jax.main flags>`: the CLI with faults injected from GRPO_SOAK_FAULTS.

GRPO_SOAK_FAULTS is a JSON list; each entry is one fault:
  {"kill": PHASE, "at": n}   SIGKILL this process at the n-th (1-based) occurrence of PHASE in this process:
      "sft_step"    after the n-th warm-start step is dispatched
      "eval"        inside the n-th evaluation, after its first greedy batch
      "rollout"     inside the n-th rollout, after sampling, while the rewards are computed
      "update"      right after the n-th optimizer update is dispatched (the donated state in flight)
      "ckpt_write"  during the n-th asynchronous checkpoint write (once its temporary directory exists)
      "metrics_row" right after the n-th metrics.jsonl row is written
  {"nan": [k, ...]}          the k-th optimizer updates (1-based, this process) see NaN advantages
  {"reward": "raise"}        the exact_match reward raises on every call
  {"fill": DIR, "at": n}     fill the file system holding DIR (a tmpfs) before and during the n-th save
Before each kill it prints `SOAK-KILL phase=... n=...` to stderr, so a test knows where the kill landed.
The kills come from the process itself: their position is exact however slow the machine is.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

FAULTS = json.loads(os.environ.get("GRPO_SOAK_FAULTS", "[]"))
COUNTS: dict[str, int] = {}


def _tick(phase: str) -> bool:
  """Counts an occurrence of `phase`; True when a kill fault asks for this one."""
  COUNTS[phase] = COUNTS.get(phase, 0) + 1
  return any(f.get("kill") == phase and f.get("at") == COUNTS[phase] for f in FAULTS)


def _kill(phase: str):
  sys.stderr.write(f"SOAK-KILL phase={phase} n={COUNTS[phase]}\n")
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _fill(directory: str):
  fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * 65536)
  except OSError:
    pass
  finally:
    os.close(fd)
  sys.stderr.write(f"SOAK-FILLED {directory}\n")


def install():
  import jax.numpy as jnp

  from grpo_jax import checkpoint, evaluation, metrics, rewards, rollout, sft, train

  make_sft_step = sft.make_sft_step

  def make_sft_step_killing(*a, **kw):
    step = make_sft_step(*a, **kw)

    def wrapped(*args):
      out = step(*args)
      if _tick("sft_step"):
        _kill("sft_step")
      return out
    return wrapped
  sft.make_sft_step = make_sft_step_killing

  evaluate = evaluation.evaluate

  def evaluate_killing(greedy_fn, *args, **kw):
    kill = _tick("eval")

    def greedy(*a):
      out = greedy_fn(*a)
      if kill:
        _kill("eval")
      return out
    return evaluate(greedy, *args, **kw)
  evaluation.evaluate = evaluate_killing

  run_rollout = rollout.rollout

  def rollout_killing(generate_fn, params, examples, tokenizer, reward_runner, *args, **kw):
    kill = _tick("rollout")

    def runner(*a, **k):
      if kill:
        _kill("rollout")
      return reward_runner(*a, **k)
    return run_rollout(generate_fn, params, examples, tokenizer, runner, *args, **kw)
  rollout.rollout = rollout_killing

  nan_updates = {k for f in FAULTS for k in f.get("nan", ())}
  step = train.Trainer.step

  def step_faulty(self, state, batch):
    kill = _tick("update")
    if COUNTS["update"] in nan_updates:
      batch = dict(batch, advantages=batch["advantages"] * jnp.nan)
    out = step(self, state, batch)
    if kill:
      _kill("update")
    return out
  train.Trainer.step = step_faulty

  save = checkpoint.Checkpointer.save

  def save_killing(self, step, *args, **kw):
    kill = _tick("ckpt_write")
    fill = [f["fill"] for f in FAULTS if "fill" in f and f["at"] == COUNTS["ckpt_write"]]
    for directory in fill:
      if not any(f.get("during_only") for f in FAULTS):
        _fill(directory)
    out = save(self, step, *args, **kw)
    for directory in fill:  # and again while the asynchronous write runs (it may have freed a little)
      _fill(directory)
    if kill:
      deadline = time.time() + 10
      while not glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
        if time.time() > deadline:
          break
        time.sleep(0.001)
      _kill("ckpt_write")
    return out
  checkpoint.Checkpointer.save = save_killing

  write = metrics.MetricsWriter.write

  def write_killing(self, step, values):
    out = write(self, step, values)
    if _tick("metrics_row"):
      _kill("metrics_row")
    return out
  metrics.MetricsWriter.write = write_killing

  if any(f.get("reward") == "raise" for f in FAULTS):
    def exact_match_raising(prompts, completions, **_):
      raise RuntimeError("injected reward failure")
    rewards._REWARDS["exact_match"] = exact_match_raising


if __name__ == "__main__":
  install()
  from absl import app

  from grpo_jax import main
  app.run(main.main)
