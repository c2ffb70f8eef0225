"""Kill soak: SIGKILL the tiny run at many points (warm start, rollout, update, asynchronous checkpoint write,
evaluation, right after a metrics row, and at random times chosen by the parent), restart it each time,
and compare metrics.jsonl step by step with the uninterrupted run; SIGTERM saves a checkpoint and exits
143 after at most the step in progress.

The short chain runs in CI; `test_full_kill_soak` (slow, about 6 minutes) draws >= 12 random kill points.
GRPO_SOAK_SEED picks another draw.
"""
import json
import os
import random
import time

import pytest

from . import harness

# SIGTERM bound: the run finishes the GRPO step in progress (rollout, update, the eval if one is due),
# writes a checkpoint synchronously and exits. In steps: at most ONE step is logged after the step seen when
# the signal was sent. In seconds, for this tiny config: SIGTERM_BOUND_S (generous for 2 shared cores).
SIGTERM_BOUND_S = 60.0


def _last_step(workdir):
  rows = harness.rows(workdir)
  return rows[-1]["step"] if rows else -1


def _committed_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _self_kill(workdir, log, phase, n):
  proc = harness.start(workdir, faults=[{"kill": phase, "at": n}], log_path=log)
  proc.wait(timeout=900)
  text = open(log).read()
  if proc.returncode == 0:
    return {"point": f"{phase}#{n}", "killed": False}
  assert proc.returncode == -9 and f"SOAK-KILL phase={phase} n={n}" in text, harness.tail(log)
  return {"point": f"{phase}#{n}", "killed": True, "last_row": _last_step(workdir)}


def _parent_kill(workdir, log, rng):
  """SIGKILL from outside after a random delay past a random progress marker."""
  marker = rng.choice(["started", "row"])
  proc = harness.start(workdir, log_path=log)
  if marker == "row":
    target = _last_step(workdir) + 1
    harness.wait_for(lambda: _last_step(workdir) >= target, proc)
  else:
    harness.wait_for(lambda: os.path.getsize(log) > 0, proc)
  time.sleep(rng.uniform(0.0, 3.0))
  if proc.poll() is not None:
    return {"point": f"parent after {marker}", "killed": False}
  proc.kill()
  proc.wait()
  return {"point": f"parent {marker}+delay", "killed": True, "last_row": _last_step(workdir)}


def _sigterm(workdir, log):
  """SIGTERM once the restarted run has logged a new step (with steps left to do): first the rows past
  its checkpoint disappear (the rewind), then a row after the checkpoint appears."""
  restored = max(_committed_steps(workdir), default=-1)
  proc = harness.start(workdir, log_path=log)
  seen, rewound = [None], [False]

  def ready():
    seen[0] = _last_step(workdir)
    rewound[0] = rewound[0] or seen[0] <= restored
    return rewound[0] and restored < seen[0] < harness.STEPS - 1
  sent = harness.sigterm_when(proc, ready)
  if sent is None:
    proc.wait()
    return {"point": "SIGTERM", "killed": False}
  proc.wait(timeout=300)
  seconds = time.time() - sent
  last = _last_step(workdir)
  assert proc.returncode == 143, harness.tail(log)
  assert "stopped by SIGTERM after step" in open(log).read()
  assert last <= seen[0] + 1, (last, seen[0])  # the bound in steps
  assert seconds < SIGTERM_BOUND_S, seconds
  assert _committed_steps(workdir)[-1] == last  # the checkpoint of the last logged step
  return {"point": "SIGTERM", "killed": True, "last_row": last, "seconds": round(seconds, 2)}


def _finish_and_compare(reference_dir, workdir, tmp_path, outcomes):
  log = str(tmp_path / "final.log")
  proc = harness.start(workdir, log_path=log)
  proc.wait(timeout=900)
  assert proc.returncode == 0, harness.tail(log)
  problems = harness.compare(reference_dir, workdir)
  assert problems == [], (problems, outcomes)
  steps = [r["step"] for r in harness.rows(workdir)]
  assert steps == list(range(harness.STEPS + 1))  # exactly once each: nothing duplicated or missing


def test_short_kill_chain_matches_the_uninterrupted_run(tiny_run, tmp_path, soak_record):
  """CI: SIGKILL right after the step-0 row (no checkpoint yet: issue 16's duplicated row), during the
  asynchronous write of the step-4 checkpoint, then SIGTERM after resuming from step 2, then run to the
  end. (Kills during warm start, rollout, update and evaluation: `test_full_kill_soak`.)"""
  reference_dir, _ = tiny_run
  workdir = str(tmp_path / "run")
  outcomes = []
  for i, (phase, n) in enumerate([("metrics_row", 1), ("ckpt_write", 2)]):
    outcomes.append(_self_kill(workdir, str(tmp_path / f"{i}.log"), phase, n))
    assert outcomes[-1]["killed"], outcomes
  outcomes.append(_sigterm(workdir, str(tmp_path / "term.log")))
  assert outcomes[-1]["killed"], outcomes
  resumed_from = outcomes[-1]["last_row"]
  _finish_and_compare(reference_dir, workdir, tmp_path, outcomes)
  # TensorBoard is told to drop what the killed runs logged past each resumed step: the last restart
  # (from the SIGTERM checkpoint) purges from the step after it.
  assert harness.tensorboard_restarts(workdir)[-1] == resumed_from + 1
  soak_record("kills", chain="short", outcomes=outcomes, identical=True)


PHASES = ["sft_step", "eval", "rollout", "update", "ckpt_write", "metrics_row"]


@pytest.mark.slow
def test_full_kill_soak(tiny_run, tmp_path, soak_record):
  """>= 12 kills at random points, every phase at least once, plus random parent kills and a SIGTERM."""
  reference_dir, _ = tiny_run
  seed = int(os.environ.get("GRPO_SOAK_SEED", "15"))
  rng = random.Random(seed)
  workdir = str(tmp_path / "run")
  plan = PHASES + [rng.choice(PHASES[1:]) for _ in range(4)] + ["parent", "parent", "sigterm"]
  rng.shuffle(plan)
  outcomes = []
  for i, what in enumerate(plan):
    log = str(tmp_path / f"{i}.log")
    if what == "parent":
      out = _parent_kill(workdir, log, rng)
    elif what == "sigterm":
      out = _sigterm(workdir, log)
    else:
      # sft_step is only reachable while no checkpoint exists: restart from scratch for it.
      if what == "sft_step" and _committed_steps(workdir):
        workdir = _fresh_copy(tmp_path, workdir, outcomes, reference_dir)
      out = _self_kill(workdir, log, what, rng.randint(1, 3 if what in ("sft_step", "metrics_row") else 2))
    out["seed"] = seed
    outcomes.append(out)
    if not out["killed"]:  # the run got to its end before that point: compare, then go on in a new one
      workdir = _fresh_copy(tmp_path, workdir, outcomes, reference_dir)
  _finish_and_compare(reference_dir, workdir, tmp_path, outcomes)
  killed = [o for o in outcomes if o["killed"]]
  assert len(killed) >= 12 and {o["point"].split("#")[0] for o in killed} >= set(PHASES), outcomes
  soak_record("kills", chain="full", outcomes=outcomes, identical=True)
  print(json.dumps(outcomes, indent=1))


def _fresh_copy(tmp_path, workdir, outcomes, reference_dir):
  """Finishes and checks the current run, and returns a new empty workdir."""
  _finish_and_compare(reference_dir, workdir, tmp_path, outcomes)
  fresh = str(tmp_path / f"run{len(outcomes)}")
  return fresh
